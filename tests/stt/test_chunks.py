from __future__ import annotations

import itertools

import numpy as np

from smap_stt.stt.audio import SAMPLE_RATE, decode_audio
from smap_stt.stt.chunks import iter_chunks, speech_cut
from smap_stt.stt.windows import speech_windows
from tests.stt.conftest import Clip


def test_chunks_are_contiguous_about_the_target_length_and_cut_at_pauses(speech_75s: Clip) -> None:
    audio = decode_audio(speech_75s.path)
    chunks = list(iter_chunks(speech_75s.path, chunk_seconds=20))

    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    assert chunks[0].start == 0 and chunks[-1].end == len(audio)
    assert all(a.end == b.start for a, b in itertools.pairwise(chunks))
    assert all(15 <= len(chunk.audio) / SAMPLE_RATE <= 25 for chunk in chunks[:-1])
    np.testing.assert_array_equal(np.concatenate([chunk.audio for chunk in chunks]), audio)
    for chunk in chunks[:-1]:  # espeak's pauses are digital silence
        around = audio[chunk.end - 800 : chunk.end + 800]
        assert float(np.abs(around).max()) < 0.01


def test_cut_points_are_deterministic(speech_75s: Clip) -> None:
    first = [(c.start, c.end) for c in iter_chunks(speech_75s.path, chunk_seconds=20)]
    again = [(c.start, c.end) for c in iter_chunks(speech_75s.path, chunk_seconds=20)]
    assert first == again


def test_fixed_ends_from_an_earlier_attempt_win(speech_75s: Clip) -> None:
    chunks = list(iter_chunks(speech_75s.path, chunk_seconds=30, fixed_ends={0: 12.5, 1: 31.0}))
    assert chunks[0].end_seconds == 12.5
    assert chunks[1].start_seconds == 12.5 and chunks[1].end_seconds == 31.0
    assert 22 <= chunks[2].end_seconds - 31.0 <= 38


def test_with_speech_chunks_are_cut_between_windows_and_carry_them(speech_75s: Clip) -> None:
    """A chunk cut between speech windows packs into exactly the windows found when cutting,
    so a worker that takes it from the queue (and runs VAD again) decodes the same windows,
    and no chunk ends in a part-filled window of its own."""
    audio = decode_audio(speech_75s.path)
    quiet = list(iter_chunks(speech_75s.path, chunk_seconds=30))
    chunks = list(iter_chunks(speech_75s.path, chunk_seconds=30, speech=True))

    assert chunks[0].start == 0 and chunks[-1].end == len(audio)
    assert all(a.end == b.start for a, b in itertools.pairwise(chunks))
    assert all(22.5 <= len(chunk.audio) / SAMPLE_RATE <= 37.5 for chunk in chunks[:-1])
    for chunk in chunks[:-1]:
        assert chunk.windows, "cut between two windows"
        assert [w.regions for w in chunk.windows] == [
            w.regions for w in speech_windows(chunk.audio)
        ]
        around = audio[chunk.end - 800 : chunk.end + 800]
        assert float(np.abs(around).max()) < 0.01  # in a pause
    assert chunks[-1].windows is None  # the tail is whatever is left: the engine packs it
    windows = sum(len(c.windows or speech_windows(c.audio)) for c in chunks)
    assert windows <= sum(len(speech_windows(c.audio)) for c in quiet)
    again = [(c.start, c.end) for c in iter_chunks(speech_75s.path, chunk_seconds=30, speech=True)]
    assert again == [(c.start, c.end) for c in chunks]


def test_speech_cut_gives_up_where_no_window_ends_near_the_target() -> None:
    """One region longer than the search range (a tone here, which VAD may or may not call
    speech): no window ends near the target, so `speech_cut` gives up and `find_cut` decides."""
    tone = (0.3 * np.sin(np.arange(90 * SAMPLE_RATE) * 2 * np.pi * 220 / SAMPLE_RATE)).astype(
        np.float32
    )
    assert speech_cut(tone, target=30 * SAMPLE_RATE, slack=5 * SAMPLE_RATE) is None
