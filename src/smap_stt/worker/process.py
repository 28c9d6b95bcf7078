"""One job, end to end: claim, fetch audio, transcribe with checkpoints and heartbeats, store the
result. `handle_delivery` is the worker's only error boundary: it alone decides whether a
message is acked, retried later, dead-lettered or handed back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from smap_stt.backends import Backends
from smap_stt.config import Settings
from smap_stt.errors import (
    AudioError,
    BackendUnavailable,
    BlobNotFound,
    JobCancelled,
    JobNotFound,
    ModelCorrupt,
    ModelNotFound,
)
from smap_stt.jobs import Job, JobStatus
from smap_stt.logs import current_job
from smap_stt.queue.base import Delivery, decode_message
from smap_stt.store.base import JobStore
from smap_stt.stt import registry
from smap_stt.stt.engine import Engine
from smap_stt.stt.results import Chunk, Transcript

log = logging.getLogger(__name__)

PERMANENT_ERRORS = (AudioError, ModelNotFound, ModelCorrupt, BlobNotFound)
HEARTBEAT_TICK = 0.5
HEARTBEAT_EVERY = 3.0
CHECKPOINT_TIMEOUT = 60.0
HAND_BACK_PAUSE = 2.0  # before handing a message back while the store is down: no busy loop


@dataclass
class WorkerContext:
    settings: Settings
    backends: Backends
    engine: Engine
    worker_id: str


def result_key(job_id: str) -> str:
    return f"results/{job_id}.json"


async def handle_delivery(ctx: WorkerContext, delivery: Delivery) -> None:
    try:
        message = decode_message(delivery.body)
    except ValueError as exc:
        log.warning("dead-lettered a malformed message: %s", exc)
        await delivery.dead_letter(str(exc))
        return
    token = current_job.set(message.job_id)
    try:
        await _handle(ctx, delivery, message.job_id)
    except JobNotFound:  # deleted between reading and claiming it
        log.warning("dead-lettered a message for a job that was deleted")
        await delivery.dead_letter("unknown job")
    except BackendUnavailable as exc:
        # The store failed between reading the job and starting (or settling) an attempt.
        log.warning("store unavailable (%s); handing the message back", exc)
        await asyncio.sleep(HAND_BACK_PAUSE)
        await _hand_back_message(delivery)
    except Exception as exc:
        # A bug or a corrupt record: never leave the message unsettled (its consumer slot would
        # be lost for good) and never retry it blindly; the job ends FAILED with the reason.
        log.exception("unexpected error outside an attempt")
        reason = f"unexpected error: {type(exc).__name__}: {exc}"
        try:
            await ctx.backends.store.fail(message.job_id, reason)
        except Exception as store_exc:
            log.warning("could not record the failure (%s)", store_exc)
        await delivery.dead_letter(reason)
    finally:
        current_job.reset(token)


async def _hand_back_message(delivery: Delivery) -> None:
    try:
        await delivery.hand_back()
    except BackendUnavailable as exc:
        log.warning(
            "could not hand the message back (%s); the recovery loop will republish the job", exc
        )


async def _handle(ctx: WorkerContext, delivery: Delivery, job_id: str) -> None:
    store, settings = ctx.backends.store, ctx.settings
    try:
        job = await store.get(job_id)
    except JobNotFound:
        log.warning("dead-lettered a message for an unknown job")
        await delivery.dead_letter("unknown job")
        return

    if job.status.final:
        log.info("ignored a repeated message: the job is already %s", job.status.value)
        await delivery.ack()
        return
    takeover = delivery.redelivered or delivery.retry_of == job.attempts
    if job.status is JobStatus.PROCESSING and not takeover:
        log.info("ignored a duplicate message: attempt %d is running elsewhere", job.attempts)
        await delivery.ack()
        return
    if job.status is JobStatus.PROCESSING and job.attempts >= settings.max_attempts:
        reason = (
            f"gave up after {job.attempts} attempts: the last one stopped without "
            "finishing (its worker died or was killed)"
        )
        await store.fail(job.id, reason, attempt=job.attempts)
        log.error("failed: %s", reason)
        await delivery.dead_letter(reason)
        return

    claimed = await store.claim(job.id, ctx.worker_id, takeover=takeover)
    if claimed is None:
        log.info("ignored a message: another worker claimed the job first")
        await delivery.ack()
        return
    await _run_attempt(ctx, delivery, claimed)


async def _run_attempt(ctx: WorkerContext, delivery: Delivery, job: Job) -> None:
    settings = ctx.settings
    log.info(
        "started attempt %d on %s (%s, language %s, model %s)",
        job.attempts,
        ctx.worker_id,
        job.filename,
        job.language,
        job.model,
    )
    try:
        await asyncio.wait_for(_transcribe_job(ctx, delivery, job), settings.job_timeout)
        await delivery.ack()
    except JobCancelled as exc:
        log.info("stopped: %s", exc)
        await delivery.ack()
    except TimeoutError:
        reason = f"timeout: the job ran longer than JOB_TIMEOUT ({settings.job_timeout} s)"
        await _fail(ctx, delivery, job, reason)
    except PERMANENT_ERRORS as exc:
        await _fail(ctx, delivery, job, str(exc))
    except BackendUnavailable as exc:
        await _retry_or_fail(ctx, delivery, job, str(exc))
    except asyncio.CancelledError:
        # Shutdown past the grace period: hand the job back for another worker.
        log.warning("handed back: the worker is shutting down")
        await asyncio.shield(_hand_back(ctx, delivery, job))
        raise
    except Exception as exc:
        log.exception("unexpected error in attempt %d", job.attempts)
        await _retry_or_fail(ctx, delivery, job, f"unexpected error: {type(exc).__name__}: {exc}")


async def _fail(ctx: WorkerContext, delivery: Delivery, job: Job, reason: str) -> None:
    try:
        changed = await ctx.backends.store.fail(job.id, reason, attempt=job.attempts)
    except BackendUnavailable as exc:
        log.warning("could not record the failure (%s); retrying the message later", exc)
        await _settle_retry(ctx, delivery, job)
        return
    if changed:
        log.error("failed: %s", reason)
    await delivery.dead_letter(reason)


async def _retry_or_fail(ctx: WorkerContext, delivery: Delivery, job: Job, reason: str) -> None:
    settings = ctx.settings
    if job.attempts >= settings.max_attempts:
        await _fail(ctx, delivery, job, f"gave up after {job.attempts} attempts: {reason}")
        return
    delay = settings.retry_delay(job.attempts)
    note = f"attempt {job.attempts} failed: {reason}; retrying in {delay} s"
    log.warning("%s", note)
    # If the store is down, the retried message carries the attempt and takes the job over.
    with contextlib.suppress(BackendUnavailable):
        await ctx.backends.store.release(job, error=note)
    await _settle_retry(ctx, delivery, job)


async def _settle_retry(ctx: WorkerContext, delivery: Delivery, job: Job) -> None:
    try:
        await delivery.retry_later(ctx.settings.retry_delay(job.attempts), attempt=job.attempts)
    except BackendUnavailable as exc:
        log.warning("could not schedule the retry (%s); handing the message back", exc)
        await delivery.hand_back()


async def _hand_back(ctx: WorkerContext, delivery: Delivery, job: Job) -> None:
    try:
        await ctx.backends.store.release(job, error="handed back: its worker shut down")
    except BackendUnavailable as exc:
        log.warning("could not release the job (%s)", exc)
    try:
        await delivery.hand_back()
    except BackendUnavailable as exc:
        log.warning("could not hand the message back (%s); the broker will redeliver it", exc)


class _Control:
    """Bridges the transcription thread and the event loop: progress in, stop requests out,
    checkpoints written from the thread through the loop."""

    def __init__(self, ctx: WorkerContext, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        self._ctx, self._job, self._loop = ctx, job, loop
        self.progress = job.progress
        self._stop_reason: str | None = None
        self._lock = threading.Lock()

    def stop(self, reason: str) -> None:
        with self._lock:
            self._stop_reason = self._stop_reason or reason

    def check(self) -> None:
        if self._stop_reason is not None:
            raise JobCancelled(self._stop_reason)

    def on_progress(self, percent: float) -> None:
        self.check()
        self.progress = max(self.progress, min(percent, 99.9))

    def on_chunk(self, chunk: Chunk) -> None:
        self.check()
        store = self._ctx.backends.store
        future = asyncio.run_coroutine_threadsafe(
            store.save_chunk(self._job.id, chunk.index, chunk.to_dict()), self._loop
        )
        try:
            future.result(timeout=CHECKPOINT_TIMEOUT)
        except TimeoutError:
            # A slow store is worth a retry; a bare TimeoutError would read as JOB_TIMEOUT.
            future.cancel()
            raise BackendUnavailable(
                store.name, f"a checkpoint was not saved within {CHECKPOINT_TIMEOUT:g} s"
            ) from None


async def _heartbeat(ctx: WorkerContext, job: Job, control: _Control, delivery: Delivery) -> None:
    store, settings = ctx.backends.store, ctx.settings
    started = time.monotonic()
    written, last_write = job.progress, 0.0
    early_acked = False
    while True:
        await asyncio.sleep(HEARTBEAT_TICK)
        now = time.monotonic()
        if control.progress != written or now - last_write >= HEARTBEAT_EVERY:
            try:
                alive = await store.heartbeat(job, progress=control.progress)
            except BackendUnavailable as exc:
                log.warning("heartbeat not recorded: %s", exc)
                continue
            if not alive:
                control.stop(await _why_not_holding(store, job.id))
                return
            written, last_write = control.progress, now
        if not early_acked and now - started >= settings.early_ack_after:
            # RabbitMQ takes a message back from a consumer that holds it longer than its
            # consumer timeout; from here on the heartbeats guard the job instead.
            await delivery.ack()
            early_acked = True
            log.info(
                "running for %.0f s: acked its message early; heartbeats guard it now",
                now - started,
            )


async def _why_not_holding(store: JobStore, job_id: str) -> str:
    try:
        current = await store.get(job_id)
    except JobNotFound:
        return "the job was deleted"
    except BackendUnavailable:
        return "the job changed hands"
    if current.status is JobStatus.CANCELLED:
        return "cancelled by request"
    return f"the job is {current.status.value} (attempt {current.attempts})"


async def _transcribe_job(ctx: WorkerContext, delivery: Delivery, job: Job) -> None:
    store, blobs, settings = ctx.backends.store, ctx.backends.blobs, ctx.settings
    started = time.monotonic()
    workdir = settings.temp_dir / f"job-{job.id}-{job.attempts}"
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    control = _Control(ctx, job, asyncio.get_running_loop())
    heartbeat = asyncio.create_task(_heartbeat(ctx, job, control, delivery))
    try:
        audio = workdir / ("audio" + PurePosixPath(job.audio_key).suffix)
        await blobs.get_file(job.audio_key, audio)
        done = [Chunk.from_dict(data) for data in await store.load_chunks(job.id)]
        if done:
            log.info("resuming after %d checkpointed chunk(s)", len(done))
        await registry.ensure_local(
            blobs,
            settings.whisper_models_dir,
            job.model,
            allow_download=settings.whisper_allow_download,
        )
        language = None if job.language == "auto" else job.language
        transcript = await asyncio.to_thread(
            ctx.engine.transcribe,
            audio,
            model=job.model,
            language=language,
            done_chunks=done,
            on_chunk=control.on_chunk,
            on_progress=control.on_progress,
        )
        control.check()
        await _store_result(ctx, job, transcript, time.monotonic() - started)
    finally:
        control.stop("the attempt ended")
        heartbeat.cancel()
        await asyncio.to_thread(shutil.rmtree, workdir, True)


async def _store_result(
    ctx: WorkerContext, job: Job, transcript: Transcript, elapsed: float
) -> None:
    store, blobs = ctx.backends.store, ctx.backends.blobs
    key = result_key(job.id)
    document = {
        "job_id": job.id,
        "filename": job.filename,
        "model": job.model,
        "language": transcript.language,
        "language_probability": transcript.language_probability,
        "duration_seconds": round(transcript.duration, 3),
        "text": transcript.text,
        "segments": [
            {"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text}
            for s in transcript.segments
        ],
    }
    # Off the event loop: hours of audio make megabytes of JSON.
    data = await asyncio.to_thread(_encode, document)
    await blobs.put_bytes(key, data, content_type="application/json")
    completed = await store.complete(
        job,
        transcription=transcript.text,
        result_key=key,
        # What detection found, only when it ran (issue 15); the job's `language` says what
        # was used otherwise.
        detected_language=transcript.language if job.language == "auto" else None,
        duration_seconds=round(transcript.duration, 3),
        processing_time_seconds=round(elapsed, 3),
    )
    if not completed:
        raise JobCancelled("the job was cancelled or taken over before it finished")
    await store.delete_chunks(job.id)
    log.info(
        "completed: %.1f s of audio in %.1f s (%d segments)",
        transcript.duration,
        elapsed,
        len(transcript.segments),
    )


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode()


async def handle_dead_event(ctx: WorkerContext, delivery: Delivery, reason: str) -> None:
    """A message left the work queue for good (rejected, expired, over a limit): make sure its
    job does not stay PENDING forever."""
    try:
        job_id = decode_message(delivery.body).job_id
    except ValueError:
        await delivery.ack()
        return
    token = current_job.set(job_id)
    try:
        if reason == "expired":
            text = (
                f"expired: waited more than {ctx.settings.message_ttl_seconds} s in the "
                "queue without a worker taking it"
            )
        else:
            text = f"message dead-lettered ({reason})"
        if await ctx.backends.store.fail(job_id, text):
            log.error("failed: %s", text)
        await delivery.ack()
    except JobNotFound:
        await delivery.ack()
    except BackendUnavailable as exc:
        log.warning("cannot record a dead message yet (%s)", exc)
        await asyncio.sleep(2)
        await delivery.hand_back()
    finally:
        current_job.reset(token)


def clean_temp(temp_dir: Path) -> None:
    shutil.rmtree(temp_dir, ignore_errors=True)
