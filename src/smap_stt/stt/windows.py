"""Decoding a chunk as bounded, independent windows of speech, batched through CTranslate2.

Sequential faster-whisper decodes 30 s after 30 s, each window prompted with the previous
window's text, and falls back to sampling at rising temperatures when a window looks bad. On
long audio that is where it goes wrong (DESIGN §5): sampling is not seeded, so the transcript
changes from run to run, and one window decoded at temperature 1.0 once swallowed a paragraph;
a wrong window also primes the next one with wrong text.

Here instead:
- Silero VAD finds the speech, which is packed into windows of at most 30 s (whole speech
  regions, never a cut word), as faster-whisper's BatchedInferencePipeline does;
- every window is decoded on its own (no previous text), with beam search only, so the result
  is the same on every run; windows are batched, which is also what makes it fast on a CPU;
- each result is checked, not trusted: text that stops well before the window's speech does is
  continued by decoding the rest as a new window (the pipeline just drops that tail), a window
  that loops is split in two and decoded again, and a window the model thinks is not speech
  is dropped rather than hallucinated.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens
from faster_whisper.vad import VadOptions, get_speech_timestamps

from smap_stt.stt.audio import SAMPLE_RATE

__all__ = ["DecodeOptions", "Decoded", "Window", "decode_windows", "detect_language",
           "speech_windows"]

_WINDOW_SAMPLES = 30 * SAMPLE_RATE  # Whisper's input length
_TIME_PRECISION = 0.02  # seconds per timestamp token

# A tail of speech longer than this left without text is decoded again on its own.
_MISSED_TAIL = 2.5
# Text that compresses better than this is a repetition loop (Whisper's own threshold).
_MAX_COMPRESSION = 2.4
# Whisper's no-speech rule: both thresholds exceeded → the window held no speech.
_NO_SPEECH = 0.6
_LOW_LOGPROB = -1.0
# Windows shorter than this are not split further when they loop.
_MIN_SPLIT = 4 * SAMPLE_RATE

# VAD as BatchedInferencePipeline configures it: regions at most a window long, split at
# pauses of 160 ms, padded by 400 ms each side.
_VAD = VadOptions(max_speech_duration_s=30, min_silence_duration_ms=160)


@dataclass
class DecodeOptions:
    """How windows are decoded."""

    beam_size: int = 5
    """Beam width of the search; there is no sampling fallback."""
    batch_size: int = 8
    """Windows decoded together in one CTranslate2 call."""
    max_initial_timestamp: float = 1.0
    """The first timestamp of a window may not be later than this (seconds)."""
    window_seconds: float = 30.0
    """Most speech packed into one window."""
    timestamps: bool = True
    """Segments inside windows (timestamp tokens), else one segment per window."""


@dataclass
class Window:
    """Speech packed into one Whisper input: `regions` of the chunk, played back to back.

    `regions` are [start, end) sample ranges of the chunk audio; `audio` is their
    concatenation (at most 30 s).
    """

    regions: list[tuple[int, int]]
    audio: np.ndarray
    retries: int = 0

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def chunk_time(self, seconds: float) -> float:
        """Map a time inside the window to seconds from the chunk start."""
        sample = min(max(0, round(seconds * SAMPLE_RATE)), len(self.audio))
        passed = 0
        for start, end in self.regions:
            if sample <= passed + end - start:
                return (start + sample - passed) / SAMPLE_RATE
            passed += end - start
        return self.regions[-1][1] / SAMPLE_RATE

    def tail(self, seconds: float) -> Window:
        """The part of the window after `seconds` (window time)."""
        return self.slice(round(seconds * SAMPLE_RATE), len(self.audio))

    def halves(self) -> tuple[Window, Window]:
        """The window split in two, at the region boundary nearest its middle if there is one."""
        middle = len(self.audio) // 2
        passed, boundaries = 0, []
        for start, end in self.regions[:-1]:
            passed += end - start
            boundaries.append(passed)
        cut = min(boundaries, key=lambda b: abs(b - middle), default=middle)
        if not len(self.audio) // 4 <= cut <= 3 * len(self.audio) // 4:
            cut = middle
        return self.slice(0, cut), self.slice(cut, len(self.audio))

    def slice(self, first: int, last: int) -> Window:
        """The window's samples [first, last) as a window of its own."""
        regions, passed = [], 0
        for start, end in self.regions:
            low, high = max(first, passed), min(last, passed + end - start)
            if low < high:
                regions.append((start + low - passed, start + high - passed))
            passed += end - start
        return Window(regions=regions, audio=self.audio[first:last], retries=self.retries + 1)


@dataclass
class Decoded:
    """The segments found in one window, in chunk time (seconds from the chunk start)."""

    window: Window
    segments: list[tuple[float, float, str]] = field(default_factory=list)


def speech_windows(audio: np.ndarray, *, seconds: float = 30.0) -> list[Window]:
    """The speech of `audio` (16 kHz mono) packed into windows of at most `seconds`, in order."""
    vad = VadOptions(max_speech_duration_s=seconds, min_silence_duration_ms=160)
    limit = round(seconds * SAMPLE_RATE)
    regions = [(r["start"], r["end"]) for r in get_speech_timestamps(audio, vad)]
    windows: list[Window] = []
    current: list[tuple[int, int]] = []
    length = 0
    for start, end in regions:
        if current and length + end - start > limit:
            windows.append(_window(audio, current))
            current, length = [], 0
        current.append((start, end))
        length += end - start
    if current:
        windows.append(_window(audio, current))
    return windows


def detect_language(whisper: WhisperModel, window: Window) -> tuple[str, float]:
    """The language spoken in `window` and the model's probability for it."""
    encoded = whisper.encode(_features(whisper, [window]))
    token, probability = whisper.model.detect_language(encoded)[0][0]
    return token[2:-2], float(probability)


def decode_windows(
    whisper: WhisperModel,
    windows: Sequence[Window],
    *,
    language: str,
    options: DecodeOptions,
) -> list[Decoded]:
    """Decode `windows` and check each result; returns them in window order.

    A window whose check fails is decoded again (its missed tail, or its two halves) in a
    further round, at most two rounds deep, so the work stays bounded.
    """
    tokenizer = Tokenizer(whisper.hf_tokenizer, whisper.model.is_multilingual,
                          task="transcribe", language=language)
    results = [Decoded(window=window) for window in windows]
    pending = list(enumerate(windows))
    while pending:
        outcomes = _generate(whisper, [window for _, window in pending], tokenizer, options)
        again: list[tuple[int, Window]] = []
        for (index, window), outcome in zip(pending, outcomes, strict=True):
            redo = _check(window, outcome, tokenizer, results[index])
            again.extend((index, part) for part in redo)
        pending = again
    for decoded in results:
        decoded.segments.sort(key=lambda segment: segment[0])
    return results


@dataclass
class _Outcome:
    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float


def _window(audio: np.ndarray, regions: list[tuple[int, int]]) -> Window:
    pieces = [audio[start:end] for start, end in regions]
    return Window(regions=regions, audio=np.concatenate(pieces) if len(pieces) > 1 else pieces[0])


def _features(whisper: WhisperModel, windows: Sequence[Window]) -> np.ndarray:
    return np.stack([
        pad_or_trim(whisper.feature_extractor(window.audio)[..., :-1]) for window in windows
    ])


def _generate(
    whisper: WhisperModel, windows: Sequence[Window], tokenizer: Tokenizer, options: DecodeOptions
) -> list[_Outcome]:
    outcomes: list[_Outcome] = []
    prompt = [*tokenizer.sot_sequence]
    if not options.timestamps:
        prompt.append(tokenizer.no_timestamps)
    suppress = list(get_suppressed_tokens(tokenizer, (-1,)) or ())
    for first in range(0, len(windows), options.batch_size):
        batch = windows[first : first + options.batch_size]
        encoded: ctranslate2.StorageView = whisper.encode(_features(whisper, batch))
        results = whisper.model.generate(
            encoded,
            [prompt] * len(batch),
            beam_size=options.beam_size,
            max_length=whisper.max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=suppress,
            max_initial_timestamp_index=round(options.max_initial_timestamp / _TIME_PRECISION),
        )
        for result in results:
            tokens = list(result.sequences_ids[0])
            outcomes.append(_Outcome(
                tokens=tokens,
                avg_logprob=result.scores[0] * len(tokens) / (len(tokens) + 1),
                no_speech_prob=result.no_speech_prob,
            ))
    return outcomes


def _check(
    window: Window, outcome: _Outcome, tokenizer: Tokenizer, decoded: Decoded
) -> list[Window]:
    """Fill `decoded` from `outcome`; the windows to decode again when the result is suspect."""
    text = tokenizer.decode(outcome.tokens).strip()
    if outcome.no_speech_prob > _NO_SPEECH and outcome.avg_logprob < _LOW_LOGPROB:
        return []  # not speech: VAD let noise through
    if window.retries < 2 and _compression_ratio(text) > _MAX_COMPRESSION:
        if len(window.audio) >= _MIN_SPLIT:
            return list(window.halves())
        return []  # a short window that still loops: better nothing than a loop
    segments = _split(outcome.tokens, tokenizer, window.seconds)
    for start, end, words in segments:
        decoded.segments.append((window.chunk_time(start), window.chunk_time(end), words))
    covered = segments[-1][1] if segments else 0.0
    if window.retries < 2 and window.seconds - covered > _MISSED_TAIL:
        return [window.tail(covered)]
    return []


def _split(
    tokens: list[int], tokenizer: Tokenizer, seconds: float
) -> list[tuple[float, float, str]]:
    """Whisper's output as (start, end, text) segments in window time.

    `<|t0|> text <|t1|><|t1|> text <|t2|>` gives two segments. Text after the last timestamp
    (the model ended without closing it) is kept and runs to the end of the window:
    faster-whisper would decode it again from there; the tail check above does that when
    it matters.
    """
    begin = tokenizer.timestamp_begin
    raw: list[tuple[float, float, list[int]]] = []
    pending: list[int] = []
    start: float | None = None
    last = 0.0
    for token in tokens:
        if token >= begin:
            time = min((token - begin) * _TIME_PRECISION, seconds)
            if pending:
                raw.append((last if start is None else start, time, pending))
                pending, start = [], None
            else:
                start = time
            last = time
        elif token < tokenizer.eot:
            pending.append(token)
            if start is None:
                start = last
    if pending:
        raw.append((last if start is None else start, seconds, pending))
    segments = []
    for first, end, ids in raw:
        text = tokenizer.decode(ids).strip()
        if text:
            segments.append((first, max(first, end), text))
    return segments


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0
