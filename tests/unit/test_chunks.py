"""Chunking's pure part: where a long file is cut (tests/stt/test_chunks.py decodes real
speech for the rest)."""

from __future__ import annotations

import numpy as np
import pytest

from smap_stt.stt.audio import SAMPLE_RATE
from smap_stt.stt.chunks import find_cut


def test_find_cut_prefers_the_quietest_spot() -> None:
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 0.3, 40 * SAMPLE_RATE).astype(np.float32)
    audio[23 * SAMPLE_RATE : 23 * SAMPLE_RATE + 4000] *= 0.01
    cut = find_cut(audio, target=20 * SAMPLE_RATE, slack=5 * SAMPLE_RATE)
    assert cut / SAMPLE_RATE == pytest.approx(23.125, abs=0.1)
