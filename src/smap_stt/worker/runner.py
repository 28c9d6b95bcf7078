"""The worker process: consume job messages, run them, and stop gracefully on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from smap_stt import metrics, recovery
from smap_stt.backends import Backends
from smap_stt.config import Settings
from smap_stt.errors import BackendUnavailable
from smap_stt.queue.base import Delivery
from smap_stt.stt import bucket_models
from smap_stt.stt.engine import Engine
from smap_stt.worker.process import (
    WorkerContext,
    handle_chunk,
    handle_dead_event,
    handle_delivery,
)

log = logging.getLogger(__name__)


def default_worker_id() -> str:
    return recovery.holder_id()


class Worker:
    """Consumes job messages (and dead events) and runs them; the recovery sweeps are run by
    whoever owns the process (`run_worker`, or the app's lifespan in `serve`)."""

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

    async def start(self) -> None:
        """Load the default model, then start consuming."""
        settings = self.settings
        # The default model may live in the blob store only (pushed, not installed here).
        await bucket_models.ensure_local(
            self.backends.blobs,
            settings.whisper_models_dir,
            settings.whisper_model,
            allow_download=settings.whisper_allow_download,
        )
        loading = time.monotonic()
        await asyncio.to_thread(self.ctx.engine.load, settings.whisper_model)
        metrics.MODEL_LOAD_SECONDS.labels(model=settings.whisper_model).observe(
            time.monotonic() - loading
        )
        metrics.WORKER_SLOTS.set(settings.max_concurrent_jobs)
        queue = self.backends.queue
        await queue.consume(self._track(handle_delivery), prefetch=settings.max_concurrent_jobs)
        # Chunks of files split across workers (worker/fanout.py): one per decoder at most.
        decoders = settings.max_concurrent_jobs * settings.threads_per_call
        await queue.consume_chunks(self._track(handle_chunk), prefetch=decoders)
        await queue.consume_dead_events(self._track(handle_dead_event))
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

    async def stop(self) -> None:
        """Stop taking jobs; let running ones finish within the grace period, then hand the
        rest back to the queue."""
        await self.backends.queue.stop_consuming()
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


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def run_worker(settings: Settings, backends: Backends, engine: Engine) -> None:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    await backends.open()
    worker = Worker(settings, backends, engine)
    sweeps = asyncio.create_task(recovery.run_sweeps(settings, backends))
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
        sweeps.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeps
        await backends.close()
