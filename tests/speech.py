"""Test audio made on the spot: espeak-ng speaks a text, PyAV encodes it; plus a normalised WER.

Nothing generated here is committed. Files land in `.test-data/` at the repository root, named
by a hash of everything that produced them, so a second run reuses them and a changed text or
voice makes a new file.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import unicodedata
import wave
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import jiwer
import numpy as np

__all__ = [
    "FIXTURES",
    "FORMATS",
    "ROOT",
    "TEST_DATA",
    "cached_silence",
    "cached_speech",
    "cached_speech_paragraphs",
    "long_speech",
    "make_speech",
    "normalize_text",
    "paragraphs",
    "wer",
    "write_audio",
]

ROOT = Path(__file__).resolve().parent.parent
TEST_DATA = ROOT / ".test-data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

FORMATS = ("wav", "mp3", "ogg", "m4a", "flac")

# (container format, codec, sample rate, sample format) for each file extension we produce.
_ENCODINGS: dict[str, tuple[str, str, int, str]] = {
    "wav": ("wav", "pcm_s16le", 22050, "s16"),
    "mp3": ("mp3", "libmp3lame", 22050, "s16p"),
    "ogg": ("ogg", "libopus", 48000, "s16"),
    "m4a": ("ipod", "aac", 22050, "fltp"),
    "flac": ("flac", "flac", 22050, "s16"),
}

_ESPEAK_RATE = 22050  # espeak-ng always writes 22.05 kHz mono 16-bit


def paragraphs(name: str) -> list[str]:
    """The blank-line separated paragraphs of `tests/fixtures/<name>.txt`, each on one line."""
    text = (FIXTURES / f"{name}.txt").read_text(encoding="utf-8")
    return [" ".join(block.split()) for block in text.split("\n\n") if block.strip()]


def make_speech(
    text: str, path: Path, *, voice: str = "en-us", fmt: str = "wav", speed: int = 165
) -> Path:
    """Speak `text` with espeak-ng into `path`, encoded as `fmt` (wav, mp3, ogg, m4a, flac)."""
    return make_speech_paragraphs([text], path, voice=voice, fmt=fmt, speed=speed, pause=0.0)


def make_speech_paragraphs(
    texts: Sequence[str],
    path: Path,
    *,
    voice: str = "en-us",
    fmt: str = "wav",
    speed: int = 165,
    pause: float = 1.2,
) -> Path:
    """Speak each text, with `pause` seconds of silence between them, into one file."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install -y espeak-ng)")
    gap = np.zeros(int(pause * _ESPEAK_RATE), dtype=np.int16)
    pieces: list[np.ndarray] = []
    for i, text in enumerate(texts):
        if i:
            pieces.append(gap)
        pieces.append(_espeak(text, voice=voice, speed=speed))
    write_audio(np.concatenate(pieces), _ESPEAK_RATE, path, fmt=fmt)
    return path


def write_audio(samples: np.ndarray, rate: int, path: Path, *, fmt: str = "wav") -> Path:
    """Encode mono int16 `samples` at `rate` Hz into `path` as `fmt`; written atomically."""
    container_format, codec, out_rate, sample_format = _ENCODINGS[fmt]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=f".{fmt}", dir=path.parent)
    os.close(fd)
    try:
        with av.open(tmp_name, "w", format=container_format) as container:
            stream = container.add_stream(codec, rate=out_rate, layout="mono")
            assert isinstance(stream, av.AudioStream)
            stream.format = sample_format
            stream.time_base = Fraction(1, out_rate)
            frame = av.AudioFrame.from_ndarray(
                samples.astype(np.int16).reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate = rate
            frame.pts = None
            resampler = av.AudioResampler(format=sample_format, layout="mono", rate=out_rate)
            frame_size = stream.codec_context.frame_size or 1024
            fifo = av.AudioFifo()
            for resampled in resampler.resample(frame) + resampler.resample(None):
                fifo.write(resampled)
            while fifo.samples:
                chunk = fifo.read(frame_size, partial=True)
                if chunk is None:
                    break
                for packet in stream.encode(chunk):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path


def cached_speech(text: str, *, voice: str = "en-us", fmt: str = "wav", speed: int = 165) -> Path:
    """`make_speech` into `.test-data/`, reusing a file made earlier from the same input."""
    return cached_speech_paragraphs([text], voice=voice, fmt=fmt, speed=speed, pause=0.0)


def cached_speech_paragraphs(
    texts: Sequence[str],
    *,
    voice: str = "en-us",
    fmt: str = "wav",
    speed: int = 165,
    pause: float = 1.2,
) -> Path:
    """`make_speech_paragraphs` into `.test-data/`, cached by a hash of all its inputs."""
    key = _key("speech", voice, fmt, speed, pause, *texts)
    path = TEST_DATA / f"speech-{key}.{fmt}"
    if not path.exists():
        make_speech_paragraphs(texts, path, voice=voice, fmt=fmt, speed=speed, pause=pause)
    return path


def cached_silence(seconds: float, *, fmt: str = "wav", noise: float = 0.0) -> Path:
    """A clip of silence (optionally faint white noise of amplitude `noise`, 0–1)."""
    path = TEST_DATA / f"silence-{_key('silence', seconds, fmt, noise)}.{fmt}"
    if not path.exists():
        samples = np.zeros(int(seconds * _ESPEAK_RATE), dtype=np.float64)
        if noise:
            samples = np.random.default_rng(0).normal(0.0, noise, samples.shape)
        pcm = np.clip(samples * 32767, -32768, 32767).astype(np.int16)
        write_audio(pcm, _ESPEAK_RATE, path, fmt=fmt)
    return path


def _espeak(text: str, *, voice: str, speed: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        source = Path(tmp) / "text.txt"
        source.write_text(text, encoding="utf-8")
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(out), "-f", str(source)],
            check=True,
            capture_output=True,
        )
        with wave.open(str(out), "rb") as wav:
            assert wav.getframerate() == _ESPEAK_RATE and wav.getnchannels() == 1
            return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)


def _key(*parts: object) -> str:
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode("utf-8"))
    return digest.hexdigest()[:16]


# --- word error rate -----------------------------------------------------------------------

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def _number_words(n: int) -> str:
    """A cardinal number the way espeak-ng reads it (`342` → three hundred and forty two)."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    scales = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))
    for size, word in scales:
        if n >= size:
            high, rest = divmod(n, size)
            tail = ""
            if rest:
                tail = (" and " if rest < 100 else " ") + _number_words(rest)
            return f"{_number_words(high)} {word}{tail}"
    raise AssertionError(n)


def normalize_text(text: str) -> str:
    """Lowercase words without punctuation, numbers spelled out, so WER counts only words."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("%", " percent ").replace("&", " and ")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)  # 1,500 → 1500
    text = re.sub(r"\d+", lambda m: f" {_number_words(int(m.group()))} ", text)
    text = re.sub(r"[’'`]", "", text)  # don't → dont, on both sides alike
    text = re.sub(r"[^\w\s]|_", " ", text)  # hyphens and the rest separate words
    return " ".join(text.split())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of `hypothesis` against `reference`, after `normalize_text` on both."""
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp or "<empty>"))


def long_speech(*, fmt: str = "mp3", speed: int = 150, voice: str = "en-us") -> tuple[str, Path]:
    """About ten minutes of speech: every paragraph of fixtures/long.txt, with pauses between.

    Returns the text spoken and the file."""
    texts = paragraphs("long")
    path = cached_speech_paragraphs(texts, fmt=fmt, speed=speed, voice=voice)
    return " ".join(texts), path
