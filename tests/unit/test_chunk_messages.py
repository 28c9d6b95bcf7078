"""Chunk messages (issue 14): what a worker accepts from the chunk queue."""

from __future__ import annotations

import json

import pytest

from smap_stt.jobs import ChunkMessage
from smap_stt.queue.base import decode_chunk_message, encode_chunk_message

MESSAGE = ChunkMessage(
    job_id="j1",
    index=2,
    start=32000,
    end=32000 + 60 * 16000,
    language="en",
    audio_key="chunks/j1/00002.wav",
    windows=(((0, 16000), (20000, 480000)), ((480000, 900000),)),
)


def test_a_chunk_message_round_trips_with_its_windows() -> None:
    assert decode_chunk_message(encode_chunk_message(MESSAGE)) == MESSAGE


def test_a_message_without_windows_is_accepted_and_the_worker_finds_them() -> None:
    """What a worker of the previous release publishes: no `windows` field."""
    data = json.loads(encode_chunk_message(MESSAGE))
    del data["windows"]
    assert decode_chunk_message(json.dumps(data).encode()).windows == ()


@pytest.mark.parametrize(
    "windows",
    [
        "0-16000",  # not a list
        [[]],  # an empty window
        [[[0, 16000, 1]]],  # not a pair
        [[[0, "16000"]]],  # not numbers
        [[[0, True]]],  # a bool is no sample
        [[[16000, 16000]]],  # empty range
        [[[0, 60 * 16000 + 1]]],  # beyond the chunk's samples
        [[[100, 200]], [[150, 300]]],  # overlapping, out of order
        [[[-5, 200]]],  # negative
    ],
)
def test_windows_that_do_not_fit_the_chunk_make_the_message_malformed(windows: object) -> None:
    data = json.loads(encode_chunk_message(MESSAGE))
    data["windows"] = windows
    with pytest.raises(ValueError, match="window"):
        decode_chunk_message(json.dumps(data).encode())
