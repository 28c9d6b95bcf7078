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

import functools
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper import vad as _vad

# faster-whisper's public surface is WhisperModel and BatchedInferencePipeline; both decode
# whole files their own way. Deciding windows, prompts and checks ourselves needs a few of its
# inner names, imported here and nowhere else (faster-whisper is pinned to the minor version
# tested, see pyproject.toml): the tokenizer (task, language, prompt tokens), the tokens
# Whisper suppresses, how it joins punctuation to words, the input padding and Silero VAD.
# Prompting, alignment and language detection go through WhisperModel's own methods.
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens, merge_punctuations
from faster_whisper.vad import VadOptions, get_speech_timestamps

from smap_stt.stt.audio import SAMPLE_RATE
from smap_stt.stt.results import Segment, Word

__all__ = [
    "DecodeOptions",
    "Decoded",
    "Window",
    "decode_windows",
    "detect_language",
    "fixed_windows",
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

# Speech regions end at pauses this long (ms), and keep up to this much (ms) of silence each
# side (half the pause each when the pause is shorter than twice that, as faster-whisper pads).
_MIN_SILENCE_MS = 160
_SPEECH_PAD_MS = 400
# A full window is cut at the longest pause among those that leave it at least this full.
_MIN_FILL = 0.8
# 512-sample frames Silero VAD reads per call: 32 s of audio (see _BoundedVad).
_VAD_FRAMES = 1000

# faster-whisper's defaults for joining punctuation to the word before or after it.
_PREPEND_PUNCTUATION = "\"'“¿([{-"
_APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"

# Segments end after a sentence, at a pause, or once long enough at a clause.
_SENTENCE_END = (".", "?", "!", "。", "？", "！")
_CLAUSE_END = (",", ";", ":", "，", "、")
_PAUSE = 0.8
_LONG_SEGMENT = 12.0
_MAX_SEGMENT = 24.0


@dataclass(frozen=True)
class DecodeOptions:
    """How windows are decoded."""

    beam_size: int = 5
    """Beam width of the search; there is no sampling fallback."""
    batch_size: int = 2
    """Most windows decoded together in one CTranslate2 call. Each window in a beam-search
    batch holds ~48 MB while it decodes (base, beam 5: measured 48, 96, 144, 191 MB for 1 to
    4), about what encoding one costs (~90 MB), while batches larger than 2 are hardly
    faster per window (~2 %). Unbounded, the peak followed how many windows one chunk
    happened to hold (`WHISPER_CHUNK_SECONDS=600`: ~1.5 GB). The engine sets it per worker."""
    window_seconds: float = 30.0
    """Most speech packed into one window (Whisper's input is 30 s)."""
    task: str = "transcribe"
    """`transcribe`, or `translate` (into English), as the tokenizer's task token says."""
    initial_prompt: str | None = None
    """Given to every window in the previous-text slot, as faster-whisper gives it to the first."""
    hotwords: str | None = None
    """Given in the same slot, before the prompt, as faster-whisper does."""
    temperature: float = 0.0
    """0: beam search; above 0: one sample at this temperature (no beam)."""


@dataclass
class Window:
    """Speech packed into one Whisper input: `regions` of the chunk, played back to back.

    `regions` are [start, end) sample ranges of the chunk audio; `audio` is their
    concatenation.
    """

    regions: list[tuple[int, int]]
    audio: np.ndarray
    retries: int = 0

    @classmethod
    def of(cls, audio: np.ndarray, regions: Sequence[tuple[int, int]]) -> Window:
        """The window of `regions` of the chunk `audio`."""
        pieces = [audio[start:end] for start, end in regions]
        samples = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        return cls(regions=list(regions), audio=samples)

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


class _BoundedVad:
    """faster-whisper's Silero VAD, fed at most `_VAD_FRAMES` frames per model call.

    The library runs up to 10000 frames (320 s) in one call, and the call's memory grows with
    them: ~0.4 MB per second of audio, 53 MB for the ~135 s the engine reads ahead to cut a
    chunk, held while both decoders are at their own peaks (issue 14, item 4). The recurrent
    state and each frame's 64 samples of context carry from call to call exactly as between
    the library's own calls, and the last frame ends in 64 zeros as the library's does, so the
    probabilities are the same (tests/stt/test_windows.py); smaller calls are faster too
    (0.49 s instead of 0.79 s for 300 s).
    """

    def __init__(self, model: Any) -> None:
        self.session = model.session  # the library's own ONNX session, loaded once

    def __call__(
        self, audio: np.ndarray, num_samples: int = 512, context_size_samples: int = 64
    ) -> np.ndarray:
        frames = audio.reshape(-1, num_samples)
        state = np.zeros((1, 1, 128), dtype="float32")
        cell = np.zeros((1, 1, 128), dtype="float32")
        outputs = []
        for first in range(0, len(frames), _VAD_FRAMES):
            part = frames[first : first + _VAD_FRAMES]
            if first + _VAD_FRAMES >= len(frames):  # as the library does (it does so in place)
                part = part.copy()
                part[-1, -context_size_samples:] = 0.0
            context = np.empty((len(part), context_size_samples), dtype="float32")
            context[0] = frames[first - 1, -context_size_samples:] if first else 0.0
            context[1:] = part[:-1, -context_size_samples:]
            output, state, cell = self.session.run(
                None, {"input": np.concatenate([context, part], 1), "h": state, "c": cell}
            )
            outputs.append(output)
        return np.concatenate(outputs, axis=0)


_library_vad = _vad.get_vad_model


@functools.cache
def _bounded_vad() -> _BoundedVad:
    return _BoundedVad(_library_vad())


# `get_speech_timestamps` takes its model from this module function and has no parameter for
# one; the rest of it (thresholds, padding, splitting long speech) is used as it is.
_vad.get_vad_model = _bounded_vad


@dataclass
class Decoded:
    """What one window said: its segments, timed in seconds from the chunk start."""

    window: Window
    segments: list[Segment] = field(default_factory=list)


def speech_windows(audio: np.ndarray, *, seconds: float = 30.0) -> list[Window]:
    """The speech in `audio` (16 kHz mono) packed into windows of at most `seconds`, in order.

    Every window costs one full encoder pass whatever it holds, so windows are filled: speech
    regions end at pauses of 160 ms or more, and a window that is full is cut at the longest
    pause among those that leave it at least `_MIN_FILL` full (a sentence end rather than a
    comma, where the speech allows). Packing whole half-second-pause regions instead left
    windows two-thirds full on speech whose pauses are mostly short (the 581 s test
    recording in 120 s chunks: 27 windows averaging 20 s; 22 now).
    """
    pad = _SPEECH_PAD_MS * SAMPLE_RATE // 1000
    limit = round(seconds * SAMPLE_RATE)
    vad = VadOptions(
        max_speech_duration_s=max(1.0, seconds - 2 * pad / SAMPLE_RATE),
        min_silence_duration_ms=_MIN_SILENCE_MS,
        speech_pad_ms=0,
    )
    speech = [(int(r["start"]), int(r["end"])) for r in get_speech_timestamps(audio, vad)]
    regions, pauses = _padded(speech, pad, len(audio))
    return [Window.of(audio, regions[first:cut]) for first, cut in _pack(regions, pauses, limit)]


def _pack(regions: list[tuple[int, int]], pauses: list[int], limit: int) -> list[tuple[int, int]]:
    """Which regions go together: [first, cut) index ranges of `regions`, each at most `limit`
    samples long (or one region, if that alone is longer), each full one cut at its longest
    pause (`pauses[k]`: the silence between regions k and k + 1) among those that leave it
    at least `_MIN_FILL` full."""
    packed: list[tuple[int, int]] = []
    first = 0
    while first < len(regions):
        lengths = [0]  # lengths[k]: regions first .. first + k - 1
        for start, end in regions[first:]:
            if lengths[-1] + end - start > limit and len(lengths) > 1:
                break
            lengths.append(lengths[-1] + end - start)
        cut = first + len(lengths) - 1  # everything that fits
        if cut < len(regions):  # the window is full: cut it at its best pause instead
            seams = range(first + 1, cut + 1)
            full = [k for k in seams if lengths[k - first] >= _MIN_FILL * limit] or [cut]
            cut = max(full, key=lambda k: (pauses[k - 1], k))
        packed.append((first, cut))
        first = cut
    return packed


def _padded(
    speech: list[tuple[int, int]], pad: int, total: int
) -> tuple[list[tuple[int, int]], list[int]]:
    """Speech regions padded with up to `pad` samples of silence each side (regions closer
    than 2 × `pad` share the pause between them), and the pause before each next region."""
    pauses = [speech[i + 1][0] - speech[i][1] for i in range(len(speech) - 1)]
    regions = []
    for i, (start, end) in enumerate(speech):
        before = min(pad, pauses[i - 1] // 2) if i else pad
        after = min(pad, pauses[i] // 2) if i < len(pauses) else pad
        regions.append((max(0, start - before), min(total, end + after)))
    return regions, pauses


def fixed_windows(audio: np.ndarray, *, seconds: float = 30.0) -> list[Window]:
    """`audio` cut into back-to-back windows of `seconds`, silence included (no VAD)."""
    size = max(1, round(seconds * SAMPLE_RATE))
    return [
        Window(regions=[(first, min(first + size, len(audio)))], audio=audio[first : first + size])
        for first in range(0, len(audio), size)
    ]


def detect_language(whisper: WhisperModel, window: Window) -> tuple[str, float]:
    """The language spoken in `window` and the model's probability for it."""
    language, probability, _ = whisper.detect_language(audio=window.audio)
    return language, float(probability)


class Stopped(Exception):
    """The transcription this decoding belongs to was stopped (cancelled, timed out)."""


def decode_windows(
    whisper: WhisperModel,
    windows: Sequence[Window],
    *,
    language: str,
    options: DecodeOptions,
    stop: threading.Event | None = None,
) -> list[Decoded]:
    """Decode `windows` and check each result; returns one Decoded per window, in order.

    Windows whose check fails are decoded again (their missed tail, or their two halves) in a
    further round, at most `_MAX_RETRIES` rounds. Once `stop` is set, raises Stopped before
    the next model call, so a cancelled job's work ends with the call already running.
    """
    tokenizer = Tokenizer(
        whisper.hf_tokenizer, whisper.model.is_multilingual, task=options.task, language=language
    )
    results = [Decoded(window=window) for window in windows]
    pending = list(enumerate(windows))
    while pending:
        outcomes = _generate(whisper, [w for _, w in pending], tokenizer, options, stop)
        again: list[tuple[int, Window]] = []
        for (index, window), outcome in zip(pending, outcomes, strict=True):
            segments, redo = _check(window, outcome)
            results[index].segments.extend(segments)
            again.extend((index, part) for part in redo)
        pending = again
    for decoded in results:
        decoded.segments.sort(key=lambda segment: segment.start)
    return results


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Stopped


@dataclass
class _Word:
    """A word as aligned, in seconds from the window start."""

    text: str
    start: float
    end: float
    probability: float = 0.0


@dataclass
class _Outcome:
    text: str
    words: list[_Word]
    avg_logprob: float
    no_speech_prob: float


def _features(whisper: WhisperModel, windows: Sequence[Window]) -> np.ndarray:
    return np.stack(
        [pad_or_trim(whisper.feature_extractor(window.audio)[..., :-1]) for window in windows]
    )


def _encode(
    whisper: WhisperModel, windows: Sequence[Window], stop: threading.Event | None
) -> ctranslate2.StorageView:
    """The encoder output of a batch, computed one window at a time: batching the encoder
    gains little on a CPU, and its attention costs ~90 MB per window in the batch."""
    if len(windows) == 1:
        return whisper.encode(_features(whisper, windows))
    outputs = []
    for window in windows:
        _check_stop(stop)
        outputs.append(np.asarray(whisper.encode(_features(whisper, [window]))))
    return ctranslate2.StorageView.from_array(np.concatenate(outputs))


def _prompt(whisper: WhisperModel, tokenizer: Tokenizer, options: DecodeOptions) -> list[int]:
    """faster-whisper's prompt for a window without timestamps: the hotwords and the initial
    prompt in the previous-text slot (each cut to the model's limit), then the task tokens."""
    previous: list[int] = []
    if options.initial_prompt and options.initial_prompt.strip():
        previous = tokenizer.encode(" " + options.initial_prompt.strip())
    hotwords = options.hotwords.strip() if options.hotwords else None
    return list(
        whisper.get_prompt(tokenizer, previous, without_timestamps=True, hotwords=hotwords or None)
    )


def _search(options: DecodeOptions) -> dict[str, Any]:
    """CTranslate2's search arguments: beam search, or sampling as faster-whisper samples."""
    if options.temperature > 0:
        return {"beam_size": 1, "sampling_topk": 0, "sampling_temperature": options.temperature}
    return {"beam_size": options.beam_size}


def _generate(
    whisper: WhisperModel,
    windows: Sequence[Window],
    tokenizer: Tokenizer,
    options: DecodeOptions,
    stop: threading.Event | None = None,
) -> list[_Outcome]:
    prompt = _prompt(whisper, tokenizer, options)
    suppress = list(get_suppressed_tokens(tokenizer, (-1,)) or ())
    outcomes: list[_Outcome] = []
    for first in range(0, len(windows), options.batch_size):
        batch = windows[first : first + options.batch_size]
        _check_stop(stop)
        encoded = _encode(whisper, batch, stop)
        _check_stop(stop)
        results = whisper.model.generate(
            encoded,
            [prompt] * len(batch),
            max_length=whisper.max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=suppress,
            **_search(options),
        )
        tokens = [[t for t in r.sequences_ids[0] if t < tokenizer.eot] for r in results]
        frames = [len(window.audio) // whisper.feature_extractor.hop_length for window in batch]
        _check_stop(stop)
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
    """Word timings (window time) and probabilities for each item of the batch, from
    faster-whisper's alignment (cross-attention + DTW, one decoder pass for the batch)."""
    if not any(tokens):
        return [[] for _ in tokens]
    placeholder = tokenizer.encode(" ")[:1]  # align needs text for every item of the batch
    try:
        results = whisper.find_alignment(
            tokenizer,
            [ids or placeholder for ids in tokens],
            encoded,
            frames,  # CTranslate2 takes one frame count per item of the batch
        )
    except (IndexError, ValueError):  # no usable path: each window's text becomes one segment
        return [[] for _ in tokens]
    words: list[list[_Word]] = []
    for ids, aligned in zip(tokens, results, strict=True):
        if not ids:
            words.append([])
            continue
        # "years" "." → "years.", as faster-whisper's word timestamps have them
        merge_punctuations(aligned, _PREPEND_PUNCTUATION, _APPEND_PUNCTUATION)
        words.append(
            [
                _Word(
                    text=str(word["word"]),
                    start=float(word["start"]),
                    end=float(word["end"]),
                    probability=float(word["probability"]),
                )
                for word in aligned
                if word["word"]
            ]
        )
    return words


def _check(window: Window, outcome: _Outcome) -> tuple[list[Segment], list[Window]]:
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
        start = window.chunk_time(0.0, start=True)
        return [_segment(outcome, start, window.end, outcome.text, [])], []
    segments = _segments(window, outcome)
    covered = outcome.words[-1].end
    if retry and window.seconds - covered > _MISSED_TAIL:
        return segments, [window.slice(round(covered * SAMPLE_RATE), len(window.audio))]
    return segments, []


def _segment(outcome: _Outcome, start: float, end: float, text: str, words: list[Word]) -> Segment:
    return Segment(
        start=round(start, 3),
        end=round(end, 3),
        text=text,
        avg_logprob=round(outcome.avg_logprob, 4),
        no_speech_prob=round(outcome.no_speech_prob, 4),
        words=words,
    )


def _segments(window: Window, outcome: _Outcome) -> list[Segment]:
    """Group aligned words into segments: after a sentence, at a pause, or when long."""
    timed = [
        Word(
            start=round(window.chunk_time(word.start, start=True), 3),
            end=round(window.chunk_time(word.end), 3),
            word=word.text,
            probability=round(word.probability, 4),
        )
        for word in outcome.words
    ]
    segments: list[Segment] = []
    group: list[Word] = []
    for i, word in enumerate(timed):
        word.end = max(word.start, word.end)
        group.append(word)
        following = timed[i + 1].start if i + 1 < len(timed) else None
        length = word.end - group[0].start
        stripped = word.word.rstrip()
        if (
            following is None
            or stripped.endswith(_SENTENCE_END)
            or following - word.end >= _PAUSE
            or (length >= _LONG_SEGMENT and stripped.endswith(_CLAUSE_END))
            or length >= _MAX_SEGMENT
        ):
            sentence = "".join(w.word for w in group).strip()
            if sentence:
                segments.append(_segment(outcome, group[0].start, group[-1].end, sentence, group))
            group = []
    return segments


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0
