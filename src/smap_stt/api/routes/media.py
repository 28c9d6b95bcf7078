"""What the web page's `<audio>` element and download links fetch: the job's own audio (with
HTTP Range support, so a player can seek in a long file) and the set of URLs for a job."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from smap_stt import service
from smap_stt.api.auth import PrincipalDep, signing_secret
from smap_stt.api.deps import BackendsDep, SettingsDep
from smap_stt.api.links import job_links
from smap_stt.api.ranges import RangeNotSatisfiable, parse_range
from smap_stt.api.schemas import ErrorResponse, JobLinksResponse

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])

JobId = Annotated[str, Path(max_length=100, description="The job id returned by the upload")]

# Fixed, not `mimetypes`: its answers depend on the machine's /etc/mime.types.
AUDIO_TYPES = {
    ".aac": "audio/aac",
    ".aif": "audio/aiff",
    ".aiff": "audio/aiff",
    ".amr": "audio/amr",
    ".flac": "audio/flac",
    ".m4a": "audio/mp4",
    ".m4b": "audio/mp4",
    ".mka": "audio/x-matroska",
    ".mkv": "video/x-matroska",
    ".mov": "video/quicktime",
    ".mp2": "audio/mpeg",
    ".mp3": "audio/mpeg",
    ".mp4": "video/mp4",
    ".mpga": "audio/mpeg",
    ".oga": "audio/ogg",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
    ".wav": "audio/wav",
    ".weba": "audio/webm",
    ".webm": "audio/webm",
    ".wma": "audio/x-ms-wma",
}


def audio_media_type(key: str) -> str:
    return AUDIO_TYPES.get(PurePosixPath(key).suffix.lower(), "application/octet-stream")


@router.head("/{job_id}/audio", include_in_schema=False)
@router.get(
    "/{job_id}/audio",
    response_class=Response,
    responses={
        200: {"content": {"audio/*": {}}, "description": "The whole file"},
        206: {"content": {"audio/*": {}}, "description": "The requested byte range"},
        **{code: {"model": ErrorResponse} for code in (401, 403, 404, 410, 416, 422, 429, 503)},
    },
    summary="The job's audio as uploaded (HTTP Range support for seeking)",
)
async def audio(
    job_id: JobId, request: Request, backends: BackendsDep, principal: PrincipalDep
) -> Response:
    job = await service.get_job(backends, job_id, principal=principal)
    if job.audio_deleted_at is not None:  # KEEP_AUDIO=false (issue 11)
        return JSONResponse(
            {
                "status": "error",
                "detail": f"the audio of job {job.id} is gone: it was deleted once the job "
                "was final (KEEP_AUDIO=false); the transcript is kept",
            },
            status_code=410,
        )
    size = await service.audio_size(backends, job)
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Disposition": f"inline; filename*=UTF-8''{quote(job.filename)}",
        "Cache-Control": "private, max-age=3600",
    }
    try:
        wanted = parse_range(request.headers.get("range"), size)
    except RangeNotSatisfiable as exc:
        return JSONResponse(
            {"status": "error", "detail": str(exc)},
            status_code=416,
            headers={**headers, "Content-Range": f"bytes */{size}"},
        )
    media_type = audio_media_type(job.audio_key)
    if request.method == "HEAD":  # what a GET would answer, without reading the file
        length = size if wanted is None else wanted.length
        headers["Content-Length"] = str(length)
        if wanted is not None:
            headers["Content-Range"] = wanted.content_range(size)
        status = 200 if wanted is None else 206
        return Response(status_code=status, media_type=media_type, headers=headers)
    if wanted is None:
        headers["Content-Length"] = str(size)
        body = service.read_audio(backends, job, 0, size)
        return StreamingResponse(body, media_type=media_type, headers=headers)
    headers["Content-Length"] = str(wanted.length)
    headers["Content-Range"] = wanted.content_range(size)
    body = service.read_audio(backends, job, wanted.start, wanted.length)
    return StreamingResponse(body, status_code=206, media_type=media_type, headers=headers)


LINK_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 422, 429, 503)
}


@router.get(
    "/{job_id}/links",
    response_model=JobLinksResponse,
    responses=LINK_ERRORS,
    summary="URLs for the job's audio and transcript downloads, usable without a key header",
)
async def links(
    job_id: JobId,
    request: Request,
    settings: SettingsDep,
    backends: BackendsDep,
    principal: PrincipalDep,
) -> JobLinksResponse:
    job = await service.get_job(backends, job_id, principal=principal)
    made = job_links(settings, job.id, secret=await signing_secret(request))
    return JobLinksResponse(expires_at=made.expires_at, audio=made.audio, downloads=made.downloads)
