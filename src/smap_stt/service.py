"""What the API does with a request, apart from HTTP: validate, store, queue, report.

Routes call these functions and never a backend directly; nothing here imports the HTTP layer
(an `Upload` is what the HTTP layer hands over once the body is on disk)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smap_stt import formats, limits, metrics, webhooks
from smap_stt.backends import Backends
from smap_stt.config import Settings
from smap_stt.errors import (
    AudioError,
    AudioRejected,
    AudioTooShort,
    BackendUnavailable,
    DuplicateIdempotencyKey,
    InvalidRequest,
    JobConflict,
    JobNotFound,
)
from smap_stt.jobs import (
    Job,
    JobMessage,
    JobStatus,
    chunk_audio_prefix,
    new_job_id,
    result_key,
    utcnow,
)
from smap_stt.keys import OPEN, Principal
from smap_stt.stt import audio, bucket_models
from smap_stt.stt.languages import normalize_language
from smap_stt.stt.local_models import available_models, recently_available

log = logging.getLogger(__name__)

WHISPER_1 = "whisper-1"


@dataclass
class Upload:
    """A received upload: the file spooled at `path`, and the form's text fields."""

    filename: str
    path: Path
    size: int
    fields: dict[str, str] = field(default_factory=dict)
    sha256: str = ""  # dialects (issue 10): hex digest of the file as received
    stored: bool = False
    """The file was moved into the blob store: nothing is left at `path` to remove."""
    probed: audio.AudioInfo | AudioError | None = None
    """`probe_upload` of the file, when the HTTP layer ran it as the file arrived."""

    @property
    def suffix(self) -> str:
        suffix = Path(self.filename).suffix.lower()
        return suffix if re.fullmatch(r"\.[a-z0-9]{1,10}", suffix) else ""


@dataclass(frozen=True)
class JobRequest:
    language: str
    model: str
    priority: int
    # --- outputs (issue 9): decoding options, and the model name asked for if an alias mapped it
    requested_model: str | None = None
    task: str = "transcribe"
    word_timestamps: bool = False
    initial_prompt: str | None = None
    hotwords: str | None = None
    beam_size: int | None = None
    vad_filter: bool = True
    temperature: float = 0.0


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
MAX_PROMPT_CHARS = 1000


def _flag(fields: dict[str, str], name: str, default: bool) -> bool:
    raw = fields.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE or raw in _FALSE:
        return raw in _TRUE
    raise InvalidRequest(f"{name} must be true or false, not {fields[name]!r}", param=name)


def _text(fields: dict[str, str], name: str) -> str | None:
    value = fields.get(name, "").strip()
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequest(
            f"{name} is {len(value)} characters long; at most {MAX_PROMPT_CHARS} are allowed",
            param=name,
        )
    return value or None


def parse_options(fields: dict[str, str]) -> dict[str, Any]:
    """The decoding options of an upload form; InvalidRequest (422) saying what is allowed."""
    task = (fields.get("task") or "transcribe").strip().lower()
    if task not in ("transcribe", "translate"):
        raise InvalidRequest(
            f"task must be 'transcribe' or 'translate' (into English), not {fields['task']!r}",
            param="task",
        )
    raw_beam = fields.get("beam_size", "").strip()
    beam_size = None
    if raw_beam:
        beam_size = int(raw_beam) if re.fullmatch(r"[0-9]{1,2}", raw_beam) else -1
        if not 1 <= beam_size <= 10:
            raise InvalidRequest(
                f"beam_size must be a whole number from 1 to 10, not {fields['beam_size']!r}",
                param="beam_size",
            )
    raw_temperature = fields.get("temperature", "").strip()
    temperature = 0.0
    if raw_temperature:
        # Plain decimals only: float() would also take "nan", "inf" and "1e-3".
        if not re.fullmatch(r"[0-9](\.[0-9]{1,6})?|\.[0-9]{1,6}", raw_temperature):
            temperature = -1.0
        else:
            temperature = float(raw_temperature)
        if not 0.0 <= temperature <= 1.0:
            raise InvalidRequest(
                f"temperature must be a number from 0 to 1 (0: beam search, above 0: "
                f"sampling), not {fields['temperature']!r}",
                param="temperature",
            )
    return {
        "task": task,
        "word_timestamps": _flag(fields, "word_timestamps", False),
        "initial_prompt": _text(fields, "initial_prompt"),
        "hotwords": _text(fields, "hotwords"),
        "beam_size": beam_size,
        "vad_filter": _flag(fields, "vad_filter", True),
        "temperature": temperature,
    }


async def parse_request(
    settings: Settings, backends: Backends, fields: dict[str, str], *, principal: Principal = OPEN
) -> JobRequest:
    language = fields.get("language") or settings.default_language
    code = normalize_language(language)
    model = fields.get("model") or settings.whisper_model
    requested_model = None
    # dialects (issue 10): OpenAI's model name means the default model on every door (the
    # web page offers it from /v1/models), unless WHISPER_MODEL_ALIASES maps it elsewhere.
    aliased = {WHISPER_1: settings.whisper_model, **settings.model_aliases}.get(model)
    if aliased is not None and aliased != model:
        requested_model, model = model, aliased
    if not recently_available(settings.whisper_models_dir, model):
        models = await asyncio.to_thread(available_models, settings.whisper_models_dir)
        if model not in models and not settings.whisper_allow_download:
            models = await bucket_models.all_models(backends.blobs, settings.whisper_models_dir)
            if model not in models:
                raise InvalidRequest(
                    f"unknown model {model!r}; available: {', '.join(models)}", param="model"
                )
    raw_priority = fields.get("priority") or "5"
    # ASCII digits only: int() would also take "٣", "1_0" and "+5".
    priority = int(raw_priority) if re.fullmatch(r"[0-9]{1,2}", raw_priority) else -1
    if not 0 <= priority <= 10:
        raise InvalidRequest(
            f"priority must be a whole number from 0 to 10, not {raw_priority!r}", param="priority"
        )
    if priority > principal.max_priority:
        raise InvalidRequest(
            f"priority {priority} is above this API key's maximum of {principal.max_priority}",
            param="priority",
        )
    return JobRequest(
        language=code or "auto",
        model=model,
        priority=priority,
        requested_model=requested_model,
        **parse_options(fields),
    )


def probe_upload(settings: Settings, path: Path) -> audio.AudioInfo | AudioError:
    """The check every upload gets (decodable audio of MIN_AUDIO_SECONDS to
    MAX_AUDIO_DURATION_SECONDS), its AudioError returned, not raised: the HTTP layer runs it as
    the file arrives and `submit` reports it after the form's errors."""
    try:
        return audio.probe(
            path,
            min_seconds=settings.min_audio_seconds,
            max_seconds=settings.max_audio_duration_seconds,
        )
    except AudioError as exc:
        return exc


async def submit(
    settings: Settings,
    backends: Backends,
    upload: Upload,
    *,
    principal: Principal,
    idempotency_key: str | None = None,
) -> Job:
    """Turn a received upload into a queued job owned by `principal`'s key. The audio is
    stored and the job recorded before publishing; if the broker is down the job waits in the
    outbox (published=False) and the recovery loop publishes it once the broker answers.

    `idempotency_key` (already scoped, see `submit_once`) is stored with the job under a
    unique index: a second job with the key raises DuplicateIdempotencyKey."""
    request = await parse_request(settings, backends, upload.fields, principal=principal)
    info = upload.probed
    if info is None:
        info = await asyncio.to_thread(probe_upload, settings, upload.path)
    if isinstance(info, AudioTooShort | AudioRejected):
        raise InvalidRequest(str(info), status_code=422)
    if isinstance(info, AudioError):
        raise InvalidRequest(str(info), status_code=415)

    callback_url = await callback_from(settings, upload.fields)  # issue 11
    job_id = new_job_id()
    # Recorded as published before publishing, to save a write per upload: if publishing
    # fails it is marked unpublished for the outbox; if this process dies in between, the
    # lost-messages sweep republishes PENDING jobs that wait with an empty queue.
    job = Job(
        id=job_id,
        filename=upload.filename,
        language=request.language,
        model=request.model,
        priority=request.priority,
        requested_model=request.requested_model,
        task=request.task,
        word_timestamps=request.word_timestamps,
        initial_prompt=request.initial_prompt,
        hotwords=request.hotwords,
        beam_size=request.beam_size,
        vad_filter=request.vad_filter,
        temperature=request.temperature,
        size_bytes=upload.size,
        audio_key=f"uploads/{job_id}{upload.suffix}",
        published=True,
        # dialects (issue 10): the length known from the probe feeds queue estimates
        duration_seconds=round(info.duration, 3),
        idempotency_key=idempotency_key,
        content_sha256=upload.sha256 or None,
        # operations (issue 11)
        callback_url=callback_url,
        webhook_delivery_id=str(uuid.uuid4()) if callback_url else None,
        owner=principal.key_id,  # security (issue 12)
    )
    if settings.dedup and upload.sha256:
        twin = await _finished_twin(backends, job)
        if twin is not None:
            return await _reuse(backends, job, twin, upload)
    await backends.blobs.put_file(job.audio_key, upload.path, move=True)
    upload.stored = True
    try:
        await backends.store.create(job)
    except BaseException:
        await asyncio.shield(backends.blobs.delete(job.audio_key))
        raise
    try:
        await backends.queue.publish(JobMessage.for_job(job), priority=job.priority)
    except BackendUnavailable as exc:
        log.warning("job %s stored, not yet queued (%s); the outbox will publish it", job.id, exc)
        with contextlib.suppress(BackendUnavailable):  # then the lost-job check republishes it
            await backends.store.mark_unpublished(job.id)
        job.published = False
        metrics.observe_accepted(job.model, job.size_bytes)
        return job
    metrics.observe_accepted(job.model, job.size_bytes)
    log.info(
        "job %s accepted: %s, %.2f MB, language %s, model %s, priority %d",
        job.id,
        job.filename,
        job.size_bytes / 1e6,
        job.language,
        job.model,
        job.priority,
    )
    return job


async def get_job(backends: Backends, job_id: str, *, principal: Principal) -> Job:
    """The job, if `principal` may see it (another key's job is JobNotFound, issue 12)."""
    return await backends.store.get(job_id, owner=principal.owner_filter)


async def list_jobs(
    backends: Backends,
    *,
    principal: Principal,
    status: JobStatus | None = None,
    limit: int = 20,
    offset: int = 0,
) -> tuple[list[Job], int]:
    """A page of the jobs `principal` may see, newest first, and how many there are in all."""
    owner = principal.owner_filter
    jobs, total = await asyncio.gather(
        backends.store.list(status=status, limit=limit, offset=offset, owner=owner),
        backends.store.count(status=status, owner=owner),
    )
    return jobs, total


async def cancel_job(backends: Backends, job_id: str, *, principal: Principal) -> Job:
    return await backends.store.cancel(job_id, owner=principal.owner_filter)


async def callback_from(settings: Settings, fields: dict[str, str]) -> str | None:
    """The upload's `callback_url`, checked (422 when webhooks may not reach it)."""
    url = fields.get("callback_url") or ""
    if not url:
        return None
    if not settings.webhook_secret:
        raise InvalidRequest(
            "callback_url needs WEBHOOK_SECRET to be set on the server, to sign the webhooks"
        )
    return await webhooks.check_callback_url(url, allow_private=settings.webhook_allow_private)


async def load_result(backends: Backends, job: Job) -> dict[str, Any] | None:
    if job.result_key is None:
        return None
    raw = await backends.blobs.get_bytes(job.result_key)
    # Off the event loop: the transcript of hours of audio is megabytes of JSON.
    data: dict[str, Any] = await asyncio.to_thread(json.loads, raw)
    return data


async def result_url(backends: Backends, job: Job) -> str | None:
    """A direct (presigned) URL of a COMPLETED job's transcript, when the blob store has them."""
    if job.result_key is None:
        return None
    return await backends.blobs.presigned_url(job.result_key)


async def result_bytes(
    backends: Backends, job_id: str, *, principal: Principal
) -> tuple[Job, bytes]:
    """The stored transcript document of a COMPLETED job (JobConflict otherwise)."""
    job = await backends.store.get(job_id, owner=principal.owner_filter)
    if job.status is not JobStatus.COMPLETED or job.result_key is None:
        raise JobConflict(f"job {job_id} is {job.status.value}; there is no transcript to download")
    return job, await backends.blobs.get_bytes(job.result_key)


async def render_result(
    backends: Backends,
    job_id: str,
    fmt: str,
    *,
    max_line_width: int | None = None,
    max_line_count: int | None = None,
    highlight_words: bool = False,
    principal: Principal,
) -> tuple[Job, formats.Rendered]:
    """A COMPLETED job's transcript rendered as `fmt` (JobConflict naming the state otherwise)."""
    job = await backends.store.get(job_id, owner=principal.owner_filter)
    if job.status is not JobStatus.COMPLETED or job.result_key is None:
        raise JobConflict(
            f"job {job_id} is {job.status.value}; the {fmt} transcript exists once it is COMPLETED"
        )
    document = await load_result(backends, job)
    assert document is not None
    rendered = await asyncio.to_thread(
        formats.render,
        document,
        fmt,
        max_line_width=max_line_width,
        max_line_count=max_line_count,
        highlight_words=highlight_words,
    )
    return job, rendered


async def audio_size(backends: Backends, job: Job) -> int:
    return await backends.blobs.size(job.audio_key)


async def read_audio(
    backends: Backends, job: Job, offset: int, length: int
) -> AsyncIterator[bytes]:
    """`length` bytes of the job's audio from `offset`, in blocks, for a streamed response."""
    try:
        async for block in backends.blobs.read_range(job.audio_key, offset, length):
            yield block
    except BackendUnavailable as exc:  # the status line is sent: all we can do is stop short
        log.warning("audio %s: storage failed mid-stream (%s)", job.audio_key, exc)


async def delete_job(backends: Backends, job_id: str, *, principal: Principal) -> Job:
    """Delete a final job (one guarded step: of concurrent deletes one wins, the others get
    404) and every file it has: the audio, the transcript (also when the row never recorded
    it: a job cancelled as it finished) and its checkpoints."""
    job = await backends.store.delete(job_id, owner=principal.owner_filter)
    keys = {job.audio_key, job.result_key, result_key(job.id)}
    for key in sorted(key for key in keys if key):
        await backends.blobs.delete(key)
    await backends.blobs.delete_prefix(chunk_audio_prefix(job.id))  # a fanned-out job's
    return job


def public_url(settings: Settings, path: str, request_base: str) -> str:
    """An absolute URL from PUBLIC_BASE_URL; from the request's own base only when
    TRUSTED_HOSTS vouched for its Host header; else the path alone (a client resolves it
    against the URL it called). Never built from an unchecked Host header."""
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/") + path
    if settings.trusted_host_list:
        return request_base.rstrip("/") + path
    return path


async def health(backends: Backends) -> dict[str, str]:
    """Ping every backend at once; each answers 'healthy' or 'unhealthy: why'."""

    async def check(ping: Any) -> str:
        try:
            async with asyncio.timeout(6):
                await ping()
        except TimeoutError:
            return "unhealthy: no answer within 6 s"
        except BackendUnavailable as exc:
            return f"unhealthy: {exc}"
        return "healthy"

    database, queue, storage = await asyncio.gather(
        check(backends.store.ping), check(backends.queue.ping), check(backends.blobs.ping)
    )
    services = {"database": database, "rabbitmq": queue, "storage": storage}
    if backends.store.name == "mongodb":  # the original's health named it so; its clients read it
        services["mongodb"] = database
    return services


def backend_names(backends: Backends) -> dict[str, str]:
    """Which implementation serves each part, for /health."""
    return {
        "database": backends.store.name,
        "rabbitmq": backends.queue.name,
        "storage": backends.blobs.name,
    }


# --- dialects (issue 10): submit once, DEDUP, where a job stands, waiting for a job -----------

# Job fields that change what the transcript says: two jobs agreeing on all of them (and on the
# file's bytes) have the same transcript.
TRANSCRIPT_OPTIONS = (
    "language",
    "model",
    "task",
    "word_timestamps",
    "initial_prompt",
    "hotwords",
    "beam_size",
    "vad_filter",
    "temperature",
)


@dataclass(frozen=True)
class Submission:
    job: Job
    created: bool
    """False: the Idempotency-Key named an existing job, which is returned instead."""


def scoped_key(key: str, owner: str | None = None) -> str:
    """The stored form of an Idempotency-Key: keys are per owner, so two tenants using the same
    key get two jobs. `owner` is the API key id (issue 12); jobs made while the API is open
    share one scope."""
    key = key.strip()
    if not key or len(key) > 255 or not key.isprintable():
        raise InvalidRequest(
            "the Idempotency-Key header must be 1 to 255 printable characters", 400
        )
    return key if owner is None else f"{owner}\x1f{key}"


async def admit_upload(settings: Settings, backends: Backends, principal: Principal) -> None:
    """Before an upload is read: refuse it (429/503) if the key or the service is over a limit
    (issue 12), whichever dialect it comes through."""
    await limits.check_upload_admission(settings, backends.store, principal)


async def submit_once(
    settings: Settings,
    backends: Backends,
    upload: Upload,
    *,
    principal: Principal,
    idempotency_key: str | None = None,
) -> Submission:
    """`submit`, at most once per Idempotency-Key: the same key with the same file (by
    sha256) returns the job made first; with another file it is refused (409). Concurrent
    uploads with one key race on the store's unique index, in any number of API processes:
    one creates the job, the others find it and return it."""
    if idempotency_key is None:
        job = await submit(settings, backends, upload, principal=principal)
        await limits.record_upload(settings, backends.store, principal, job.size_bytes)
        return Submission(job, created=True)
    key = scoped_key(idempotency_key, principal.key_id)
    existing = await backends.store.by_idempotency_key(key)
    if existing is None:
        try:
            job = await submit(settings, backends, upload, principal=principal, idempotency_key=key)
            await limits.record_upload(settings, backends.store, principal, job.size_bytes)
            return Submission(job, created=True)
        except DuplicateIdempotencyKey:
            existing = await backends.store.by_idempotency_key(key)
            if existing is None:  # made and deleted within the race: rare, say so
                raise JobConflict(
                    "another upload with this Idempotency-Key was being processed; try again"
                ) from None
    if existing.content_sha256 != upload.sha256:
        raise JobConflict(
            f"the Idempotency-Key {idempotency_key!r} was already used for another file "
            f"(job {existing.id}); send a new key with a new file"
        )
    log.info("job %s returned again for its Idempotency-Key", existing.id)
    return Submission(existing, created=False)


async def _finished_twin(backends: Backends, job: Job) -> Job | None:
    """A COMPLETED job of the same owner with the same file bytes and the same transcript
    options, if any. Never another tenant's: an instant result would tell that someone else
    uploaded this very file (issue 12)."""
    assert job.content_sha256 is not None
    for other in await backends.store.by_content(job.content_sha256):
        if other.status is not JobStatus.COMPLETED or other.result_key is None:
            continue
        if other.owner != job.owner:
            continue
        if all(getattr(other, name) == getattr(job, name) for name in TRANSCRIPT_OPTIONS):
            return other
    return None


async def _reuse(backends: Backends, job: Job, twin: Job, upload: Upload) -> Job:
    """DEDUP: `job` becomes COMPLETED at once with a copy of `twin`'s transcript. A copy, not a
    reference: each job owns its files, so deleting one never breaks the other."""
    assert twin.result_key is not None
    document = await load_result(backends, twin)
    if document is None:
        raise JobNotFound(f"the transcript of job {twin.id} is missing")
    document = {**document, "job_id": job.id, "filename": job.filename}
    now = utcnow()
    job.status = JobStatus.COMPLETED
    job.progress = 100.0
    job.transcription = twin.transcription
    job.detected_language = twin.detected_language
    job.duration_seconds = twin.duration_seconds
    job.processing_time_seconds = 0.0
    job.result_key = result_key(job.id)
    job.deduplicated_from = twin.id
    job.started_at = job.completed_at = now
    if job.callback_url:  # final at once: its webhook is due now (issue 11)
        job.webhook_next_at = now
    job.language_probability = twin.language_probability
    job.chunks_total = job.chunks_completed = twin.chunks_total
    data = await asyncio.to_thread(lambda: json.dumps(document, ensure_ascii=False).encode())
    await backends.blobs.put_file(job.audio_key, upload.path, move=True)
    upload.stored = True
    try:
        await backends.blobs.put_bytes(job.result_key, data, content_type="application/json")
        await backends.store.create(job)
    except BaseException:
        await asyncio.shield(_delete_blobs(backends, job.audio_key, job.result_key))
        raise
    log.info("job %s completed at once: same file and options as job %s", job.id, twin.id)
    return job


async def _delete_blobs(backends: Backends, *keys: str) -> None:
    for key in keys:
        with contextlib.suppress(BackendUnavailable):
            await backends.blobs.delete(key)


@dataclass(frozen=True)
class Standing:
    """Where a job stands: estimates, not promises (documented as such in docs/API.md)."""

    queue_position: int | None
    eta_seconds: float | None


async def standing(settings: Settings, backends: Backends, job: Job) -> Standing:
    """`queue_position` (PENDING only): jobs that run before this one: higher priority, or
    the same priority and older. `eta_seconds` (PENDING and PROCESSING): seconds until this
    job is done, from this deployment's measured speed (processing seconds per audio second
    over the last ETA_SAMPLE_JOBS completed jobs) × the audio still to transcribe before and
    in it, divided by the jobs running at once (while jobs wait, every consumer slot is busy,
    so the PROCESSING count is the parallelism). None when nothing was measured yet."""
    if job.status not in (JobStatus.PENDING, JobStatus.PROCESSING):
        return Standing(None, None)
    samples = await backends.store.speed_samples(settings.eta_sample_jobs)
    speed = sum(p for p, _ in samples) / sum(d for _, d in samples) if samples else None
    own_left = (job.duration_seconds or 0.0) * (100.0 - job.progress) / 100.0
    if job.status is JobStatus.PROCESSING:
        eta = None if speed is None else own_left * speed
        return Standing(None, None if eta is None else round(eta, 1))
    ahead, ahead_seconds = await backends.store.queue_ahead(job)
    running, running_seconds = await backends.store.running()
    if speed is None:
        return Standing(ahead, None)
    parallel = max(1, running)
    eta = (ahead_seconds + running_seconds) * speed / parallel + own_left * speed
    return Standing(ahead, round(eta, 1))


class WaitTimeout(Exception):
    """The job did not reach a final state within the wait; it goes on in the queue."""

    def __init__(self, job: Job, waited: float) -> None:
        super().__init__(
            f"job {job.id} is still {job.status.value} after {waited:g} s; it goes on in the "
            f"queue: poll /api/v1/tasks/{job.id}/status and fetch /api/v1/tasks/{job.id}/result"
        )
        self.job = job


async def wait_for(backends: Backends, job: Job, *, seconds: float) -> Job:
    """Poll the store until the job is final (50 ms growing to 250 ms: a synchronous client
    learns of the end within a quarter second, at four reads a second per waiting request),
    never blocking the loop. Raises WaitTimeout past `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    delay = 0.05
    while not job.status.final:
        left = deadline - loop.time()
        if left <= 0:
            raise WaitTimeout(job, seconds)
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 1.5, 0.25)
        job = await backends.store.get(job.id)
    return job


async def model_catalog(settings: Settings, backends: Backends) -> dict[str, int]:
    """Every model a job may ask for (local, bundled or in the bucket), with the Unix time its
    directory was made (0 when it is not on this machine): what /v1/models lists."""
    names = await bucket_models.all_models(backends.blobs, settings.whisper_models_dir)

    def created(name: str) -> int:
        try:
            return int(os.stat(settings.whisper_models_dir / name).st_mtime)
        except OSError:
            return 0

    return await asyncio.to_thread(lambda: {name: created(name) for name in names})
