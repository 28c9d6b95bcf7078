"""Issue 12, hole 1: a job cancelled (or deleted) just as its worker finished kept its full
transcript in the blob store for ever, with no result key in its row. A final state is written
with its files, or its files are removed. The worker here is the real one, with the real model,
store and blob store; the store only makes the cancel arrive at the worst moment."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from smap_stt.backends import Backends
from smap_stt.blobs.local import LocalBlobStore
from smap_stt.config import Settings
from smap_stt.jobs import Job, JobStatus, new_job_id, result_key
from smap_stt.queue.embedded import EmbeddedQueue
from smap_stt.store.sqlite import SqliteJobStore
from smap_stt.stt.engine import Engine, EngineOptions
from smap_stt.worker.process import WorkerContext, handle_delivery
from tests.conftest import Clip
from tests.worker.deliveries import RecordingDelivery

pytestmark = pytest.mark.timeout(300)


class LateCancelStore(SqliteJobStore):
    """Cancels (or deletes) the job right before the worker records its completion: the
    transcript blob is written by then."""

    action = "cancel"

    async def complete(self, job: Job, **fields: Any) -> bool:
        await self.cancel(job.id)
        if self.action == "delete":
            await self.delete(job.id)
        return await super().complete(job, **fields)


@pytest.fixture(scope="module")
def engine(models_dir: Path) -> Engine:
    return Engine(EngineOptions.from_settings(Settings(whisper_models_dir=models_dir)))


@pytest.fixture
async def ctx(tmp_path: Path, engine: Engine) -> AsyncIterator[WorkerContext]:
    backends = Backends(
        LateCancelStore(tmp_path / "jobs.sqlite3"),
        LocalBlobStore(tmp_path / "blobs"),
        EmbeddedQueue(),
    )
    await backends.open()
    yield WorkerContext(Settings(temp_dir=tmp_path / "tmp"), backends, engine, "w1")
    await backends.close()


async def _queued(ctx: WorkerContext, clip: Clip) -> Job:
    job_id = new_job_id()
    job = Job(
        id=job_id, filename="clip.wav", language="en", model="base", audio_key=f"uploads/{job_id}"
    )
    await ctx.backends.blobs.put_file(job.audio_key, clip.path)
    await ctx.backends.store.create(job)
    await ctx.backends.store.save_chunk(job.id, 0, {"index": 0, "start": 0, "end": 1})
    return job


@pytest.mark.parametrize("action", ["cancel", "delete"])
async def test_a_job_lost_as_it_finishes_keeps_no_transcript(
    ctx: WorkerContext, tiny_clip: Clip, action: str
) -> None:
    store = ctx.backends.store
    assert isinstance(store, LateCancelStore)
    store.action = action
    job = await _queued(ctx, tiny_clip)
    delivery = RecordingDelivery(job.id)

    await handle_delivery(ctx, delivery)

    assert delivery.settled == ["ack"]
    assert not await ctx.backends.blobs.exists(result_key(job.id))
    assert await store.load_chunks(job.id) == []
    if action == "cancel":
        final = await store.get(job.id)
        assert final.status is JobStatus.CANCELLED
        assert final.result_key is None
        assert await ctx.backends.blobs.exists(job.audio_key)  # the audio goes with DELETE


async def test_a_completed_job_keeps_its_transcript(ctx: WorkerContext, tiny_clip: Clip) -> None:
    """The other half: the discard never touches a job that completed."""
    store = ctx.backends.store
    assert isinstance(store, LateCancelStore)
    job = await _queued(ctx, tiny_clip)
    store.action = "none"
    store.complete = super(LateCancelStore, store).complete  # type: ignore[method-assign]
    await handle_delivery(ctx, RecordingDelivery(job.id))
    done = await store.get(job.id)
    assert done.status is JobStatus.COMPLETED
    assert await ctx.backends.blobs.exists(result_key(job.id))
