"""Cutting long audio into checkpointable chunks, at pauses, the same way every time.

A job that crashed resumes from its last finished chunk, so the cut points must not depend on
anything but the audio: we cut between two of the speech windows (`windows.speech_windows`)
near each target length, or, without VAD or where no window ends near it, at the quietest
quarter second there, found from the decoded samples alone. Chunks an earlier attempt
finished keep the bounds it stored, even if the chunk length setting has changed since.

Why between windows: each window costs a full encoder pass whatever it holds, so a chunk cut
at a pause of its own ends in a part-filled window, one per chunk. On the 581 s test recording
the whole file packs into 21 windows; cut at quiet points into 120 s chunks it took 22, into
the 60 s chunks a file split across workers uses, 24 (issue 14).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smap_stt.stt.audio import SAMPLE_RATE, decode_pieces
from smap_stt.stt.windows import Window, speech_windows

__all__ = ["ChunkAudio", "find_cut", "iter_chunks"]

_FRAME = SAMPLE_RATE // 100  # 10 ms energy frames
_QUIET_FRAMES = 25  # the quietest 250 ms is where we cut
_PIECE_SECONDS = 30.0


@dataclass
class ChunkAudio:
    """The samples of chunk `index`, which starts `start` samples into the file."""

    index: int
    start: int
    audio: np.ndarray
    windows: list[Window] | None = None
    """Its speech windows when the cut was made between windows (they need no second VAD)."""

    @property
    def end(self) -> int:
        return self.start + len(self.audio)

    @property
    def start_seconds(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_seconds(self) -> float:
        return self.end / SAMPLE_RATE


def iter_chunks(
    path: Path,
    *,
    chunk_seconds: float,
    fixed_ends: Mapping[int, float] | None = None,
    max_seconds: float | None = None,
    speech: bool = False,
) -> Iterator[ChunkAudio]:
    """The chunks of `path`, in order, each about `chunk_seconds` long and cut at a pause:
    with `speech` (the job uses VAD), between two speech windows where one ends near the
    target, and the chunk carries its windows.

    `fixed_ends` maps a chunk index to the end (seconds from the file start) an earlier attempt
    used for it; that chunk is cut there instead of searching again. Only one chunk plus one
    decoded piece is held in memory. Raises AudioError when the file cannot be decoded.
    """
    target = max(1, round(chunk_seconds * SAMPLE_RATE))
    slack = min(round(15 * SAMPLE_RATE), target // 4)
    fixed = {index: round(end * SAMPLE_RATE) for index, end in (fixed_ends or {}).items()}
    buffer = np.empty(0, dtype=np.float32)
    start = 0
    index = 0
    pieces = decode_pieces(  # max_seconds: AudioRejected once the decoded audio is longer
        path, piece_seconds=min(_PIECE_SECONDS, chunk_seconds), max_seconds=max_seconds
    )
    for piece in pieces:
        buffer = np.concatenate((buffer, piece)) if len(buffer) else piece
        while True:
            windows: list[Window] | None = None
            if index in fixed and fixed[index] > start:
                cut = fixed[index] - start
                if len(buffer) < cut:
                    break
            elif len(buffer) >= target + slack:
                found = speech_cut(buffer, target=target, slack=slack) if speech else None
                if found is not None:
                    cut, windows = found
                else:
                    cut = find_cut(buffer, target=target, slack=slack)
            else:
                break
            yield ChunkAudio(index=index, start=start, audio=buffer[:cut], windows=windows)
            buffer = buffer[cut:]
            start += cut
            index += 1
    # The tail: at most target + slack samples, unless an earlier attempt cut it differently.
    while len(buffer):
        cut = len(buffer)
        if index in fixed and fixed[index] > start:
            cut = min(cut, fixed[index] - start)
        yield ChunkAudio(index=index, start=start, audio=buffer[:cut])
        buffer = buffer[cut:]
        start += cut
        index += 1


def speech_cut(audio: np.ndarray, *, target: int, slack: int) -> tuple[int, list[Window]] | None:
    """The cut in `[target - slack, target + slack]` between two speech windows of `audio`
    nearest `target` (in the middle of the pause between them), and the windows before it;
    None when no window ends there (silence, or pauses too far apart). VAD splits speech
    without a pause at ~29 s, so a cut can fall inside such speech, where its windows are
    split anyway. `audio` must reach `target + slack`: the windows are those of that much
    audio, so the cut is a pure function of the samples."""
    windows = speech_windows(audio[: target + slack])
    best: int | None = None
    count = 0
    for k in range(1, len(windows)):
        cut = (windows[k - 1].regions[-1][1] + windows[k].regions[0][0]) // 2
        if target - slack <= cut <= target + slack and (
            best is None or abs(cut - target) < abs(best - target)
        ):
            best, count = cut, k
    return None if best is None else (best, windows[:count])


def find_cut(audio: np.ndarray, *, target: int, slack: int) -> int:
    """The sample in `[target - slack, target + slack]` at the middle of the quietest 250 ms.

    Ties go to the earliest, so the answer is a pure function of the samples.
    """
    low, high = max(0, target - slack), min(len(audio), target + slack)
    if high - low < _FRAME * _QUIET_FRAMES:
        return min(target, len(audio))
    window = audio[low:high].astype(np.float64)
    frames = len(window) // _FRAME
    energy = np.square(window[: frames * _FRAME]).reshape(frames, _FRAME).mean(axis=1)
    kernel = np.ones(_QUIET_FRAMES) / _QUIET_FRAMES
    smoothed = np.convolve(energy, kernel, mode="valid")
    quietest = int(np.argmin(smoothed))
    return low + (quietest + _QUIET_FRAMES // 2) * _FRAME
