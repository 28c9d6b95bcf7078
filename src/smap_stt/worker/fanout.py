"""One long file across many workers (issue 14).

A job whose audio is at least FANOUT_MIN_SECONDS long, on a queue that reaches other processes
(RabbitMQ), is not transcribed by the worker that claimed it alone. That worker, the job's
*coordinator*, cuts the file into chunks of about FANOUT_CHUNK_SECONDS at pauses (the same
cut points every time, `stt.chunks`), stores each chunk's samples as a WAV of its own and
publishes one chunk message per chunk on the chunk queue. Every worker consumes that queue,
the coordinator's own process included; a chunk's transcript is checkpointed in the job store
exactly as a chunk of a local job is. The coordinator keeps the job's attempt (heartbeats,
progress by finished chunks, cancel, JOB_TIMEOUT) and, once every chunk is in, assembles
the transcript and completes the job the usual way, exactly once.

So the job keeps every guarantee it has: a worker killed mid-chunk loses that chunk only
(RabbitMQ redelivers the message); a chunk that fails is retried after RETRY_DELAYS and,
after MAX_ATTEMPTS tries, fails the job with the chunk's reason; a cancelled or deleted job's
chunks are dropped by whoever holds them (they watch the job) and their audio removed; a
chunk transcribed twice (a redelivery, a duplicate publish by the next attempt) overwrites
the same checkpoint with the same text. A coordinator that dies leaves a stale heartbeat: the
job's next attempt plans again, finds the chunks already in, publishes the missing ones.

Here is the work; the error boundary that turns what it raises into a settled message is
`process.handle_chunk`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from smap_stt import metrics
from smap_stt.errors import BackendUnavailable, BlobNotFound, JobCancelled
from smap_stt.jobs import ChunkMessage, Job, JobStatus, chunk_audio_key, chunk_audio_prefix
from smap_stt.queue.base import encode_chunk_message
from smap_stt.stt import bucket_models
from smap_stt.stt.audio import SAMPLE_RATE, probe
from smap_stt.stt.chunks import ChunkAudio, iter_chunks
from smap_stt.stt.results import ChunkTranscript, TranscribeOptions, Transcript
from smap_stt.stt.windows import Window

if TYPE_CHECKING:
    from smap_stt.worker.process import WorkerContext

log = logging.getLogger(__name__)

POLL = 0.25  # seconds between the coordinator's looks at the chunks checkpointed so far
WATCH = 1.0  # seconds between a chunk's looks at its job (cancelled? deleted?)
_SAME = 1e-4  # seconds: chunk bounds closer than this (under 2 samples) are the same


class Control(Protocol):
    """What the coordinator reports to and hears from the job's attempt (process._Control)."""

    def check(self) -> None: ...
    def on_progress(self, percent: float) -> None: ...
    def on_chunks(self, finished: int, expected: int) -> None: ...


def job_options(job: Job) -> TranscribeOptions:
    return TranscribeOptions(
        task=job.task,
        initial_prompt=job.initial_prompt,
        hotwords=job.hotwords,
        beam_size=job.beam_size,
        temperature=job.temperature,
        vad_filter=job.vad_filter,
    )


async def split_duration(ctx: WorkerContext, audio: Path) -> float | None:
    """The file's duration if it is to be split across workers (None: it stays one unit of
    work): long enough, on a queue that reaches
    other workers, and another worker is there to share it (this one consumes chunks too).
    Otherwise the file stays one unit of work: splitting it for this worker alone costs a
    little time and accuracy (an earlier bench j run: 74.6 s against 72.7 s on one core,
    WER +0.005)."""
    queue, minimum = ctx.backends.queue, ctx.settings.fanout_min_seconds
    if minimum <= 0 or not queue.fans_out:
        return None
    limit = ctx.settings.max_audio_duration_seconds
    duration = (await asyncio.to_thread(probe, audio, max_seconds=limit)).duration
    if duration < minimum:
        return None
    consumers = await queue.chunk_consumers()
    return duration if consumers is None or consumers >= 2 else None


# --- the coordinator ---------------------------------------------------------------------


async def transcribe_across_workers(
    ctx: WorkerContext,
    job: Job,
    control: Control,
    audio: Path,
    done: list[ChunkTranscript],
    *,
    duration: float,
) -> Transcript:
    """Plan and publish the chunks `done` does not have yet, wait for all of them, and return
    the whole transcript of the `duration` seconds of `audio`. Raises JobCancelled (through
    `control`) when the attempt must stop."""
    settings = ctx.settings
    finished = {chunk.index: chunk for chunk in done}
    language = None if job.language == "auto" else job.language
    probability: float | None = None
    for chunk in done:  # a resumed job keeps the language its first attempt detected
        if language is None and chunk.segments and chunk.language:
            language, probability = chunk.language, chunk.language_probability
    # Both ends of every finished chunk are kept: with chunks finishing out of order, a chunk
    # after an unfinished one would otherwise start where the new cut does not end.
    fixed = {index: chunk.end for index, chunk in finished.items()}
    for index, chunk in finished.items():
        if index > 0 and index - 1 not in finished:
            fixed[index - 1] = chunk.start

    def cut() -> Iterator[ChunkAudio]:
        return iter_chunks(
            audio,
            chunk_seconds=settings.fanout_chunk_seconds,
            fixed_ends=fixed,
            max_seconds=settings.max_audio_duration_seconds,
            speech=job.vad_filter,
        )

    pieces = cut()
    spans: dict[int, tuple[float, float]] = {}
    published = 0
    # Decoding on a thread, one chunk at a time (only one chunk's samples in memory); each
    # chunk is published as soon as it is cut, so other workers start within a second.
    while (piece := await asyncio.to_thread(_next, pieces)) is not None:
        control.check()
        spans[piece.index] = (piece.start_seconds, piece.end_seconds)
        control.on_chunks(len(finished), len(spans) + 1)
        if piece.index in finished:
            continue
        if language is None:
            language, probability = await asyncio.to_thread(
                ctx.engine.detect_language, piece, model=job.model, vad_filter=job.vad_filter
            )
        await _publish(ctx, job, piece, language or "")
        published += 1
    log.info(
        "split %.0f s of audio into %d chunks for any worker (%d published, %d done before)",
        duration,
        len(spans),
        published,
        len(spans) - published,
    )
    await _wait_for_chunks(ctx, job, control, spans, duration)
    chunks = [
        ChunkTranscript.from_dict(data)
        for data in await ctx.backends.store.load_chunks(job.id)
        if data["index"] in spans
    ]
    stale = stale_chunks(chunks, spans)
    if stale:
        chunks = await _transcribe_again(ctx, job, control, cut(), chunks, stale, language)
    if language is None:  # no speech anywhere
        language = next((chunk.language for chunk in chunks if chunk.language), None)
    return Transcript.from_chunks(
        chunks,
        language=language,
        language_probability=probability if job.language == "auto" else None,
        duration=duration,
    )


def stale_chunks(chunks: list[ChunkTranscript], spans: dict[int, tuple[float, float]]) -> set[int]:
    """Indices of checkpointed chunks whose bounds are not this plan's: transcribed from a
    message of an earlier attempt that cut the file elsewhere (another release, other
    settings, or VAD numbers that differ between machines)."""
    return {
        chunk.index
        for chunk in chunks
        if abs(chunk.start - spans[chunk.index][0]) > _SAME
        or abs(chunk.end - spans[chunk.index][1]) > _SAME
    }


async def _transcribe_again(
    ctx: WorkerContext,
    job: Job,
    control: Control,
    pieces: Iterator[ChunkAudio],
    chunks: list[ChunkTranscript],
    stale: set[int],
    language: str | None,
) -> list[ChunkTranscript]:
    """The `stale` chunks transcribed here, from `pieces` (the file cut again the same way),
    and checkpointed over the stale ones; returns `chunks` with them replaced. Rare (a
    coordinator that died while its chunks were queued), so the coordinator does it alone."""
    log.warning(
        "chunks %s were transcribed for other cut points (an earlier attempt's messages); "
        "transcribing them again",
        ", ".join(str(index) for index in sorted(stale)),
    )
    redone: dict[int, ChunkTranscript] = {}
    while (piece := await asyncio.to_thread(_next, pieces)) is not None:
        if piece.index not in stale:
            continue
        control.check()
        redone[piece.index] = chunk = await asyncio.to_thread(
            ctx.engine.transcribe_chunk,
            piece,
            model=job.model,
            language=language or "en",
            options=job_options(job),
        )
        await ctx.backends.store.save_chunk(job.id, chunk.index, chunk.to_dict())
    return [redone.get(chunk.index, chunk) for chunk in chunks]


def _next(pieces: Iterator[ChunkAudio]) -> ChunkAudio | None:
    return next(pieces, None)


async def _publish(ctx: WorkerContext, job: Job, piece: ChunkAudio, language: str) -> None:
    key = chunk_audio_key(job.id, piece.index)
    data = await asyncio.to_thread(_wav_bytes, piece.audio)
    await ctx.backends.blobs.put_bytes(key, data, content_type="audio/wav")
    message = ChunkMessage(
        job_id=job.id,
        index=piece.index,
        start=piece.start,
        end=piece.end,
        language=language,
        audio_key=key,
        windows=tuple(tuple(window.regions) for window in piece.windows or ()),
    )
    await ctx.backends.queue.publish_chunk(
        encode_chunk_message(message), priority=job.priority, message_id=f"{job.id}:{piece.index}"
    )


async def _wait_for_chunks(
    ctx: WorkerContext,
    job: Job,
    control: Control,
    spans: dict[int, tuple[float, float]],
    duration: float,
) -> None:
    """Until every chunk in `spans` is checkpointed; progress is the audio of finished chunks."""
    store = ctx.backends.store
    while True:
        control.check()
        try:
            have = set(await store.chunk_indices(job.id)) & spans.keys()
        except BackendUnavailable as exc:  # the heartbeat decides whether the attempt lives
            log.warning("could not count the finished chunks: %s", exc)
            await asyncio.sleep(1)
            continue
        seconds = sum(spans[index][1] - spans[index][0] for index in have)
        control.on_chunks(len(have), len(spans))
        control.on_progress(100.0 * seconds / duration if duration > 0 else 0.0)
        if len(have) == len(spans):
            return
        await asyncio.sleep(POLL)


async def discard_chunk_audio(ctx: WorkerContext, job_id: str) -> None:
    """The chunk audio of a job that is final (completed, failed, cancelled or deleted)."""
    try:
        await ctx.backends.blobs.delete_prefix(chunk_audio_prefix(job_id))
    except BackendUnavailable as exc:  # retention and delete remove them later
        log.warning("could not remove the chunk audio: %s", exc)


# --- a chunk, on any worker ----------------------------------------------------------------


async def run_chunk(ctx: WorkerContext, message: ChunkMessage) -> None:
    """Transcribe one chunk and checkpoint it. Returns quietly when there is nothing to do (the
    job is no longer running, the chunk is already in, its audio is gone with its job);
    raises what stopped the work otherwise (process.handle_chunk settles the message)."""
    store, blobs = ctx.backends.store, ctx.backends.blobs
    job = await store.get(message.job_id)
    where = f"chunk {message.index} ({_clock(message.start)}–{_clock(message.end)})"
    if job.status is not JobStatus.PROCESSING:
        log.info("dropped %s: the job is %s", where, job.status.value)
        metrics.CHUNKS.labels(outcome="dropped").inc()
        return
    if message.index in await store.chunk_indices(job.id):
        log.info("dropped %s: already transcribed", where)
        metrics.CHUNKS.labels(outcome="dropped").inc()
        return
    try:
        data = await blobs.get_bytes(message.audio_key)
    except BlobNotFound:
        log.warning("dropped %s: its audio is gone (the job ended meanwhile?)", where)
        metrics.CHUNKS.labels(outcome="dropped").inc()
        return
    samples = _wav_samples(data)
    # The windows found where the chunk was cut, unless the audio stored under its key is not
    # the audio they were found in (a later attempt stored its own cut there): then the
    # engine looks for the speech itself.
    fits = message.windows and len(samples) == message.end - message.start
    piece = ChunkAudio(
        index=message.index,
        start=message.start,
        audio=samples,
        windows=[Window.of(samples, regions) for regions in message.windows] if fits else None,
    )
    await bucket_models.ensure_local(
        blobs,
        ctx.settings.whisper_models_dir,
        job.model,
        allow_download=ctx.settings.whisper_allow_download,
    )
    log.info("transcribing %s", where)
    started = time.monotonic()
    stop = threading.Event()
    watcher = asyncio.create_task(_watch(ctx, job, stop))
    try:
        chunk = await asyncio.to_thread(
            ctx.engine.transcribe_chunk,
            piece,
            model=job.model,
            language=message.language or "en",
            options=job_options(job),
            stop=stop,
        )
    except JobCancelled:
        log.info("stopped %s: the job is no longer running", where)
        metrics.CHUNKS.labels(outcome="stopped").inc()
        return
    finally:
        stop.set()
        watcher.cancel()
    await store.save_chunk(job.id, chunk.index, chunk.to_dict())
    elapsed = time.monotonic() - started
    metrics.CHUNKS.labels(outcome="transcribed").inc()
    metrics.CHUNK_SECONDS.observe(elapsed)
    log.info("%s transcribed in %.1f s", where, elapsed)


async def _watch(ctx: WorkerContext, job: Job, stop: threading.Event) -> None:
    """Set `stop` once the job is no longer PROCESSING (cancelled, deleted, failed). A job
    taken over by a new attempt still wants this chunk: its cut points are the same."""
    while not stop.is_set():
        await asyncio.sleep(WATCH)
        try:
            current = await ctx.backends.store.get(job.id)
        except BackendUnavailable:
            continue  # the store is down: keep decoding, the save will tell
        except Exception:  # deleted (JobNotFound) or unreadable: nobody waits for this chunk
            stop.set()
            return
        if current.status is not JobStatus.PROCESSING:
            stop.set()


def _clock(sample: int) -> str:
    seconds = sample / SAMPLE_RATE
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def _wav_bytes(samples: np.ndarray) -> bytes:
    """16 kHz mono 16-bit PCM: half the bytes of float32, below Whisper's hearing."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def _wav_samples(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data), "rb") as wav:
        if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, SAMPLE_RATE):
            raise ValueError("chunk audio is not 16 kHz mono 16-bit PCM")
        frames = wav.readframes(wav.getnframes())
    return np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
