"""A split file's coordinator does not join chunks cut two different ways (issue 14): a chunk
message of an earlier attempt that cut the file elsewhere (another release, other settings,
VAD numbers that differ between machines) may be transcribed after this attempt planned;
that chunk is transcribed again with this attempt's bounds. Real RabbitMQ, SQLite, local
blobs and the real model; the test itself is the other worker."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from smap_stt.backends import Backends
from smap_stt.blobs.local import LocalBlobStore
from smap_stt.config import Settings
from smap_stt.jobs import Job, JobStatus, new_job_id
from smap_stt.queue.base import Delivery, decode_chunk_message
from smap_stt.queue.rabbitmq import RabbitQueue
from smap_stt.store.sqlite import SqliteJobStore
from smap_stt.stt.audio import SAMPLE_RATE, probe
from smap_stt.stt.engine import Engine, EngineOptions
from smap_stt.stt.results import ChunkTranscript
from smap_stt.worker import fanout
from smap_stt.worker.process import WorkerContext
from tests.conftest import AMQP_URL, Clip, delete_topology
from tests.speech import wer

pytestmark = pytest.mark.timeout(300)


class Control:
    """What the job's attempt gives the coordinator: nothing stops it here."""

    def check(self) -> None: ...
    def on_progress(self, percent: float) -> None: ...
    def on_chunks(self, finished: int, expected: int) -> None: ...


@pytest.fixture
async def ctx(tmp_path: Path, models_dir: Path) -> AsyncIterator[WorkerContext]:
    tag = uuid.uuid4().hex[:8]
    queue = RabbitQueue(
        AMQP_URL,
        exchange=f"test-{tag}",
        routing_key="jobs",
        queue=f"test-{tag}",
        message_ttl_seconds=3600,
        retry_delays=[1],
    )
    backends = Backends(
        SqliteJobStore(tmp_path / "jobs.sqlite3"), LocalBlobStore(tmp_path / "blobs"), queue
    )
    await backends.open()
    settings = Settings(temp_dir=tmp_path / "tmp", fanout_chunk_seconds=20)
    engine = Engine(EngineOptions(models_dir=models_dir, decoders=1))
    yield WorkerContext(settings, backends, engine, "coordinator")
    await backends.close()
    await delete_topology(AMQP_URL, f"test-{tag}", f"test-{tag}")


async def test_a_chunk_cut_elsewhere_is_transcribed_again(
    ctx: WorkerContext, long_clip: Clip, caplog: pytest.LogCaptureFixture
) -> None:
    store = ctx.backends.store
    job = Job(id=new_job_id(), filename="a.mp3", language="en", model="base", audio_key="x")
    await store.create(job)
    claimed = await store.claim(job.id, "coordinator")
    assert claimed is not None and claimed.status is JobStatus.PROCESSING

    async def other_worker(delivery: Delivery) -> None:
        """Chunk 1 arrives as an earlier attempt's message: starting 2 s later."""
        message = decode_chunk_message(delivery.body)
        if message.index == 1:
            message = replace(message, start=message.start + 2 * SAMPLE_RATE, windows=())
        await fanout.run_chunk(ctx, message)
        await delivery.ack()

    await ctx.backends.queue.consume_chunks(other_worker, prefetch=1)
    duration = probe(long_clip.path).duration
    transcript = await asyncio.wait_for(
        fanout.transcribe_across_workers(
            ctx, claimed, Control(), long_clip.path, [], duration=duration
        ),
        timeout=240,
    )

    chunks = [ChunkTranscript.from_dict(d) for d in await store.load_chunks(job.id)]
    assert len(chunks) >= 3
    assert chunks[0].start == 0
    assert all(a.end == b.start for a, b in itertools.pairwise(chunks)), "chunks tile the file"
    assert wer(long_clip.text, transcript.text) < 0.15
    assert "transcribed for other cut points" in caplog.text
