from __future__ import annotations

import itertools

import numpy as np

from smap_stt.stt.audio import SAMPLE_RATE, decode_audio
from smap_stt.stt.chunks import iter_chunks
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
