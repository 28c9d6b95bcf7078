"""/v1: OpenAI's audio API (transcriptions, translations, models), so the official `openai`
client and tools built on it work by changing only `base_url`.

Each request becomes an ordinary job (stored, queued, prioritised, retried) and the request
waits for it (SYNC_WAIT_SECONDS); nothing is transcribed in the API process. Past the wait the
answer is 504 with code "timeout" and the job id, and the job goes on: poll the task API.
Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, from one place:
the route class below, which every /v1 route uses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from smap_stt import dialects, service
from smap_stt.api.deps import BackendsDep, SettingsDep
from smap_stt.api.upload import intake
from smap_stt.config import Settings
from smap_stt.errors import BackendUnavailable, BlobNotFound, InvalidRequest, JobNotFound

log = logging.getLogger(__name__)

WHISPER_1 = dialects.WHISPER_1
# Answers the official client must not retry: a retry would upload the file again.
NO_RETRY = {"x-should-retry": "false"}


def openai_error(
    status_code: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    retry = {} if status_code in (429, 503) else NO_RETRY
    return JSONResponse(body, status_code=status_code, headers={**retry, **(headers or {})})


def _error_for(exc: Exception, request: Request) -> JSONResponse:
    """The one mapping of errors to OpenAI's shape for every /v1 route."""
    if isinstance(exc, dialects.ParamError):
        return openai_error(400, str(exc), param=exc.param)
    if isinstance(exc, service.WaitTimeout):
        return openai_error(
            504,
            str(exc),
            type_="timeout_error",
            code="timeout",
            headers={"X-Job-Id": exc.job.id},
        )
    if isinstance(exc, dialects.JobEnded):
        status = 409 if exc.job.status.value == "CANCELLED" else 500
        kind = "invalid_request_error" if status == 409 else "server_error"
        return openai_error(
            status,
            str(exc),
            type_=kind,
            code=f"job_{exc.job.status.value.lower()}",
            headers={"X-Job-Id": exc.job.id},
        )
    if isinstance(exc, InvalidRequest):
        # OpenAI answers 400 for a file it cannot use; the client raises BadRequestError.
        status = 400 if exc.status_code in (415, 422) else exc.status_code
        # The task API's field names, in OpenAI's words where they differ.
        param = {"initial_prompt": "prompt"}.get(exc.param or "", exc.param)
        if param is None and (exc.status_code in (413, 415) or "file" in str(exc)):
            param = "file"
        code = {
            409: "conflict",
            413: "file_too_large",
            408: "upload_timeout",
            429: "rate_limit_exceeded",
        }.get(status)
        retry_after = getattr(exc, "retry_after", None)  # limits.Refused: when to come back
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return openai_error(status, str(exc), param=param, code=code, headers=headers)
    if isinstance(exc, JobNotFound | BlobNotFound):
        return openai_error(404, str(exc), code="not_found")
    if isinstance(exc, BackendUnavailable):
        log.warning("answered 503: %s", exc)
        return openai_error(503, f"{exc}; try again shortly", type_="server_error")
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
        return openai_error(
            400,
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()),
            param=loc[-1] if loc else None,
        )
    if isinstance(exc, StarletteHTTPException):
        return openai_error(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return openai_error(500, "internal error; the server log has the details", type_="server_error")


class OpenAIRoute(APIRoute):
    """Every /v1 route answers errors in OpenAI's shape (the app's handlers keep the task API's
    `{"status": "error", "detail"}` shape everywhere else)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return _error_for(exc, request)

        return handle


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIError} for code in (400, 404, 408, 409, 413, 500, 503, 504)
}
router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute, responses=ERRORS)

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=255, description="Submit once (see the task API)"),
]


TRANSCRIPT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The transcript, in the response_format asked for",
        "content": {"application/json": {}, "text/plain": {}},
    }
}


def _form(task: str) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "file": {"type": "string", "format": "binary"},
        "model": {"type": "string", "description": "whisper-1 (= WHISPER_MODEL) or a model id"},
        "prompt": {"type": "string"},
        "response_format": {
            "type": "string",
            "enum": list(dialects.OPENAI_FORMATS),
            "default": "json",
        },
        "temperature": {"type": "number", "default": 0},
        "priority": {"type": "integer", "minimum": 0, "maximum": 10, "default": 5},
    }
    if task == "transcribe":
        properties["language"] = {"type": "string", "description": "ISO-639-1; absent: detect"}
        properties["timestamp_granularities[]"] = {
            "type": "array",
            "items": {"type": "string", "enum": list(dialects.GRANULARITIES)},
        }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["file"], "properties": properties}
                }
            },
        }
    }


async def _run(
    request: Request,
    settings: Settings,
    backends: Any,
    idempotency_key: str | None,
    *,
    task: str,
) -> Response:
    principal = request.state.principal  # set by the auth dependency (issue 12)
    async with intake(request, settings, backends, principal) as upload:
        call = dialects.openai_call(upload.fields, task=task)
        upload.fields = call.fields
        submission = await service.submit_once(
            settings, backends, upload, principal=principal, idempotency_key=idempotency_key
        )
    job = await service.wait_for(backends, submission.job, seconds=settings.sync_wait_seconds)
    document = await dialects.finished_document(backends, job)
    rendered = await asyncio.to_thread(dialects.render_openai, document, call)
    return Response(rendered.body, media_type=rendered.media_type, headers={"X-Job-Id": job.id})


@router.post(
    "/audio/transcriptions",
    summary="OpenAI-compatible transcription (waits for the job)",
    openapi_extra=_form("transcribe"),
    response_class=Response,
    responses=TRANSCRIPT,
)
async def transcriptions(
    request: Request, settings: SettingsDep, backends: BackendsDep, key: IdempotencyKey = None
) -> Response:
    return await _run(request, settings, backends, key, task="transcribe")


@router.post(
    "/audio/translations",
    summary="OpenAI-compatible translation to English (waits for the job)",
    openapi_extra=_form("translate"),
    response_class=Response,
    responses=TRANSCRIPT,
)
async def translations(
    request: Request, settings: SettingsDep, backends: BackendsDep, key: IdempotencyKey = None
) -> Response:
    return await _run(request, settings, backends, key, task="translate")


async def _models(settings: Settings, backends: Any) -> list[dict[str, Any]]:
    stamps = await service.model_catalog(settings, backends)
    entries = [
        {"id": name, "object": "model", "created": created, "owned_by": "smap-stt"}
        for name, created in stamps.items()
    ]
    alias = {
        "id": WHISPER_1,
        "object": "model",
        "created": stamps.get(settings.whisper_model, 0),
        "owned_by": "smap-stt",
        "root": settings.whisper_model,
    }
    return [alias, *entries]


@router.get("/models", summary="Models, OpenAI-shaped (whisper-1 is WHISPER_MODEL)")
async def models(settings: SettingsDep, backends: BackendsDep) -> dict[str, Any]:
    return {"object": "list", "data": await _models(settings, backends)}


@router.get("/models/{model_id:path}", summary="One model, OpenAI-shaped")
async def model(
    model_id: Annotated[str, Path(max_length=200)], settings: SettingsDep, backends: BackendsDep
) -> Response:
    for entry in await _models(settings, backends):
        if entry["id"] == model_id:
            return JSONResponse(entry)
    return openai_error(
        404, f"The model {model_id!r} does not exist", param="model", code="model_not_found"
    )
