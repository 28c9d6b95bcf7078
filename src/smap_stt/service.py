"""What the API does with a request, apart from HTTP: validate, store, queue, report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from smap_stt.api.upload import Upload
from smap_stt.backends import Backends
from smap_stt.config import Settings
from smap_stt.errors import AudioError, AudioTooShort, BackendUnavailable, InvalidRequest
from smap_stt.jobs import Job, JobMessage, new_job_id
from smap_stt.stt import audio, registry
from smap_stt.stt.languages import normalize_language
from smap_stt.stt.models import available_models

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobRequest:
    language: str
    model: str
    priority: int


async def parse_request(
    settings: Settings, backends: Backends, fields: dict[str, str]
) -> JobRequest:
    language = fields.get("language") or settings.default_language
    code = normalize_language(language)
    model = fields.get("model") or settings.whisper_model
    models = await asyncio.to_thread(available_models, settings.whisper_models_dir)
    if model not in models and not settings.whisper_allow_download:
        models = await registry.all_models(backends.blobs, settings.whisper_models_dir)
        if model not in models:
            raise InvalidRequest(f"unknown model {model!r}; available: {', '.join(models)}")
    raw_priority = fields.get("priority") or "5"
    # ASCII digits only: int() would also take "٣", "1_0" and "+5".
    priority = int(raw_priority) if re.fullmatch(r"[0-9]{1,2}", raw_priority) else -1
    if not 0 <= priority <= 10:
        raise InvalidRequest(f"priority must be a whole number from 0 to 10, not {raw_priority!r}")
    return JobRequest(language=code or "auto", model=model, priority=priority)


async def submit(settings: Settings, backends: Backends, upload: Upload) -> Job:
    """Turn a received upload into a queued job. The audio is stored and the job recorded
    before publishing; if the broker is down the job waits in the outbox (published=False)
    and the recovery loop publishes it once the broker answers."""
    request = await parse_request(settings, backends, upload.fields)
    try:
        await asyncio.to_thread(audio.probe, upload.path, min_seconds=settings.min_audio_seconds)
    except AudioTooShort as exc:
        raise InvalidRequest(str(exc), status_code=422) from None
    except AudioError as exc:
        raise InvalidRequest(str(exc), status_code=415) from None

    job_id = new_job_id()
    # Recorded as published before publishing, to save a write per upload: if publishing
    # fails it is marked unpublished for the outbox; if this process dies in between, the
    # recovery loop republishes PENDING jobs that wait with an empty queue.
    job = Job(
        id=job_id,
        filename=upload.filename,
        language=request.language,
        model=request.model,
        priority=request.priority,
        size_bytes=upload.size,
        audio_key=f"uploads/{job_id}{upload.suffix}",
        published=True,
    )
    await backends.blobs.put_file(job.audio_key, upload.path, move=True)
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
        return job
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


async def load_result(backends: Backends, job: Job) -> dict[str, Any] | None:
    if job.result_key is None:
        return None
    raw = await backends.blobs.get_bytes(job.result_key)
    # Off the event loop: the transcript of hours of audio is megabytes of JSON.
    data: dict[str, Any] = await asyncio.to_thread(json.loads, raw)
    return data


async def delete_job(backends: Backends, job_id: str) -> Job:
    job = await backends.store.delete(job_id)
    for key in (job.audio_key, job.result_key):
        if key:
            await backends.blobs.delete(key)
    return job


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
    return {"database": database, "rabbitmq": queue, "storage": storage}
