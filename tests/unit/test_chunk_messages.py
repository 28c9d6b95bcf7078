"""Chunk messages (issue 14): what a worker accepts from the chunk queue, and what the
coordinator accepts back."""

from __future__ import annotations

import json

import pytest

from smap_stt.jobs import ChunkMessage
from smap_stt.queue.base import decode_chunk_message, encode_chunk_message
from smap_stt.stt.results import ChunkTranscript
from smap_stt.worker.fanout import stale_chunks

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
        [[[0, 31 * 16000]]],  # longer than one Whisper input
        None,  # null
    ],
)
def test_windows_that_do_not_fit_the_chunk_are_dropped_not_the_message(windows: object) -> None:
    """They only spare the worker a VAD pass: without them it finds the speech itself, and
    the chunk (and its job) goes on."""
    data = json.loads(encode_chunk_message(MESSAGE))
    data["windows"] = windows
    decoded = decode_chunk_message(json.dumps(data).encode())
    assert decoded.windows == ()
    assert (decoded.job_id, decoded.index, decoded.audio_key) == ("j1", 2, "chunks/j1/00002.wav")


def test_chunks_transcribed_for_other_cut_points_are_found() -> None:
    """A chunk message of an earlier attempt, cut elsewhere, may be checkpointed after this
    attempt planned: the coordinator must not join it to chunks cut this attempt's way."""
    spans = {0: (0.0, 55.5), 1: (55.5, 112.25), 2: (112.25, 130.0)}
    chunks = [
        ChunkTranscript(index=0, start=0.0, end=55.5),
        ChunkTranscript(index=1, start=55.5, end=110.0),  # the earlier cut
        ChunkTranscript(index=2, start=112.25, end=130.0),
    ]
    assert stale_chunks(chunks, spans) == {1}
    chunks[1] = ChunkTranscript(index=1, start=55.5, end=112.25 + 1e-9)
    assert stale_chunks(chunks, spans) == set()
