"""The worker process: consume job messages, run them, and stop gracefully on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from datetime import timedelta
from typing import Any

from smap_stt.backends import Backends
from smap_stt.config import Settings
from smap_stt.errors import BackendUnavailable
from smap_stt.jobs import JobMessage
from smap_stt.queue.base import Delivery
from smap_stt.queue.rabbitmq import RabbitDelivery, RabbitQueue
from smap_stt.store.base import JobStore
from smap_stt.stt import registry
from smap_stt.stt.engine import Engine
from smap_stt.worker.process import WorkerContext, handle_dead_event, handle_delivery

log = logging.getLogger(__name__)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    def __init__(
        self,
        settings: Settings,
        backends: Backends,
        engine: Engine,
        *,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.backends = backends
        self.ctx = WorkerContext(settings, backends, engine, worker_id or default_worker_id())
        self._running: set[asyncio.Task[Any]] = set()
        self._recovery: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the default model, then start consuming and the recovery loop."""
        settings = self.settings
        # The default model may live in the blob store only (pushed, not installed here).
        await registry.ensure_local(
            self.backends.blobs,
            settings.whisper_models_dir,
            settings.whisper_model,
            allow_download=settings.whisper_allow_download,
        )
        await asyncio.to_thread(self.ctx.engine.load, settings.whisper_model)
        queue = self.backends.queue
        await queue.consume(self._track(handle_delivery), prefetch=settings.max_concurrent_jobs)
        if isinstance(queue, RabbitQueue):
            await queue.consume_dead_events(self._track(self._dead_event))
        self._recovery = asyncio.create_task(recovery_loop(settings, self.backends))
        log.info(
            "worker %s consuming from %s (%d jobs at once, model %s)",
            self.ctx.worker_id,
            queue.name,
            settings.max_concurrent_jobs,
            settings.whisper_model,
        )

    def _track(self, handler: Any) -> Any:
        async def run(delivery: Delivery) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._running.add(task)
            try:
                await handler(self.ctx, delivery)
            finally:
                self._running.discard(task)

        return run

    async def _dead_event(self, ctx: WorkerContext, delivery: Delivery) -> None:
        await handle_dead_event(ctx, delivery, _death_reason(delivery))

    async def stop(self) -> None:
        """Stop taking jobs; let running ones finish within the grace period, then hand the
        rest back to the queue."""
        await self.backends.queue.stop_consuming()
        if self._recovery is not None:
            self._recovery.cancel()
        running = set(self._running)
        if running:
            grace = self.settings.shutdown_grace_seconds
            log.info("waiting up to %.0f s for %d running job(s)", grace, len(running))
            _, pending = await asyncio.wait(running, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=30)
        log.info("worker %s stopped", self.ctx.worker_id)


def _death_reason(delivery: Delivery) -> str:
    if isinstance(delivery, RabbitDelivery):
        return delivery.death_reason
    return "rejected"


async def recover_once(settings: Settings, backends: Backends) -> None:
    """One pass over the job store for messages that may be missing from the queue:
    - the outbox: PENDING jobs never published (the broker was down at upload);
    - stale: PROCESSING jobs whose worker stopped sending heartbeats;
    - lost: PENDING jobs waiting long while the queue is empty."""
    store, queue = backends.store, backends.queue
    for job in await store.unpublished(older_than=timedelta(seconds=2)):
        await queue.publish(JobMessage.for_job(job), priority=job.priority)
        await store.mark_published(job.id)
        log.info("published job %s from the outbox", job.id)
    for job in await store.stale(older_than=timedelta(seconds=settings.stale_after)):
        if job.attempts >= settings.max_attempts:  # released, it would run once more, forever
            reason = (
                f"gave up after {job.attempts} attempts: the last one stopped sending heartbeats"
            )
            if await store.fail(job.id, reason, attempt=job.attempts):
                log.error("job %s failed: %s", job.id, reason)
            continue
        if await store.release(job, error=f"attempt {job.attempts} stopped sending heartbeats"):
            await queue.publish(JobMessage.for_job(job), priority=job.priority)
            log.warning(
                "job %s: attempt %d went silent; handed to another worker", job.id, job.attempts
            )
    lost = await store.pending(older_than=timedelta(seconds=settings.republish_after))
    if lost and await queue.waiting() == 0:
        for job in lost:
            await queue.publish(JobMessage.for_job(job), priority=job.priority)
            await store.heartbeat_pending(job.id)
            log.warning(
                "job %s: waited %s s with an empty queue; published again",
                job.id,
                int(settings.republish_after),
            )


async def recovery_loop(settings: Settings, backends: Backends) -> None:
    while True:
        try:
            await recover_once(settings, backends)
        except BackendUnavailable as exc:
            log.info("recovery pass skipped: %s", exc)
        except Exception:
            log.exception("recovery pass failed")
        await asyncio.sleep(settings.outbox_interval)


async def requeue_after_restart(store: JobStore, *, max_attempts: int) -> None:
    """Embedded mode: the in-process queue died with the last process, so every job that was
    queued or running is queued again (running ones resume from their checkpoints), unless it
    already had `max_attempts` attempts: a file that crashes the process must not crash it
    again on every restart."""
    from smap_stt.jobs import JobStatus

    for job in await store.list(status=JobStatus.PROCESSING, limit=10_000):
        if job.attempts >= max_attempts:
            reason = (
                f"gave up after {job.attempts} attempts: the last one stopped without "
                "finishing (the process died)"
            )
            if await store.fail(job.id, reason, attempt=job.attempts):
                log.error("job %s failed: %s", job.id, reason)
            continue
        await store.release(job, error="resumed after a restart")
    for job in await store.list(status=JobStatus.PENDING, limit=10_000):
        await store.mark_unpublished(job.id)


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def run_worker(settings: Settings, backends: Backends, engine: Engine) -> None:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    await backends.open()
    worker = Worker(settings, backends, engine)
    try:
        while not stop.is_set():
            try:
                await worker.start()
                break
            except BackendUnavailable as exc:
                log.warning("cannot start consuming (%s); trying again in 5 s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 5)
        await stop.wait()
        log.info("signal received: stopping")
        await worker.stop()
    finally:
        await backends.close()
