"""Decoding a chunk as bounded, independent windows of speech, batched through CTranslate2.

Sequential faster-whisper decodes 30 s after 30 s, each window prompted with the previous
window's text, and falls back to sampling at rising temperatures when a window looks bad. On
long audio that is where it goes wrong (DESIGN §5): sampling is not seeded, so the transcript
changes from run to run, one window decoded at temperature 1.0 once swallowed a paragraph, and a
wrong window primes the next one with wrong text.

Here instead:
- Silero VAD finds the speech, which is packed into windows of at most 30 s made of whole
  speech regions (never a cut word), much as faster-whisper's BatchedInferencePipeline does;
- every window is decoded on its own (no previous text) by beam search only, without timestamp
  tokens: the result is the same on every run, and batching windows is what makes it fast on
  a CPU. (With timestamp tokens the model often closes a segment and stops a few seconds
  before the end of a full window, and BatchedInferencePipeline drops that speech: WER 0.19
  instead of 0.07 on our ten-minute test clip.)
- segment times come from aligning the words to the audio (cross-attention + DTW in
  CTranslate2, one decoder pass), and segments are cut at sentence ends and pauses;
- each result is checked, not trusted: speech left after the last aligned word is decoded
  again as a window of its own, a window that loops is split in two and decoded again, and a
  window the model judges not to be speech gives no text instead of a hallucination.
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

__all__ = [
    "DecodeOptions",
    "Decoded",
    "Window",
    "decode_windows",
    "detect_language",
    "speech_windows",
]

# Speech left without words at the end of a window, beyond this, is decoded again on its own.
_MISSED_TAIL = 2.5
# Text that compresses better than this is a repetition loop (Whisper's own threshold).
_MAX_COMPRESSION = 2.4
# Whisper's no-speech rule: both thresholds crossed → the window held no speech.
_NO_SPEECH = 0.6
_LOW_LOGPROB = -1.0
# A window that loops is split only if it is longer than this.
_MIN_SPLIT = 4 * SAMPLE_RATE
# Rounds of re-decoding (tails, halves) after the first, so the work stays bounded.
_MAX_RETRIES = 2

# Speech regions end at pauses this long (ms), and keep this much (ms) of silence each side.
_MIN_SILENCE_MS = 500
_SPEECH_PAD_MS = 400

# Segments end after a sentence, at a pause, or once long enough at a clause.
_SENTENCE_END = (".", "?", "!", "。", "？", "！")
_CLAUSE_END = (",", ";", ":", "，", "、")
_PAUSE = 0.8
_LONG_SEGMENT = 12.0
_MAX_SEGMENT = 24.0


@dataclass
class DecodeOptions:
    """How windows are decoded."""

    beam_size: int = 5
    """Beam width of the search; there is no sampling fallback."""
    batch_size: int = 8
    """Windows decoded together in one CTranslate2 call."""
    window_seconds: float = 30.0
    """Most speech packed into one window (Whisper's input is 30 s)."""


@dataclass
class Window:
    """Speech packed into one Whisper input: `regions` of the chunk, played back to back.

    `regions` are [start, end) sample ranges of the chunk audio; `audio` is their
    concatenation.
    """

    regions: list[tuple[int, int]]
    audio: np.ndarray
    retries: int = 0

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @property
    def end(self) -> float:
        """Where the window's speech ends, in seconds from the chunk start."""
        return self.regions[-1][1] / SAMPLE_RATE

    def chunk_time(self, seconds: float, *, start: bool = False) -> float:
        """Map a time inside the window to seconds from the chunk start.

        A time exactly on the seam of two regions is the end of the first, or with `start`,
        the beginning of the second.
        """
        sample = min(max(0, round(seconds * SAMPLE_RATE)), len(self.audio))
        passed = 0
        for first, last in self.regions:
            length = last - first
            if sample < passed + length or (sample == passed + length and not start):
                return (first + sample - passed) / SAMPLE_RATE
            passed += length
        return self.end

    def slice(self, first: int, last: int) -> Window:
        """The window's samples [first, last) as a window of its own, one retry deeper."""
        regions, passed = [], 0
        for start, end in self.regions:
            low, high = max(first, passed), min(last, passed + end - start)
            if low < high:
                regions.append((start + low - passed, start + high - passed))
            passed += end - start
        return Window(regions=regions, audio=self.audio[first:last], retries=self.retries + 1)

    def halves(self) -> list[Window]:
        """The window cut in two, at the seam of two regions nearest its middle if near enough."""
        size = len(self.audio)
        seams, passed = [], 0
        for start, end in self.regions[:-1]:
            passed += end - start
            seams.append(passed)
        cut = min(seams, key=lambda seam: abs(seam - size // 2), default=size // 2)
        if not size // 4 <= cut <= 3 * size // 4:
            cut = size // 2
        return [self.slice(0, cut), self.slice(cut, size)]


@dataclass
class Decoded:
    """What one window said: (start, end, text) segments in seconds from the chunk start."""

    window: Window
    segments: list[tuple[float, float, str]] = field(default_factory=list)


def speech_windows(audio: np.ndarray, *, seconds: float = 30.0) -> list[Window]:
    """The speech in `audio` (16 kHz mono) packed into windows of at most `seconds`, in order.

    VAD regions are no longer than a window, split at pauses of half a second (splitting at
    every comma-length pause, as BatchedInferencePipeline does, measured slightly worse), and
    padded by 400 ms on each side.
    """
    vad = VadOptions(
        max_speech_duration_s=seconds,
        min_silence_duration_ms=_MIN_SILENCE_MS,
        speech_pad_ms=_SPEECH_PAD_MS,
    )
    limit = round(seconds * SAMPLE_RATE)
    windows: list[Window] = []
    current: list[tuple[int, int]] = []
    length = 0
    for region in get_speech_timestamps(audio, vad):
        start, end = int(region["start"]), int(region["end"])
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
    return str(token[2:-2]), float(probability)


def decode_windows(
    whisper: WhisperModel,
    windows: Sequence[Window],
    *,
    language: str,
    options: DecodeOptions,
) -> list[Decoded]:
    """Decode `windows` and check each result; returns one Decoded per window, in order.

    Windows whose check fails are decoded again (their missed tail, or their two halves) in a
    further round, at most `_MAX_RETRIES` rounds.
    """
    tokenizer = Tokenizer(
        whisper.hf_tokenizer, whisper.model.is_multilingual, task="transcribe", language=language
    )
    results = [Decoded(window=window) for window in windows]
    pending = list(enumerate(windows))
    while pending:
        outcomes = _generate(whisper, [window for _, window in pending], tokenizer, options)
        again: list[tuple[int, Window]] = []
        for (index, window), outcome in zip(pending, outcomes, strict=True):
            segments, redo = _check(window, outcome)
            results[index].segments.extend(segments)
            again.extend((index, part) for part in redo)
        pending = again
    for decoded in results:
        decoded.segments.sort(key=lambda segment: segment[0])
    return results


@dataclass
class _Word:
    text: str
    start: float
    end: float


@dataclass
class _Outcome:
    text: str
    words: list[_Word]
    avg_logprob: float
    no_speech_prob: float


def _window(audio: np.ndarray, regions: list[tuple[int, int]]) -> Window:
    pieces = [audio[start:end] for start, end in regions]
    return Window(regions=regions, audio=np.concatenate(pieces) if len(pieces) > 1 else pieces[0])


def _features(whisper: WhisperModel, windows: Sequence[Window]) -> np.ndarray:
    return np.stack(
        [pad_or_trim(whisper.feature_extractor(window.audio)[..., :-1]) for window in windows]
    )


def _encode(whisper: WhisperModel, windows: Sequence[Window]) -> ctranslate2.StorageView:
    """The encoder output of a batch, computed one window at a time: batching the encoder
    gains little on a CPU, and its attention costs ~90 MB per window in the batch."""
    if len(windows) == 1:
        return whisper.encode(_features(whisper, windows))
    outputs = [np.asarray(whisper.encode(_features(whisper, [window]))) for window in windows]
    return ctranslate2.StorageView.from_array(np.concatenate(outputs))


def _generate(
    whisper: WhisperModel, windows: Sequence[Window], tokenizer: Tokenizer, options: DecodeOptions
) -> list[_Outcome]:
    prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    suppress = list(get_suppressed_tokens(tokenizer, (-1,)) or ())
    outcomes: list[_Outcome] = []
    for first in range(0, len(windows), options.batch_size):
        batch = windows[first : first + options.batch_size]
        encoded = _encode(whisper, batch)
        results = whisper.model.generate(
            encoded,
            [prompt] * len(batch),
            beam_size=options.beam_size,
            max_length=whisper.max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=suppress,
        )
        tokens = [[t for t in r.sequences_ids[0] if t < tokenizer.eot] for r in results]
        frames = [len(window.audio) // whisper.feature_extractor.hop_length for window in batch]
        alignments = _align(whisper, tokenizer, encoded, tokens, frames)
        for result, ids, words in zip(results, tokens, alignments, strict=True):
            outcomes.append(
                _Outcome(
                    text=tokenizer.decode(ids).strip(),
                    words=words,
                    avg_logprob=result.scores[0] * len(ids) / (len(ids) + 1),
                    no_speech_prob=result.no_speech_prob,
                )
            )
    return outcomes


def _align(
    whisper: WhisperModel,
    tokenizer: Tokenizer,
    encoded: ctranslate2.StorageView,
    tokens: list[list[int]],
    frames: list[int],
) -> list[list[_Word]]:
    """Word timings (window time) for each item of the batch, from the model's attention."""
    if not any(tokens):
        return [[] for _ in tokens]
    placeholder = tokenizer.encode(" ")[:1]  # align needs text for every item of the batch
    results = whisper.model.align(
        encoded, tokenizer.sot_sequence, [ids or placeholder for ids in tokens], frames
    )
    aligned: list[list[_Word]] = []
    for ids, result in zip(tokens, results, strict=True):
        if not ids:
            aligned.append([])
            continue
        words, word_tokens = tokenizer.split_to_word_tokens([*ids, tokenizer.eot])
        text_indices = np.array([pair[0] for pair in result.alignments])
        time_indices = np.array([pair[1] for pair in result.alignments])
        jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
        jump_times = time_indices[jumps] / whisper.tokens_per_second
        boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
        aligned.append(
            [
                _Word(text=word, start=float(jump_times[start]), end=float(jump_times[end]))
                for word, start, end in zip(
                    words[:-1], boundaries[:-1], boundaries[1:], strict=True
                )
                if start < len(jump_times) and end < len(jump_times)
            ]
        )
    return aligned


def _check(
    window: Window, outcome: _Outcome
) -> tuple[list[tuple[float, float, str]], list[Window]]:
    """The segments of a result, and what to decode again when it is suspect."""
    if not outcome.text or (
        outcome.no_speech_prob > _NO_SPEECH and outcome.avg_logprob < _LOW_LOGPROB
    ):
        return [], []  # no speech here, whatever VAD thought
    retry = window.retries < _MAX_RETRIES
    if _compression_ratio(outcome.text) > _MAX_COMPRESSION:
        if retry and len(window.audio) >= _MIN_SPLIT:
            return [], window.halves()
        return [], []  # better nothing than a loop
    if not outcome.words:  # alignment failed: the window's text as one segment
        return [(window.chunk_time(0.0, start=True), window.end, outcome.text)], []
    segments = _segments(window, outcome.words)
    covered = outcome.words[-1].end
    if retry and window.seconds - covered > _MISSED_TAIL:
        return segments, [window.slice(round(covered * SAMPLE_RATE), len(window.audio))]
    return segments, []


def _segments(window: Window, words: list[_Word]) -> list[tuple[float, float, str]]:
    """Group aligned words into segments: after a sentence, at a pause, or when long."""
    timed = [
        (window.chunk_time(word.start, start=True), window.chunk_time(word.end), word.text)
        for word in words
    ]
    segments: list[tuple[float, float, str]] = []
    group: list[tuple[float, float, str]] = []
    for i, (start, end, text) in enumerate(timed):
        group.append((start, max(start, end), text))
        following = timed[i + 1][0] if i + 1 < len(timed) else None
        length = end - group[0][0]
        stripped = text.rstrip()
        if (
            following is None
            or stripped.endswith(_SENTENCE_END)
            or following - end >= _PAUSE
            or (length >= _LONG_SEGMENT and stripped.endswith(_CLAUSE_END))
            or length >= _MAX_SEGMENT
        ):
            sentence = "".join(word for _, _, word in group).strip()
            if sentence:
                segments.append((round(group[0][0], 3), round(group[-1][1], 3), sentence))
            group = []
    return segments


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0
