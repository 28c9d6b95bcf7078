"""Cutting long audio into checkpointable chunks, at pauses, the same way every time.

A job that crashed resumes from its last finished chunk, so the cut points must not depend on
anything but the audio: we cut at the quietest quarter second near each target length, found
from the decoded samples alone. Chunks an earlier attempt finished keep the bounds it stored,
even if the chunk length setting has changed since.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smap_stt.stt.audio import SAMPLE_RATE, decode_pieces

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
) -> Iterator[ChunkAudio]:
    """The chunks of `path`, in order, each about `chunk_seconds` long and cut at a pause.

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
            if index in fixed and fixed[index] > start:
                cut = fixed[index] - start
                if len(buffer) < cut:
                    break
            elif len(buffer) >= target + slack:
                cut = find_cut(buffer, target=target, slack=slack)
            else:
                break
            yield ChunkAudio(index=index, start=start, audio=buffer[:cut])
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
