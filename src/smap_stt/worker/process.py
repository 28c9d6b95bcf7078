"""One job, end to end: claim, fetch audio, transcribe with checkpoints and heartbeats, store the
result.

Error boundaries, each in one place:
- `_attempt` turns whatever stopped an attempt into an `Outcome` (done, retry later, dead-letter
  with a reason, hand back); the transcription code below it raises and never settles;
- `handle_delivery` and `handle_dead_event` are the message handlers: they catch what escapes
  before an attempt starts (store down, job deleted, a bug) and log an unexpected error once;
  `handle_chunk` is the one for a chunk of a file split across workers (`fanout`);
- `settle` is the only code that settles a delivery, and applies the one give-up rule
  (`jobs.give_up_reason`) that the recovery sweeps share. The heartbeat's early ack is the one
  settle call outside it: a long job lets go of its message before RabbitMQ's consumer timeout
  (settling again later is a no-op).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

from smap_stt import metrics
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
from smap_stt.jobs import Job, JobStatus, give_up_reason, result_key
from smap_stt.logs import current_job
from smap_stt.queue.base import Delivery, decode_chunk_message, decode_message
from smap_stt.retention import process_dir
from smap_stt.store.base import JobStore
from smap_stt.stt import bucket_models
from smap_stt.stt.engine import Engine
from smap_stt.stt.results import ChunkTranscript, Transcript
from smap_stt.worker import fanout

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


# --- outcomes and the one place that settles them -------------------------------------------


class Action(StrEnum):
    DONE = "done"
    RETRY = "retry"
    RETRY_MESSAGE = "retry the message"
    DEAD_LETTER = "dead-letter"
    HAND_BACK = "hand back"


@dataclass(frozen=True)
class Outcome:
    """What to do with a delivery once its handling ends."""

    action: Action
    reason: str = ""
    job: Job | None = None
    """The attempt this outcome ends, when one was claimed (released, retried or failed)."""
    fail_job_id: str | None = None
    """DEAD_LETTER without an attempt: the job to mark FAILED first (None: no job to fail)."""
    pause: float = 0.0
    """HAND_BACK: seconds to wait first, so a store outage does not become a busy loop."""
    tries: int = 0
    """RETRY_MESSAGE: how many times this message has been tried, this one included."""

    @classmethod
    def done(cls) -> Outcome:
        """Ack: the job finished, or the message needs no work (duplicate, already final)."""
        return cls(Action.DONE)

    @classmethod
    def retry(cls, job: Job, reason: str) -> Outcome:
        """Release the attempt and deliver again after RETRY_DELAYS, unless attempts are spent."""
        return cls(Action.RETRY, reason, job=job)

    @classmethod
    def retry_message(cls, tries: int, reason: str, *, fail_job_id: str) -> Outcome:
        """A message that is not a job attempt (a chunk of a fanned-out file): deliver it again
        after RETRY_DELAYS; after MAX_ATTEMPTS tries, dead-letter it and fail `fail_job_id`."""
        return cls(Action.RETRY_MESSAGE, reason, fail_job_id=fail_job_id, tries=tries)

    @classmethod
    def dead_letter(
        cls, reason: str, *, job: Job | None = None, fail_job_id: str | None = None
    ) -> Outcome:
        """Give the message up; the job (the attempt `job`, or `fail_job_id`) ends FAILED."""
        return cls(Action.DEAD_LETTER, reason, job=job, fail_job_id=fail_job_id)

    @classmethod
    def hand_back(cls, reason: str, *, job: Job | None = None, pause: float = 0.0) -> Outcome:
        """Return the message to the queue now (releasing the attempt `job`, if any)."""
        return cls(Action.HAND_BACK, reason, job=job, pause=pause)


async def settle(ctx: WorkerContext, delivery: Delivery, outcome: Outcome) -> None:
    """Carry out `outcome`: the only function that settles a delivery. A store or broker that
    fails here degrades to the next safest settlement, never to an unsettled message."""
    store, settings, job = ctx.backends.store, ctx.settings, outcome.job
    if outcome.action is Action.DONE:
        await delivery.ack()
    elif outcome.action is Action.RETRY:
        assert job is not None
        gave_up = give_up_reason(job, settings.max_attempts, outcome.reason)
        if gave_up is not None:
            await settle(ctx, delivery, Outcome.dead_letter(gave_up, job=job))
            return
        delay = settings.retry_delay(job.attempts)
        metrics.RETRIES.labels(reason=metrics.failure_reason(outcome.reason)).inc()
        note = f"attempt {job.attempts} failed: {outcome.reason}; retrying in {delay} s"
        log.warning("%s", note)
        # If the store is down, the retried message carries the attempt and takes the job over.
        with contextlib.suppress(BackendUnavailable):
            await store.release(job, error=note)
        await _retry_later(ctx, delivery, job)
    elif outcome.action is Action.RETRY_MESSAGE:
        gave_up = give_up_reason(outcome.tries, settings.max_attempts, outcome.reason, what="tries")
        if gave_up is not None:
            await settle(
                ctx, delivery, Outcome.dead_letter(gave_up, fail_job_id=outcome.fail_job_id)
            )
            return
        delay = settings.retry_delay(outcome.tries)
        metrics.RETRIES.labels(reason=metrics.failure_reason(outcome.reason)).inc()
        log.warning("try %d failed: %s; retrying in %d s", outcome.tries, outcome.reason, delay)
        try:
            await delivery.retry_later(delay, attempt=outcome.tries)
        except BackendUnavailable as exc:
            log.warning("could not schedule the retry (%s); handing the message back", exc)
            await settle(ctx, delivery, Outcome.hand_back("the retry could not be scheduled"))
    elif outcome.action is Action.DEAD_LETTER:
        job_id = job.id if job is not None else outcome.fail_job_id
        if job_id is not None:
            try:
                changed = await store.fail(
                    job_id, outcome.reason, attempt=job.attempts if job is not None else None
                )
            except BackendUnavailable as exc:
                if job is not None:
                    log.warning("could not record the failure (%s); retrying the message", exc)
                    await _retry_later(ctx, delivery, job)
                    return
                log.warning("could not record the failure (%s)", exc)
            else:
                if changed:
                    log.error("failed: %s", outcome.reason)
                    metrics.observe_failed(job.model if job else "unknown", outcome.reason)
                await _discard_if_final(ctx, job_id)
        else:
            log.warning("dead-lettered the message: %s", outcome.reason)
        metrics.DEAD_LETTERS.labels(reason=metrics.failure_reason(outcome.reason)).inc()
        await delivery.dead_letter(outcome.reason)
    else:
        await asyncio.sleep(outcome.pause)
        if job is not None:
            try:
                await store.release(job, error=f"handed back: {outcome.reason}")
            except BackendUnavailable as exc:
                log.warning("could not release the job (%s)", exc)
        try:
            await delivery.hand_back()
        except BackendUnavailable as exc:
            log.warning(
                "could not hand the message back (%s); the broker redelivers it or the "
                "recovery sweeps republish the job",
                exc,
            )
        else:
            log.warning("handed back: %s", outcome.reason)


async def _retry_later(ctx: WorkerContext, delivery: Delivery, job: Job) -> None:
    try:
        await delivery.retry_later(ctx.settings.retry_delay(job.attempts), attempt=job.attempts)
    except BackendUnavailable as exc:
        log.warning("could not schedule the retry (%s); handing the message back", exc)
        await settle(ctx, delivery, Outcome.hand_back("the retry could not be scheduled"))


# --- the message handlers (error boundaries) -------------------------------------------------


async def handle_delivery(ctx: WorkerContext, delivery: Delivery) -> None:
    """Handle one job message; settles it exactly once, whatever happens."""
    try:
        message = decode_message(delivery.body)
    except ValueError as exc:
        await settle(ctx, delivery, Outcome.dead_letter(f"malformed message: {exc}"))
        return
    token = current_job.set(message.job_id)
    try:
        try:
            outcome = await _decide(ctx, delivery, message.job_id)
        except JobNotFound:  # unknown, or deleted between reading and claiming it
            outcome = Outcome.dead_letter("unknown job (deleted?)")
        except BackendUnavailable as exc:
            # The store failed between reading the job and starting an attempt.
            outcome = Outcome.hand_back(f"store unavailable ({exc})", pause=HAND_BACK_PAUSE)
        except Exception as exc:
            # A bug or a corrupt record: never leave the message unsettled (its consumer slot
            # would be lost for good) and never retry it blindly; the job ends FAILED.
            log.exception("unexpected error before an attempt")
            outcome = Outcome.dead_letter(_unexpected(exc), fail_job_id=message.job_id)
        await settle(ctx, delivery, outcome)
    finally:
        current_job.reset(token)


async def _decide(ctx: WorkerContext, delivery: Delivery, job_id: str) -> Outcome:
    store, settings = ctx.backends.store, ctx.settings
    job = await store.get(job_id)
    if job.status.final:
        log.info("ignored a repeated message: the job is already %s", job.status.value)
        return Outcome.done()
    takeover = delivery.redelivered or delivery.retry_of == job.attempts
    if job.status is JobStatus.PROCESSING and not takeover:
        log.info("ignored a duplicate message: attempt %d is running elsewhere", job.attempts)
        return Outcome.done()
    if job.status is JobStatus.PROCESSING:
        why = "the last one stopped without finishing (its worker died or was killed)"
        gave_up = give_up_reason(job, settings.max_attempts, why)
        if gave_up is not None:
            return Outcome.dead_letter(gave_up, job=job)
    claimed = await store.claim(job.id, ctx.worker_id, takeover=takeover)
    if claimed is None:
        log.info("ignored a message: another worker claimed the job first")
        return Outcome.done()
    return await _attempt(ctx, delivery, claimed)


async def _attempt(ctx: WorkerContext, delivery: Delivery, job: Job) -> Outcome:
    """Run one attempt and say how it ended; raises only CancelledError (after handing the
    job back: the worker is shutting down past its grace period)."""
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
    except JobCancelled as exc:
        log.info("stopped: %s", exc)
        await _discard_if_final(ctx, job.id)
    except TimeoutError:
        reason = f"timeout: the job ran longer than JOB_TIMEOUT ({settings.job_timeout} s)"
        return Outcome.dead_letter(reason, job=job)
    except PERMANENT_ERRORS as exc:
        return Outcome.dead_letter(str(exc), job=job)
    except BackendUnavailable as exc:
        return Outcome.retry(job, str(exc))
    except asyncio.CancelledError:
        outcome = Outcome.hand_back("the worker is shutting down", job=job)
        await asyncio.shield(settle(ctx, delivery, outcome))
        raise
    except Exception as exc:
        log.exception("unexpected error in attempt %d", job.attempts)
        return Outcome.retry(job, _unexpected(exc))
    return Outcome.done()


def _unexpected(exc: Exception) -> str:
    """What the job's error message says of a bug: its kind only. The exception's own text
    can carry paths and library internals; the worker's log has it, with the traceback."""
    return f"unexpected error: an internal {type(exc).__name__} (the worker's log has the details)"


async def _discard_if_final(ctx: WorkerContext, job_id: str) -> None:
    """Issue 12: a job that ended without this attempt's transcript (cancelled, failed, timed
    out or deleted meanwhile) keeps no transcript and no checkpoints, which this attempt may
    have written just before it lost the job. Only once the job is final (or gone): a job
    handed to another attempt, or COMPLETED by one, keeps its files."""
    store = ctx.backends.store
    try:
        try:
            current: Job | None = await store.get(job_id)
        except JobNotFound:
            current = None
        if current is not None and (
            current.status is JobStatus.COMPLETED or not current.status.final
        ):
            return
        await ctx.backends.blobs.delete(result_key(job_id))
        await store.delete_chunks(job_id)
        await fanout.discard_chunk_audio(ctx, job_id)
    except BackendUnavailable as exc:  # retention removes them later; the job state is right
        log.warning("could not remove the files of the ended job: %s", exc)


async def handle_chunk(ctx: WorkerContext, delivery: Delivery) -> None:
    """Handle one chunk message of a file split across workers; settles it exactly once."""
    try:
        message = decode_chunk_message(delivery.body)
    except ValueError as exc:
        await settle(ctx, delivery, Outcome.dead_letter(f"malformed chunk message: {exc}"))
        return
    token = current_job.set(message.job_id)
    tries = (delivery.retry_of or 0) + 1
    where = f"chunk {message.index}"
    try:
        try:
            await fanout.run_chunk(ctx, message)
            outcome = Outcome.done()
        except JobNotFound:  # deleted: nobody waits for this chunk
            outcome = Outcome.done()
        except asyncio.CancelledError:  # shutting down past the grace period
            await asyncio.shield(settle(ctx, delivery, Outcome.hand_back("shutting down")))
            raise
        except PERMANENT_ERRORS as exc:
            outcome = Outcome.dead_letter(f"{where}: {exc}", fail_job_id=message.job_id)
        except BackendUnavailable as exc:
            outcome = Outcome.retry_message(tries, f"{where}: {exc}", fail_job_id=message.job_id)
        except Exception as exc:
            log.exception("unexpected error in %s", where)
            reason = f"{where}: {_unexpected(exc)}"
            outcome = Outcome.retry_message(tries, reason, fail_job_id=message.job_id)
        await settle(ctx, delivery, outcome)
    finally:
        current_job.reset(token)


async def handle_dead_event(ctx: WorkerContext, delivery: Delivery) -> None:
    """A message left the work queue for good (rejected, expired, over a limit): make sure its
    job does not stay PENDING forever."""
    try:
        job_id = decode_message(delivery.body).job_id
    except ValueError:
        await settle(ctx, delivery, Outcome.done())
        return
    token = current_job.set(job_id)
    try:
        reason = delivery.death_reason
        if reason == "expired":
            text = (
                f"expired: waited more than {ctx.settings.message_ttl_seconds} s in the "
                "queue without a worker taking it"
            )
        else:
            text = f"message dead-lettered ({reason})"
        try:
            if await ctx.backends.store.fail(job_id, text):
                log.error("failed: %s", text)
                metrics.observe_failed("unknown", text)
            outcome = Outcome.done()
        except JobNotFound:
            outcome = Outcome.done()
        except BackendUnavailable as exc:
            outcome = Outcome.hand_back(
                f"cannot record a dead message yet ({exc})", pause=HAND_BACK_PAUSE
            )
        except Exception:
            # Dropping the event is safe: a job left PENDING is published again by the
            # lost-messages sweep.
            log.exception("unexpected error recording a dead message")
            outcome = Outcome.done()
        await settle(ctx, delivery, outcome)
    finally:
        current_job.reset(token)


# --- one attempt -----------------------------------------------------------------------------


class _Control:
    """Bridges the transcription thread and the event loop: progress in, stop requests out,
    checkpoints written from the thread through the loop."""

    def __init__(self, ctx: WorkerContext, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        self._ctx, self._job, self._loop = ctx, job, loop
        self.progress = job.progress
        self.chunks = (job.chunks_completed, job.chunks_total)
        self._stop_reason: str | None = None
        self._lock = threading.Lock()
        # Tells the engine's decoding threads at once, not at its next progress callback.
        self.stopped = threading.Event()

    def stop(self, reason: str) -> None:
        with self._lock:
            self._stop_reason = self._stop_reason or reason
        self.stopped.set()

    def check(self) -> None:
        if self._stop_reason is not None:
            raise JobCancelled(self._stop_reason)

    def on_progress(self, percent: float) -> None:
        self.check()
        self.progress = max(self.progress, min(percent, 99.9))

    def on_chunks(self, finished: int, expected: int) -> None:
        self.check()
        self.chunks = (finished, expected)

    def on_chunk(self, chunk: ChunkTranscript) -> None:
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
    written, last_write = (job.progress, control.chunks), 0.0
    early_acked = False
    while True:
        await asyncio.sleep(HEARTBEAT_TICK)
        now = time.monotonic()
        if (control.progress, control.chunks) != written or now - last_write >= HEARTBEAT_EVERY:
            try:
                alive = await store.heartbeat(job, progress=control.progress, chunks=control.chunks)
            except BackendUnavailable as exc:
                log.warning("heartbeat not recorded: %s", exc)
                continue
            if not alive:
                control.stop(await _why_not_holding(store, job.id))
                return
            written, last_write = (control.progress, control.chunks), now
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
    workdir = process_dir(settings.temp_dir, "work") / f"job-{job.id}-{job.attempts}"
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    control = _Control(ctx, job, asyncio.get_running_loop())
    heartbeat = asyncio.create_task(_heartbeat(ctx, job, control, delivery))
    metrics.JOBS_IN_FLIGHT.inc()
    try:
        audio = workdir / ("audio" + PurePosixPath(job.audio_key).suffix)
        await blobs.get_file(job.audio_key, audio)
        done = [ChunkTranscript.from_dict(data) for data in await store.load_chunks(job.id)]
        if done:
            log.info("resuming after %d checkpointed chunk(s)", len(done))
        await bucket_models.ensure_local(
            blobs,
            settings.whisper_models_dir,
            job.model,
            allow_download=settings.whisper_allow_download,
        )
        language = None if job.language == "auto" else job.language
        split = await fanout.split_duration(ctx, audio)
        if split is not None:
            transcript = await fanout.transcribe_across_workers(
                ctx, job, control, audio, done, duration=split
            )
        else:
            transcript = await asyncio.to_thread(
                _transcribe,
                ctx.engine,
                control,
                audio,
                model=job.model,
                language=language,
                options=fanout.job_options(job),
                done_chunks=done,
                on_chunk=control.on_chunk,
                on_progress=control.on_progress,
                on_chunks=control.on_chunks,
                stop=control.stopped,
            )
        control.check()
        await _store_result(ctx, job, transcript, time.monotonic() - started)
    finally:
        control.stop("the attempt ended")
        heartbeat.cancel()
        metrics.JOBS_IN_FLIGHT.dec()
        await asyncio.to_thread(shutil.rmtree, workdir, True)


def _transcribe(engine: Engine, control: _Control, *args: Any, **kwargs: Any) -> Transcript:
    try:
        return engine.transcribe(*args, **kwargs)
    except JobCancelled:
        control.check()  # the reason it was stopped (cancelled, deleted, timed out, ...)
        raise


def transcript_document(job: Job, transcript: Transcript) -> dict[str, Any]:
    """The stored transcript every format is rendered from (smap_stt.formats)."""
    segments = []
    for index, segment in enumerate(transcript.segments):
        item: dict[str, Any] = {
            "id": index,
            "start": round(segment.start, 3),
            "end": round(segment.end, 3),
            "text": segment.text,
            "avg_logprob": segment.avg_logprob,
            "no_speech_prob": segment.no_speech_prob,
        }
        if job.word_timestamps:
            item["words"] = [
                {"start": w.start, "end": w.end, "word": w.word, "probability": w.probability}
                for w in segment.words
            ]
        segments.append(item)
    return {
        "job_id": job.id,
        "filename": job.filename,
        "model": job.model,
        "task": job.task,
        "temperature": job.temperature,
        "language": transcript.language,
        "language_probability": transcript.language_probability,
        "duration_seconds": round(transcript.duration, 3),
        "text": transcript.text,
        "segments": segments,
    }


async def _store_result(
    ctx: WorkerContext, job: Job, transcript: Transcript, elapsed: float
) -> None:
    store, blobs = ctx.backends.store, ctx.backends.blobs
    key = result_key(job.id)
    # Off the event loop: hours of audio make megabytes of JSON.
    data = await asyncio.to_thread(_encode, transcript_document(job, transcript))
    await blobs.put_bytes(key, data, content_type="application/json")
    completed = await store.complete(
        job,
        transcription=transcript.text,
        result_key=key,
        # What detection found, only when it ran (issue 15); the job's `language` says what
        # was used otherwise.
        detected_language=transcript.language if job.language == "auto" else None,
        language_probability=transcript.language_probability,
        chunks_total=transcript.chunks,
        chunks_completed=transcript.chunks,
        duration_seconds=round(transcript.duration, 3),
        processing_time_seconds=round(elapsed, 3),
    )
    if not completed:
        raise JobCancelled("the job was cancelled or taken over before it finished")
    await store.delete_chunks(job.id)
    await fanout.discard_chunk_audio(ctx, job.id)
    metrics.observe_finished(job.model, "COMPLETED", transcript.duration, elapsed)
    log.info(
        "completed: %.1f s of audio in %.1f s (%d segments)",
        transcript.duration,
        elapsed,
        len(transcript.segments),
    )


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode()
