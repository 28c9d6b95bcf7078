"""Chunking's pure part: where a long file is cut and how a chunk's windows are shared
between the decoders (tests/stt/test_chunks.py decodes real speech for the rest)."""

from __future__ import annotations

import numpy as np
import pytest

from smap_stt.stt.audio import SAMPLE_RATE
from smap_stt.stt.chunks import find_cut
from smap_stt.stt.engine import split_windows


def test_find_cut_prefers_the_quietest_spot() -> None:
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 0.3, 40 * SAMPLE_RATE).astype(np.float32)
    audio[23 * SAMPLE_RATE : 23 * SAMPLE_RATE + 4000] *= 0.01
    cut = find_cut(audio, target=20 * SAMPLE_RATE, slack=5 * SAMPLE_RATE)
    assert cut / SAMPLE_RATE == pytest.approx(23.125, abs=0.1)


@pytest.mark.parametrize(
    ("count", "groups", "batch", "expected"),
    [
        (0, 2, 2, []),
        (1, 2, 2, [(0, 1)]),
        (3, 2, 2, [(0, 2), (2, 3)]),
        (4, 2, 2, [(0, 2), (2, 4)]),
        (5, 2, 2, [(0, 2), (2, 4), (4, 5)]),  # not 3 + 2: no batch above 2
        (5, 1, 4, [(0, 3), (3, 5)]),  # one decoder: even batches of up to 4
        (4, 1, 4, [(0, 4)]),
        (7, 4, 2, [(0, 2), (2, 4), (4, 6), (6, 7)]),
        (5, 4, 2, [(0, 2), (2, 3), (3, 4), (4, 5)]),  # every decoder gets work
        (3, 1, 4, [(0, 3)]),
    ],
)
def test_a_chunks_windows_are_split_into_even_batches_for_the_decoders(
    count: int, groups: int, batch: int, expected: list[tuple[int, int]]
) -> None:
    assert split_windows(count, groups, batch) == expected
