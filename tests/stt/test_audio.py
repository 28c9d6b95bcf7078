from __future__ import annotations

import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from smap_stt.errors import AudioError, AudioTooShort
from smap_stt.stt.audio import SAMPLE_RATE, decode_audio, decode_pieces, probe
from tests.speech import FORMATS, cached_speech, paragraphs
from tests.stt.conftest import Clip


def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    pixels = b"".join(b"\x00" + b"\xff\x00\x00" * 4 for _ in range(4))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(pixels))
        + chunk(b"IEND", b"")
    )


def _wav_header(data_bytes: int, *, padding: int = 0) -> bytes:
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVE"
        + b"fmt "
        + fmt
        + b"data"
        + struct.pack("<I", data_bytes)
        + b"\x00" * padding
    )


def _video(path: Path, *, with_audio: bool) -> Path:
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = container.add_stream("aac", rate=16000) if with_audio else None
        for i in range(20):
            image = np.full((64, 64, 3), i * 10, dtype=np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if audio is not None:
            tone = (0.3 * np.sin(np.arange(32000) * 2 * np.pi * 440 / 16000)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(tone.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate, frame.time_base, frame.pts = 16000, Fraction(1, 16000), 0
            resampler = av.AudioResampler(format="fltp", layout="mono", rate=16000)
            fifo = av.AudioFifo()
            for resampled in resampler.resample(frame):
                fifo.write(resampled)
            while (piece := fifo.read(1024, partial=True)) is not None:
                for packet in audio.encode(piece):
                    container.mux(packet)
            for packet in audio.encode(None):
                container.mux(packet)
    return path


BAD_INPUTS: dict[str, tuple[bytes | None, type[AudioError], str]] = {
    "empty.wav": (b"", AudioTooShort, "empty"),
    "random.mp3": (np.random.default_rng(5).bytes(4096), AudioError, "not a supported"),
    "noise.mp3": (np.random.default_rng(7).bytes(300_000), AudioError, "corrupt"),
    # FFmpeg would read plain text as a "tty" video; text never reaches it (issue 12)
    "notes.txt": (b"these are my meeting notes, not audio\n" * 50, AudioError, "is text"),
    "notes.wav": (b"these are my meeting notes, not audio\n" * 50, AudioError, "is text"),
    # an image demuxer is not an allowed container format
    "picture.png": (_png(), AudioError, "not a supported"),
    "picture.mp3": (_png(), AudioError, "not a supported"),
    "header.wav": (_wav_header(56, padding=56), AudioTooShort, "0.002 s"),
    "header-only.wav": (_wav_header(0), AudioTooShort, "no decodable audio"),
    "lying-header.wav": (_wav_header(1_920_000, padding=56), AudioTooShort, "0.002 s"),
    "truncated.mp3": (None, AudioError, "not a supported"),  # first 10 bytes of a real mp3
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_probe_refuses_bad_input_with_a_clear_message(tmp_path: Path, name: str) -> None:
    data, error, words = BAD_INPUTS[name]
    if data is None:
        data = cached_speech(paragraphs("english")[0], fmt="mp3").read_bytes()[:10]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(error, match=words):
        probe(path)
    try:  # decoding does not judge length, but never yields much from these, nor fails raw
        decoded = sum(len(piece) for piece in decode_pieces(path, piece_seconds=5))
    except AudioError:
        return
    assert decoded < 0.1 * SAMPLE_RATE


def test_probe_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="cannot be read"):
        probe(tmp_path / "nope.wav")


def test_probe_refuses_video_without_audio(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="no audio stream"):
        probe(_video(tmp_path / "silent-film.mp4", with_audio=False))


def test_probe_accepts_video_with_audio(tmp_path: Path) -> None:
    info = probe(_video(tmp_path / "film.mp4", with_audio=True))
    assert info.codec == "aac"
    assert info.duration == pytest.approx(2.0, abs=0.1)
    assert len(decode_audio(tmp_path / "film.mp4")) == pytest.approx(2 * SAMPLE_RATE, rel=0.05)


@pytest.mark.parametrize("fmt", FORMATS)
def test_probe_and_decode_every_format(fmt: str, english_clips: list[Clip]) -> None:
    path = cached_speech(english_clips[0].text, fmt=fmt)
    info = probe(path)
    assert info.duration == pytest.approx(17.8, abs=0.5)
    assert info.channels == 1 and info.sample_rate in (22050, 48000)
    audio = decode_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) / SAMPLE_RATE == pytest.approx(info.duration, abs=0.1)
    assert 0.05 < float(np.abs(audio).max()) <= 1.0


def test_min_seconds_is_the_callers_choice(english_clips: list[Clip]) -> None:
    path = english_clips[0].path
    assert probe(path, min_seconds=5.0).duration > 5
    with pytest.raises(AudioTooShort, match="at least 60 s"):
        probe(path, min_seconds=60.0)


def test_probe_does_not_believe_a_truncated_mp3s_header(tmp_path: Path, speech_75s: Clip) -> None:
    data = speech_75s.path.read_bytes()
    truncated = tmp_path / "cut.mp3"
    truncated.write_bytes(data[: len(data) // 4])
    with av.open(str(truncated)) as container:
        assert container.duration is not None
        claimed = container.duration / av.time_base
    decoded = len(decode_audio(truncated)) / SAMPLE_RATE

    info = probe(truncated)
    assert claimed > 60  # the header still promises the whole file
    assert info.duration == pytest.approx(decoded, abs=0.5)


def test_decode_pieces_bounded_and_complete(speech_75s: Clip) -> None:
    pieces = list(decode_pieces(speech_75s.path, piece_seconds=10))
    assert all(len(piece) == 10 * SAMPLE_RATE for piece in pieces[:-1])
    assert 0 < len(pieces[-1]) <= 10 * SAMPLE_RATE
    total = sum(len(piece) for piece in pieces) / SAMPLE_RATE
    assert total == pytest.approx(probe(speech_75s.path).duration, abs=0.1)


def test_corruption_mid_file_never_escapes_as_a_raw_error(tmp_path: Path, speech_75s: Clip) -> None:
    data = bytearray(speech_75s.path.read_bytes())
    rng = np.random.default_rng(3)
    middle = len(data) // 2
    data[middle : middle + 20_000] = rng.bytes(20_000)
    damaged = tmp_path / "damaged.mp3"
    damaged.write_bytes(bytes(data))
    try:
        audio = decode_audio(damaged)
    except AudioError:
        return
    assert len(audio) > 30 * SAMPLE_RATE  # decoding went on past the damage
