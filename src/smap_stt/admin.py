"""Queue administration (`smap-stt queue ...`): what the original's operators did in the
RabbitMQ UI and by hand in MongoDB, as commands that keep the job store and the queue in step.

Against RabbitMQ (`smap-stt api` / `worker` deployments) the queues are read and drained on the
broker; beside `smap-stt serve` (`--embedded`) the job store is the record behind the
in-process queue, so the commands work on it and the running service picks up the changes
(new jobs through its outbox; purged jobs are final, so their queued messages are ignored).
Final states never change: a requeued dead letter becomes a NEW job (`retry_of` names the
failed one), and purging marks jobs FAILED, never leaves them PENDING.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any

from smap_stt.backends import Backends
from smap_stt.errors import BackendUnavailable, BlobNotFound, InvalidRequest, JobNotFound
from smap_stt.jobs import Job, JobMessage, JobStatus, new_job_id, utcnow
from smap_stt.queue.base import QueueStats, decode_message, is_chunk_message, store_stats
from smap_stt.queue.rabbitmq import RabbitQueue

log = logging.getLogger(__name__)

__all__ = ["DeadLetter", "Overview", "dead_letters", "overview", "purge", "requeue_dead"]

PURGE_REASON = "purged by operator"
LIST_LIMIT = 1000
# A requeued job starts afresh: everything a run wrote is reset, every option is kept.
_RUN_FIELDS = frozenset(
    {
        "status",
        "progress",
        "error_message",
        "duration_seconds",
        "processing_time_seconds",
        "transcription",
        "detected_language",
        "result_key",
        "attempts",
        "worker_id",
        "published",
        "created_at",
        "updated_at",
        "started_at",
        "completed_at",
        "heartbeat_at",
        "webhook_delivery_id",
        "webhook_next_at",
        "webhook_attempts",
        "webhook_delivered_at",
        "audio_deleted_at",
        "requeued_as",
        "retry_of",
        "language_probability",
        "chunks_total",
        "chunks_completed",
        "idempotency_key",
        "deduplicated_from",
    }
)


@dataclass(frozen=True)
class Overview:
    stats: QueueStats
    oldest_pending: Job | None


@dataclass(frozen=True)
class DeadLetter:
    job_id: str
    reason: str
    failed_at: str | None


async def overview(backends: Backends, *, embedded: bool) -> Overview:
    if embedded:  # the in-process queue lives in `serve`, not here: read its record
        stats = await store_stats(backends.store)
    else:
        stats = await backends.queue.stats(backends.store)
    oldest = await backends.store.list_oldest(status=JobStatus.PENDING, limit=1)
    return Overview(stats, oldest[0] if oldest else None)


def _death_reason(headers: dict[str, Any]) -> str:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        reason = deaths[0].get("reason")
        if isinstance(reason, bytes):
            return reason.decode()
        if isinstance(reason, str):
            return reason
    return "dead-lettered"


async def dead_letters(backends: Backends, *, limit: int = LIST_LIMIT) -> list[DeadLetter]:
    """The dead letters: on RabbitMQ the messages in the dead-letter queue (left in place),
    embedded the FAILED jobs not requeued yet. The reason is the job's error message."""
    store, queue = backends.store, backends.queue
    found: list[tuple[str, str]] = []
    if isinstance(queue, RabbitQueue):

        async def keep(body: bytes, headers: dict[str, Any]) -> bool:
            try:
                found.append((decode_message(body).job_id, _death_reason(headers)))
            except ValueError:
                found.append(("(malformed message)", _death_reason(headers)))
            return False

        await queue.browse("dead", keep, limit=limit)
    else:
        jobs = await store.list(status=JobStatus.FAILED, limit=limit)
        found = [(job.id, "failed") for job in jobs if job.requeued_as is None]
    letters = []
    for job_id, death in found:
        try:
            job = await store.get(job_id)
        except JobNotFound:
            letters.append(DeadLetter(job_id, f"{death} (the job no longer exists)", None))
            continue
        when = job.completed_at.isoformat(timespec="seconds") if job.completed_at else None
        letters.append(DeadLetter(job_id, job.error_message or death, when))
    return letters


async def _copy_audio(backends: Backends, job: Job, new_key: str) -> None:
    if job.audio_deleted_at is not None:
        raise BlobNotFound(job.audio_key)
    with tempfile.TemporaryDirectory(prefix="smap-stt-requeue-") as folder:
        path = Path(folder) / ("audio" + PurePosixPath(job.audio_key).suffix)
        await backends.blobs.get_file(job.audio_key, path)
        await backends.blobs.put_file(new_key, path, move=True)


async def requeue_job(backends: Backends, job_id: str, *, embedded: bool) -> Job:
    """A new PENDING job with the FAILED job's audio and options (`retry_of` = its id)."""
    store = backends.store
    old = await store.get(job_id)
    if old.status is not JobStatus.FAILED:
        raise InvalidRequest(f"job {job_id} is {old.status.value}; only FAILED jobs are requeued")
    if old.requeued_as is not None:
        raise InvalidRequest(f"job {job_id} was already requeued as {old.requeued_as}")
    new_id = new_job_id()
    values = {f.name: getattr(old, f.name) for f in fields(Job) if f.name not in _RUN_FIELDS}
    values.update(
        id=new_id,
        audio_key=f"uploads/{new_id}{PurePosixPath(old.audio_key).suffix}",
        retry_of=old.id,
        # Embedded: the running `serve` publishes it from its outbox (this process cannot
        # reach its in-memory queue).
        published=not embedded,
    )
    if old.callback_url:
        values["webhook_delivery_id"] = new_job_id()
    job = Job(**values)
    try:
        await _copy_audio(backends, old, job.audio_key)
    except BlobNotFound:
        raise InvalidRequest(
            f"job {job_id}: its audio is gone (KEEP_AUDIO=false or deleted); it cannot be requeued"
        ) from None
    await store.create(job)
    await store.update_final(old.id, {"requeued_as": job.id})
    if not embedded:
        try:
            await backends.queue.publish(JobMessage.for_job(job), priority=job.priority)
        except BackendUnavailable:
            with contextlib.suppress(BackendUnavailable):
                await store.mark_unpublished(job.id)
    log.info("job %s requeued as %s", old.id, job.id)
    return job


async def requeue_dead(
    backends: Backends, job_ids: list[str] | None, *, embedded: bool
) -> list[tuple[str, str]]:
    """Requeue the given FAILED jobs (None: every dead letter). Returns (old id, new id or
    the reason it was not requeued); on RabbitMQ the dead letters handled leave the queue."""
    results: list[tuple[str, str]] = []
    targets = None if job_ids is None else set(job_ids)
    queue = backends.queue
    handled: set[str] = set()

    async def one(job_id: str) -> None:
        handled.add(job_id)
        try:
            job = await requeue_job(backends, job_id, embedded=embedded)
            results.append((job_id, job.id))
        except (InvalidRequest, JobNotFound) as exc:
            results.append((job_id, f"not requeued: {exc}"))

    if isinstance(queue, RabbitQueue):

        async def take(body: bytes, _: dict[str, Any]) -> bool:
            try:
                job_id = decode_message(body).job_id
            except ValueError:
                return targets is None  # --all clears malformed dead letters too
            if targets is not None and job_id not in targets:
                return False
            if job_id not in handled:
                await one(job_id)
            return True

        await queue.browse("dead", take)
    else:
        if targets is None:
            jobs = await backends.store.list(status=JobStatus.FAILED, limit=LIST_LIMIT)
            targets = {job.id for job in jobs if job.requeued_as is None}
    for job_id in sorted((targets or set()) - handled):
        await one(job_id)
    return results


async def purge(backends: Backends) -> int:
    """Drain the work and chunk queues (and the delayed retries): every drained message's job
    ends FAILED "purged by operator" (a job whose chunk was drained too, although it runs).
    Embedded: every PENDING job. Returns how many jobs."""
    store, queue = backends.store, backends.queue
    failed = 0

    async def drain(job_id: str) -> None:
        nonlocal failed
        with contextlib.suppress(JobNotFound):
            # A message for a running job is a duplicate: the attempt goes on.
            if (await store.get(job_id)).status is not JobStatus.PENDING:
                return
            if await store.fail(job_id, PURGE_REASON):
                failed += 1

    async def drain_running(job_id: str) -> None:
        # A chunk of a file split across workers: without it the job cannot finish, so the
        # job ends FAILED too (its coordinator and its other chunks see it and stop).
        nonlocal failed
        with contextlib.suppress(JobNotFound):
            if (await store.get(job_id)).status.final:
                return
            if await store.fail(job_id, PURGE_REASON):
                failed += 1

    if isinstance(queue, RabbitQueue):

        async def take(body: bytes, _: dict[str, Any]) -> bool:
            with contextlib.suppress(ValueError):
                job_id = decode_message(body).job_id
                if is_chunk_message(body):
                    await drain_running(job_id)
                else:
                    await drain(job_id)
            return True

        await queue.browse("work", take)
        await queue.browse("retry", take)
    else:
        for _ in range(10_000):
            jobs = await store.list(status=JobStatus.PENDING, limit=100)
            for job in jobs:
                await drain(job.id)
            if len(jobs) < 100:
                break
    log.info("purged %d job(s)", failed)
    return failed


def age_text(job: Job) -> str:
    seconds = int((utcnow() - job.created_at).total_seconds())
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


async def with_backends(backends: Backends, work: Any) -> Any:
    """Open the backends, run `work(backends)`, close them."""
    await backends.open()
    try:
        async with asyncio.timeout(300):
            return await work(backends)
    finally:
        await backends.close()
