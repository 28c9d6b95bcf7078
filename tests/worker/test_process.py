"""The worker's error boundary settles every message exactly once and bounds every retry,
whatever the store does around it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from smap_stt.backends import Backends
from smap_stt.blobs.local import LocalBlobStore
from smap_stt.config import Settings
from smap_stt.errors import BackendUnavailable, JobNotFound
from smap_stt.jobs import ChunkMessage, Job, JobStatus, new_job_id, utcnow
from smap_stt.queue.base import encode_chunk_message
from smap_stt.queue.embedded import EmbeddedQueue
from smap_stt.recovery import recover_once, requeue_after_restart
from smap_stt.store.sqlite import SqliteJobStore
from smap_stt.stt.engine import Engine
from smap_stt.stt.results import ChunkTranscript
from smap_stt.worker import process
from smap_stt.worker.process import WorkerContext, handle_chunk, handle_delivery
from tests.worker.deliveries import RecordingDelivery

MAX_ATTEMPTS = 2


class FaultyStore(SqliteJobStore):
    """SQLite, with `claim` (or `save_chunk`) replaced by a fault when one is set."""

    claim_error: Exception | None = None
    chunks_error: Exception | None = None
    save_chunk_delay: float = 0

    async def chunk_indices(self, job_id: str) -> list[int]:
        if self.chunks_error is not None:
            raise self.chunks_error
        return await super().chunk_indices(job_id)

    async def claim(self, job_id: str, worker_id: str, *, takeover: bool = False) -> Job | None:
        if self.claim_error is not None:
            raise self.claim_error
        return await super().claim(job_id, worker_id, takeover=takeover)

    async def save_chunk(self, job_id: str, index: int, data: dict[str, Any]) -> None:
        await asyncio.sleep(self.save_chunk_delay)
        await super().save_chunk(job_id, index, data)


@pytest.fixture
async def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[WorkerContext]:
    monkeypatch.setattr(process, "HAND_BACK_PAUSE", 0)
    settings = Settings(
        temp_dir=tmp_path / "tmp", max_attempts=MAX_ATTEMPTS, stale_after=60, republish_after=3600
    )
    backends = Backends(
        FaultyStore(tmp_path / "jobs.sqlite3"), LocalBlobStore(tmp_path / "blobs"), EmbeddedQueue()
    )
    await backends.open()
    # No job here gets as far as transcribing, so no engine is needed.
    yield WorkerContext(settings, backends, cast(Engine, None), "test-worker")
    await backends.close()


async def _job(ctx: WorkerContext, **fields: Any) -> Job:
    job = Job(
        id=new_job_id(),
        filename="a.wav",
        language="en",
        model="base",
        audio_key="uploads/a.wav",
        **fields,
    )
    await ctx.backends.store.create(job)
    return job


def _store(ctx: WorkerContext) -> FaultyStore:
    return cast(FaultyStore, ctx.backends.store)


async def test_store_failure_before_the_attempt_hands_the_message_back(ctx: WorkerContext) -> None:
    """A store hiccup between reading the job and claiming it used to escape the handler: the
    message stayed unsettled and its consumer slot was lost (with prefetch 1, for good)."""
    job = await _job(ctx)
    _store(ctx).claim_error = BackendUnavailable("sqlite", "database is locked")
    delivery = RecordingDelivery(job.id)
    await handle_delivery(ctx, delivery)
    assert delivery.settled == ["hand_back"]
    assert (await ctx.backends.store.get(job.id)).status is JobStatus.PENDING


async def test_unexpected_error_before_the_attempt_fails_the_job(ctx: WorkerContext) -> None:
    job = await _job(ctx)
    _store(ctx).claim_error = KeyError("a bug")
    delivery = RecordingDelivery(job.id)
    await handle_delivery(ctx, delivery)
    assert delivery.settled == ["dead_letter"]
    failed = await ctx.backends.store.get(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error_message is not None and "KeyError" in failed.error_message
    assert "a bug" not in failed.error_message  # the exception's own text stays in the log


async def test_job_deleted_before_its_claim_is_dead_lettered(ctx: WorkerContext) -> None:
    job = await _job(ctx)
    _store(ctx).claim_error = JobNotFound(job.id)
    delivery = RecordingDelivery(job.id)
    await handle_delivery(ctx, delivery)
    assert delivery.settled == ["dead_letter"]


async def _claimed(ctx: WorkerContext, times: int) -> Job:
    job = await _job(ctx)
    claimed: Job | None = job
    for _ in range(times):
        claimed = await ctx.backends.store.claim(job.id, "gone", takeover=True)
    assert claimed is not None and claimed.attempts == times
    return claimed


async def _silence(ctx: WorkerContext, job: Job) -> None:
    """Make the job look as if its worker sent no heartbeat for an hour."""
    long_ago = utcnow() - timedelta(hours=1)
    await ctx.backends.store._update(
        job.id,
        statuses=[JobStatus.PROCESSING],
        attempts=None,
        changes={"updated_at": long_ago, "heartbeat_at": long_ago},
    )


async def test_silent_job_with_attempts_left_is_handed_to_another_worker(
    ctx: WorkerContext,
) -> None:
    job = await _claimed(ctx, MAX_ATTEMPTS - 1)
    await _silence(ctx, job)
    await recover_once(ctx.settings, ctx.backends)
    assert (await ctx.backends.store.get(job.id)).status is JobStatus.PENDING
    assert await ctx.backends.queue.waiting() == 1


async def test_silent_job_that_used_every_attempt_fails(ctx: WorkerContext) -> None:
    """Released and republished, it used to run again with no bound (a worker that hangs on a
    file, every time)."""
    job = await _claimed(ctx, MAX_ATTEMPTS)
    await _silence(ctx, job)
    await recover_once(ctx.settings, ctx.backends)
    failed = await ctx.backends.store.get(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error_message is not None and "gave up after 2 attempts" in failed.error_message
    assert await ctx.backends.queue.waiting() == 0


async def test_restart_fails_jobs_that_used_every_attempt(ctx: WorkerContext) -> None:
    """`serve` restarted after a crash resumes running jobs, except those whose attempts are
    spent: a file that crashes the process used to crash it again on every restart."""
    resumed = await _claimed(ctx, MAX_ATTEMPTS - 1)
    spent = await _claimed(ctx, MAX_ATTEMPTS)
    await requeue_after_restart(ctx.backends.store, max_attempts=MAX_ATTEMPTS)
    assert (await ctx.backends.store.get(resumed.id)).status is JobStatus.PENDING
    failed = await ctx.backends.store.get(spent.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error_message is not None and "process died" in failed.error_message


async def test_slow_checkpoint_is_a_store_problem_not_a_job_timeout(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`future.result(timeout)` raises TimeoutError, which `_run_attempt` read as JOB_TIMEOUT
    and failed the job for good; a slow store is worth a retry."""
    monkeypatch.setattr(process, "CHECKPOINT_TIMEOUT", 0.1)
    job = await _claimed(ctx, 1)
    _store(ctx).save_chunk_delay = 1
    control = process._Control(ctx, job, asyncio.get_running_loop())
    with pytest.raises(BackendUnavailable, match="checkpoint"):
        await asyncio.to_thread(control.on_chunk, ChunkTranscript(index=0, start=0, end=30))
    assert await ctx.backends.store.load_chunks(job.id) == []


# --- chunks of a file split across workers (issue 14) -----------------------------------------


def _chunk_delivery(job_id: str, *, retry_of: int | None = None) -> RecordingDelivery:
    delivery = RecordingDelivery(job_id)
    message = ChunkMessage(
        job_id=job_id, index=3, start=0, end=16000, language="en", audio_key="chunks/x/3.wav"
    )
    delivery.body = encode_chunk_message(message)
    delivery.retry_of = retry_of
    return delivery


async def _running_job(ctx: WorkerContext) -> Job:
    job = await _job(ctx)
    claimed = await ctx.backends.store.claim(job.id, "coordinator")
    assert claimed is not None
    return claimed


async def test_a_chunk_whose_store_fails_is_retried_then_fails_its_job(ctx: WorkerContext) -> None:
    job = await _running_job(ctx)
    _store(ctx).chunks_error = BackendUnavailable("sqlite", "database is locked")
    first = _chunk_delivery(job.id)
    await handle_chunk(ctx, first)
    assert first.settled == ["retry_later"]
    assert (await ctx.backends.store.get(job.id)).status is JobStatus.PROCESSING
    last = _chunk_delivery(job.id, retry_of=MAX_ATTEMPTS - 1)
    await handle_chunk(ctx, last)
    assert last.settled == ["dead_letter"]
    failed = await ctx.backends.store.get(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error_message == (
        f"gave up after {MAX_ATTEMPTS} tries: chunk 3: sqlite is unavailable: database is locked"
    )


async def test_a_chunk_of_a_job_no_longer_running_is_dropped(ctx: WorkerContext) -> None:
    job = await _running_job(ctx)
    assert await ctx.backends.store.cancel(job.id)
    _store(ctx).chunks_error = BackendUnavailable("sqlite", "never asked")  # nor needed
    delivery = _chunk_delivery(job.id)
    await handle_chunk(ctx, delivery)
    assert delivery.settled == ["ack"]
    gone = _chunk_delivery(new_job_id())
    await handle_chunk(ctx, gone)
    assert gone.settled == ["ack"]


async def test_a_malformed_chunk_message_is_dead_lettered(ctx: WorkerContext) -> None:
    job = await _running_job(ctx)
    delivery = RecordingDelivery(job.id)  # a job message where a chunk message belongs
    await handle_chunk(ctx, delivery)
    assert delivery.settled == ["dead_letter"]
    assert (await ctx.backends.store.get(job.id)).status is JobStatus.PROCESSING
