"""/api/v1/tasks: the original system's API, kept so its clients keep working."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from smap_stt import formats, metrics, service
from smap_stt.api.auth import PUBLIC, PrincipalDep, auth_enabled
from smap_stt.api.deps import BackendsDep, SettingsDep, settings_and_backends
from smap_stt.api.schemas import (
    CancelResponse,
    ErrorResponse,
    HealthResponse,
    JobListResponse,
    JobResultResponse,
    JobStatusResponse,
    SegmentOut,
    UploadDetails,
    UploadResponse,
    VerboseTranscript,
)
from smap_stt.api.upload import intake
from smap_stt.backends import Backends
from smap_stt.config import Settings
from smap_stt.jobs import JobStatus
from smap_stt.keys import Principal

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])

JobId = Annotated[str, Path(max_length=100, description="The job id returned by the upload")]
# 401 (no valid key), 403 (a foreign page while the API is open), 429 (a limit): issue 12.
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
}
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 408, 409, 413, 415, 422, 429, 503)
}
UPLOAD_ERRORS[200] = {
    "model": UploadResponse,
    "description": "The Idempotency-Key was used before with the same file: that job",
}
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Submit once: the same key with the same file returns the first job "
        "(200); with another file, 409.",
    ),
]
QUERY_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 422, 429, 503)
}

FormatName = Literal["json", "verbose_json", "txt", "srt", "vtt", "tsv"]
FormatQuery = Annotated[
    FormatName,
    Query(
        description="json: the seed's shape (the default); verbose_json: OpenAI's; txt: one "
        "segment a line; srt, vtt: subtitles; tsv: start, end (ms) and text, as Whisper writes"
    ),
]
MaxLineWidth = Annotated[
    int | None,
    Query(ge=1, le=1000, description="srt/vtt: characters per line before a line break"),
]
MaxLineCount = Annotated[
    int | None,
    Query(ge=1, le=100, description="srt/vtt: lines per cue (with max_line_width)"),
]
HighlightWords = Annotated[
    bool, Query(description="srt/vtt: underline each word as it is spoken (needs word times)")
]
_FORMAT_CONTENT: dict[str, Any] = {
    media.split(";")[0]: {}
    for media in (
        "application/json",
        "text/plain",
        "application/x-subrip",
        "text/vtt",
        "text/tab-separated-values",
    )
}

UPLOAD_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "Audio or video: wav, mp3, ogg/opus, m4a/aac, flac, "
                            "webm, mp4, ...",
                        },
                        "language": {
                            "type": "string",
                            "default": "vi",
                            "description": "ISO 639-1 code, an English language name, or "
                            "'auto' to detect",
                        },
                        "model": {
                            "type": "string",
                            "description": "Installed model name (default: WHISPER_MODEL)",
                        },
                        "priority": {"type": "integer", "minimum": 0, "maximum": 10, "default": 5},
                        "callback_url": {
                            "type": "string",
                            "format": "uri",
                            "description": "http(s) URL to POST the job's final state to "
                            "(a signed webhook; see docs/OPERATIONS.md)",
                        },
                        # --- outputs (issue 9)
                        "task": {
                            "type": "string",
                            "enum": ["transcribe", "translate"],
                            "default": "transcribe",
                            "description": "translate: English text from speech in any language",
                        },
                        "word_timestamps": {
                            "type": "boolean",
                            "default": False,
                            "description": "Keep every word with its time and probability",
                        },
                        "initial_prompt": {
                            "type": "string",
                            "maxLength": 1000,
                            "description": "Text the speech follows on from: steers spelling "
                            "(names, terms) and style",
                        },
                        "hotwords": {
                            "type": "string",
                            "maxLength": 1000,
                            "description": "Words the speech is likely to contain",
                        },
                        "beam_size": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 10,
                            "description": "Beam width (default: WHISPER_BEAM_SIZE)",
                        },
                        "vad_filter": {
                            "type": "boolean",
                            "default": True,
                            "description": "false: decode the whole audio in 30 s windows, "
                            "without skipping silence",
                        },
                        "temperature": {
                            "type": "number",
                            "minimum": 0,
                            "maximum": 1,
                            "default": 0,
                            "description": "0: beam search; above 0: sampling",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "/upload",
    status_code=201,
    response_model=UploadResponse,
    responses=UPLOAD_ERRORS,
    openapi_extra=UPLOAD_FORM,
    summary="Upload audio and queue a transcription job",
)
async def upload(
    request: Request,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    settings, backends = settings_and_backends(request)
    async with intake(request, settings, backends, principal) as received:
        submission = await service.submit_once(
            settings, backends, received, principal=principal, idempotency_key=idempotency_key
        )
    job = submission.job
    message = "Task created and queued for processing"
    if not submission.created:
        message = f"Task already created for this Idempotency-Key; it is {job.status.value}"
    elif job.deduplicated_from is not None:
        message = (
            f"Task completed at once: the same file was transcribed by job {job.deduplicated_from}"
        )
    elif not job.published:
        message = "Task created; the queue is unavailable, it will be queued as soon as it is back"
    body = UploadResponse(
        job_id=job.id,
        message=message,
        details=UploadDetails(
            filename=job.filename,
            size_mb=round(job.size_bytes / (1024 * 1024), 3),
            language=job.language,
            model=job.model,
        ),
    )
    return JSONResponse(body.model_dump(), status_code=201 if submission.created else 200)


@router.get(
    "/health",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse}},
    summary="Health of the database, the queue and the storage",
    openapi_extra=PUBLIC,
)
async def health(settings: SettingsDep, backends: BackendsDep) -> JSONResponse:
    services = await service.health(backends)
    healthy = all(value == "healthy" for value in services.values())
    body = HealthResponse(
        status="healthy" if healthy else "unhealthy",
        services=services,
        backends=service.backend_names(backends),
        auth="on" if await _auth_on(settings, backends) else "off",
    )
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)


async def _auth_on(settings: Settings, backends: Backends) -> bool:
    try:
        return await auth_enabled(settings, backends)
    except Exception:  # the database is down: /health reports that; say what AUTH asks for
        return settings.auth != "off"


@router.get(
    "", response_model=JobListResponse, responses=QUERY_ERRORS, summary="List jobs, newest first"
)
async def list_jobs(
    backends: BackendsDep,
    principal: PrincipalDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state")] = None,
    limit: Annotated[
        int, Query(ge=1, description="Page size; over 100 counts as 100 (as the original did)")
    ] = 20,
    offset: Annotated[
        int, Query(ge=0, le=10_000_000, description="Jobs to skip (paging, newest first)")
    ] = 0,
) -> JobListResponse:
    limit = min(limit, 100)  # clamped, not refused: the original's clients ask for more
    jobs, total = await service.list_jobs(
        backends, principal=principal, status=status, limit=limit, offset=offset
    )
    next_offset = offset + len(jobs) if offset + len(jobs) < total and jobs else None
    return JobListResponse(
        count=len(jobs),
        jobs=[JobStatusResponse.of(job) for job in jobs],
        total=total,
        offset=offset,
        limit=limit,
        next_offset=next_offset,
    )


@router.get(
    "/{job_id}/status",
    response_model=JobStatusResponse,
    responses=ERRORS,
    summary="State and progress of a job",
)
async def job_status(
    job_id: JobId, settings: SettingsDep, backends: BackendsDep, principal: PrincipalDep
) -> JobStatusResponse:
    job = await service.get_job(backends, job_id, principal=principal)
    where = await service.standing(settings, backends, job)
    return JobStatusResponse.of(
        job, queue_position=where.queue_position, eta_seconds=where.eta_seconds
    )


@router.get(
    "/{job_id}/result",
    response_model=JobResultResponse | VerboseTranscript,
    # `format=` other than json answers the file itself, with its own content type.
    responses={
        **ERRORS,
        200: {"content": {k: v for k, v in _FORMAT_CONTENT.items() if k != "application/json"}},
    },
    summary="Transcript of a job (transcription is null until it is COMPLETED)",
)
async def job_result(
    job_id: JobId,
    request: Request,
    settings: SettingsDep,
    backends: BackendsDep,
    principal: PrincipalDep,
    format: FormatQuery = "json",
    max_line_width: MaxLineWidth = None,
    max_line_count: MaxLineCount = None,
    highlight_words: HighlightWords = False,
) -> Response | JobResultResponse:
    if format != "json":
        subtitles = _SubtitleOptions(max_line_width, max_line_count, highlight_words)
        return await _rendered(
            backends, job_id, format, subtitles, inline=True, principal=principal
        )
    job = await service.get_job(backends, job_id, principal=principal)
    segments: list[SegmentOut] = []
    download_url = None
    if job.status is JobStatus.COMPLETED:
        document = await service.load_result(backends, job)
        if document is not None:
            segments = [SegmentOut(**segment) for segment in document["segments"]]
        download_url = await service.result_url(backends, job)
        if download_url is None:
            download_url = service.public_url(
                settings, f"/api/v1/tasks/{job.id}/download", str(request.base_url)
            )
        message = "Transcription completed"
        # Issue 15: silence, noise or music completes with an empty transcript; say why.
        if not (job.transcription or "").strip() and not segments:
            message = "Transcription completed: no speech was found in the audio"
    elif job.status is JobStatus.FAILED:
        message = f"Transcription failed: {job.error_message}"
    elif job.status is JobStatus.CANCELLED:
        message = "The job was cancelled"
    else:
        message = f"The job is {job.status.value}; the transcript is not ready yet"
    return JobResultResponse(
        job_id=job.id,
        status=job.status,
        filename=job.filename,
        language=job.language,
        detected_language=job.detected_language,
        language_probability=job.language_probability,
        transcription=job.transcription if job.status is JobStatus.COMPLETED else None,
        segments=segments,
        duration_seconds=job.duration_seconds,
        processing_time_seconds=job.processing_time_seconds,
        created_at=job.created_at,
        completed_at=job.completed_at,
        download_url=download_url,
        message=message,
    )


@router.get(
    "/{job_id}/download",
    responses={**ERRORS, 200: {"content": _FORMAT_CONTENT}},
    summary="The transcript as a file: the stored JSON document, txt, srt, vtt, tsv or "
    "verbose_json",
    response_class=Response,
)
async def download(
    job_id: JobId,
    backends: BackendsDep,
    principal: PrincipalDep,
    format: FormatQuery = "json",
    max_line_width: MaxLineWidth = None,
    max_line_count: MaxLineCount = None,
    highlight_words: HighlightWords = False,
) -> Response:
    subtitles = _SubtitleOptions(max_line_width, max_line_count, highlight_words)
    if format == "json":
        job, data = await service.result_bytes(backends, job_id, principal=principal)
        disposition = formats.content_disposition(job.filename, "json")
        return Response(
            data, media_type="application/json", headers={"Content-Disposition": disposition}
        )
    return await _rendered(backends, job_id, format, subtitles, inline=False, principal=principal)


@dataclass(frozen=True)
class _SubtitleOptions:
    max_line_width: int | None
    max_line_count: int | None
    highlight_words: bool


async def _rendered(
    backends: BackendsDep,
    job_id: str,
    fmt: str,
    subtitles: _SubtitleOptions,
    *,
    inline: bool,
    principal: Principal,
) -> Response:
    job, rendered = await service.render_result(
        backends,
        job_id,
        fmt,
        max_line_width=subtitles.max_line_width,
        max_line_count=subtitles.max_line_count,
        highlight_words=subtitles.highlight_words,
        principal=principal,
    )
    disposition = formats.content_disposition(job.filename, rendered.extension, inline=inline)
    return Response(
        rendered.body,
        media_type=rendered.media_type,
        headers={"Content-Disposition": disposition},
    )


@router.post(
    "/{job_id}/cancel",
    response_model=CancelResponse,
    responses=ERRORS,
    summary="Cancel a queued or running job",
)
async def cancel(job_id: JobId, backends: BackendsDep, principal: PrincipalDep) -> CancelResponse:
    job = await service.cancel_job(backends, job_id, principal=principal)
    metrics.JOBS_FINISHED.labels(status=job.status.value, model=job.model).inc()
    return CancelResponse(
        job_id=job.id,
        job_status=job.status,
        message="Cancelled; a running job stops within seconds",
    )


@router.delete(
    "/{job_id}",
    response_model=CancelResponse,
    responses=ERRORS,
    summary="Delete a finished job and its stored files",
)
async def delete(job_id: JobId, backends: BackendsDep, principal: PrincipalDep) -> CancelResponse:
    job = await service.delete_job(backends, job_id, principal=principal)
    return CancelResponse(job_id=job.id, job_status=job.status, message="Deleted")
