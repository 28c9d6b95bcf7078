"""Recovery sweeps: periodic passes over the job store that put back in the queue what a crash,
a broker outage or a silent worker left out of it.

Every process with a store and a queue runs them (`smap-stt api` and `serve` in their
lifespan, `smap-stt worker` beside its consumer), and each sweep holds a lease in the job store
while it runs, so with API_WORKERS > 1 or several machines exactly one process runs a given
sweep at a time; if that process dies, another takes the sweep over when the lease expires
(three intervals). Sweeps only touch state through guarded store updates, so a pass that
overlaps a lease hand-over does no harm, it only repeats work.

To add a sweep, write `async def sweep(settings, backends) -> None` and add one `Sweep` line
to `SWEEPS`.

Imports no worker, engine or model code: the API process runs this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from smap_stt import metrics, retention, webhooks
from smap_stt.backends import Backends
from smap_stt.config import Settings
from smap_stt.errors import BackendUnavailable
from smap_stt.jobs import JobMessage, JobStatus, give_up_reason
from smap_stt.store.base import JobStore

log = logging.getLogger(__name__)

SweepFunction = Callable[[Settings, Backends], Awaitable[None]]


@dataclass(frozen=True)
class Sweep:
    name: str
    """Also the name of its lease in the job store."""
    run: SweepFunction
    every: Callable[[Settings], float] = lambda settings: settings.outbox_interval
    """Seconds between passes."""


async def publish_outbox(settings: Settings, backends: Backends) -> None:
    """PENDING jobs never published (the broker was down at upload)."""
    store, queue = backends.store, backends.queue
    for job in await store.unpublished(older_than=timedelta(seconds=2)):
        await queue.publish(JobMessage.for_job(job), priority=job.priority)
        await store.mark_published(job.id)
        log.info("published job %s from the outbox", job.id)


async def release_stale(settings: Settings, backends: Backends) -> None:
    """PROCESSING jobs whose worker stopped sending heartbeats: to another worker, or FAILED
    once their attempts are spent (released, a job that hangs its worker would run forever)."""
    store, queue = backends.store, backends.queue
    for job in await store.stale(older_than=timedelta(seconds=settings.stale_after)):
        reason = give_up_reason(
            job, settings.max_attempts, "the last one stopped sending heartbeats"
        )
        if reason is not None:
            if await store.fail(job.id, reason, attempt=job.attempts):
                log.error("job %s failed: %s", job.id, reason)
                metrics.observe_failed(job.model, reason)
            continue
        if await store.release(job, error=f"attempt {job.attempts} stopped sending heartbeats"):
            await queue.publish(JobMessage.for_job(job), priority=job.priority)
            log.warning(
                "job %s: attempt %d went silent; handed to another worker", job.id, job.attempts
            )


async def republish_lost(settings: Settings, backends: Backends) -> None:
    """PENDING jobs that waited long while the queue is empty: their message was lost (the
    process that published it died between recording and publishing, or the broker lost it)."""
    store, queue = backends.store, backends.queue
    lost = await store.pending(older_than=timedelta(seconds=settings.republish_after))
    if not lost or await queue.waiting() != 0:
        return
    for job in lost:
        await queue.publish(JobMessage.for_job(job), priority=job.priority)
        await store.heartbeat_pending(job.id)
        log.warning(
            "job %s: waited %s s with an empty queue; published again",
            job.id,
            int(settings.republish_after),
        )


SWEEPS: list[Sweep] = [
    Sweep("outbox", publish_outbox),
    Sweep("stale-jobs", release_stale),
    Sweep("lost-messages", republish_lost),
    # operations (issue 11)
    Sweep("webhooks", webhooks.send_due),
    Sweep("final-audio", retention.audio_sweep),
    Sweep("retention", retention.retention_sweep, every=lambda s: s.retention_interval),
]


def holder_id() -> str:
    """Who holds a lease: one id per process, so uvicorn's API workers are told apart."""
    return f"{socket.gethostname()}:{os.getpid()}"


async def recover_once(settings: Settings, backends: Backends) -> None:
    """One pass of every sweep, in order, without leases (tests, and a manual nudge)."""
    for sweep in SWEEPS:
        await sweep.run(settings, backends)


async def run_sweeps(settings: Settings, backends: Backends, *, holder: str | None = None) -> None:
    """Run every sweep forever, each on its own interval and under its lease; cancel to stop
    (the leases held are then released, so another process takes over at once)."""
    holder = holder or holder_id()
    try:
        await asyncio.gather(*(_loop(sweep, settings, backends, holder) for sweep in SWEEPS))
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3):
                for sweep in SWEEPS:  # ttl 0: expire our lease now, if we hold it
                    await backends.store.try_lease(sweep.name, holder, 0)


async def _loop(sweep: Sweep, settings: Settings, backends: Backends, holder: str) -> None:
    while True:
        every = sweep.every(settings)
        try:
            if await backends.store.try_lease(sweep.name, holder, ttl=3 * every):
                await sweep.run(settings, backends)
        except BackendUnavailable as exc:
            log.info("%s sweep skipped: %s", sweep.name, exc)
        except Exception:
            log.exception("%s sweep failed", sweep.name)
        await asyncio.sleep(every)


async def requeue_after_restart(store: JobStore, *, max_attempts: int) -> None:
    """Embedded mode (`serve`), at start: the in-process queue died with the last process, so
    every job that was queued or running is queued again (running ones resume from their
    checkpoints), unless its attempts are spent: a file that crashes the process must not
    crash it again on every restart."""
    for job in await store.list(status=JobStatus.PROCESSING, limit=10_000):
        reason = give_up_reason(
            job, max_attempts, "the last one stopped without finishing (the process died)"
        )
        if reason is not None:
            if await store.fail(job.id, reason, attempt=job.attempts):
                log.error("job %s failed: %s", job.id, reason)
                metrics.observe_failed(job.model, reason)
            continue
        await store.release(job, error="resumed after a restart")
    for job in await store.list(status=JobStatus.PENDING, limit=10_000):
        await store.mark_unpublished(job.id)
