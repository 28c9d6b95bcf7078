"""/asr and /detect-language: whisper-asr-webservice v1.9's API, so tools configured for it
(Bazarr, subgen-style media tools) work by changing only the URL.

Same query parameters, multipart `audio_file`, `encode=false` for raw 16 kHz mono s16le PCM,
the same bodies and headers (`Asr-Engine`, `Content-Disposition: attachment;
filename="<name>.<output>"`). Unlike that project, each request is a job on our queue (so it
gets priorities, retries and any number of workers) and waits for it (SYNC_WAIT_SECONDS); past
the wait: 504 naming the job id, and the job goes on. Errors keep the task API's shape
(`{"status": "error", "detail"}`: FastAPI clients read `detail`, as with that project).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from smap_stt import dialects, service
from smap_stt.api.deps import BackendsDep, SettingsDep
from smap_stt.api.schemas import ErrorResponse
from smap_stt.api.upload import intake
from smap_stt.backends import Backends
from smap_stt.config import Settings
from smap_stt.jobs import Job
from smap_stt.keys import Principal

ENGINE = "faster_whisper"


class AsrRoute(APIRoute):
    """Maps the two outcomes of waiting (timeout, a job that ended without a transcript);
    every other error goes to the app's handlers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except service.WaitTimeout as exc:
                return _error(504, str(exc), exc.job)
            except dialects.JobEnded as exc:
                return _error(
                    409 if exc.job.status.value == "CANCELLED" else 500, str(exc), exc.job
                )

        return handle


def _error(status_code: int, detail: str, job: Job) -> JSONResponse:
    return JSONResponse(
        {"status": "error", "detail": detail, "job_id": job.id},
        status_code=status_code,
        headers={"X-Job-Id": job.id},
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 408, 409, 413, 415, 422, 500, 503, 504)
}
router = APIRouter(tags=["whisper-asr-webservice"], route_class=AsrRoute, responses=ERRORS)

Encode = Annotated[
    bool,
    Query(description="false: the body is raw 16 kHz mono s16le PCM with no header"),
]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=255, description="Submit once (see the task API)"),
]


def _form() -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["audio_file"],
                        "properties": {"audio_file": {"type": "string", "format": "binary"}},
                    }
                }
            },
        }
    }


async def _run(
    request: Request,
    settings: Settings,
    backends: Backends,
    encode: bool,
    fields: dict[str, str],
    idempotency_key: str | None,
) -> tuple[Job, dict[str, Any], str]:
    """Submit the upload as a job and wait for it: the job, its transcript document and the
    uploaded file's name."""
    principal: Principal = request.state.principal
    async with intake(
        request, settings, backends, principal, file_field="audio_file", raw_pcm=not encode
    ) as upload:
        upload.fields = fields
        submission = await service.submit_once(
            settings, backends, upload, principal=principal, idempotency_key=idempotency_key
        )
    job = await service.wait_for(backends, submission.job, seconds=settings.sync_wait_seconds)
    return job, await dialects.finished_document(backends, job), upload.filename


@router.post(
    "/asr",
    summary="whisper-asr-webservice's /asr: transcribe or translate (waits for the job)",
    openapi_extra=_form(),
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def asr(
    request: Request,
    settings: SettingsDep,
    backends: BackendsDep,
    encode: Encode = True,
    task: Annotated[Literal["transcribe", "translate"], Query()] = "transcribe",
    language: Annotated[str | None, Query(max_length=40, description="absent: detect")] = None,
    initial_prompt: Annotated[str | None, Query(max_length=2000)] = None,
    vad_filter: Annotated[
        bool | None, Query(description="absent: on (whisper-asr-webservice: off)")
    ] = None,
    word_timestamps: Annotated[bool | None, Query()] = None,
    output: Annotated[Literal["txt", "vtt", "srt", "tsv", "json"], Query()] = "txt",
    diarize: Annotated[bool, Query(description="accepted and ignored (WhisperX only)")] = False,
    min_speakers: Annotated[int | None, Query(description="ignored")] = None,
    max_speakers: Annotated[int | None, Query(description="ignored")] = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    call = dialects.asr_call(
        task=task,
        language=language,
        initial_prompt=initial_prompt,
        vad_filter=vad_filter,
        word_timestamps=word_timestamps,
        output=output,
    )
    job, document, filename = await _run(
        request, settings, backends, encode, call.fields, idempotency_key
    )
    body = await asyncio.to_thread(dialects.render_asr, document, call.output)
    return Response(
        body,
        media_type="text/plain",
        headers={
            "Asr-Engine": ENGINE,
            "Content-Disposition": f'attachment; filename="{quote(filename)}.{call.output}"',
            "X-Job-Id": job.id,
        },
    )


@router.post(
    "/detect-language",
    summary="whisper-asr-webservice's /detect-language (waits for the job)",
    openapi_extra=_form(),
)
async def detect_language(
    request: Request,
    settings: SettingsDep,
    backends: BackendsDep,
    encode: Encode = True,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    fields = {"language": "auto", "task": "transcribe"}
    job, document, _ = await _run(request, settings, backends, encode, fields, idempotency_key)
    return JSONResponse(dialects.detect_language_body(document), headers={"X-Job-Id": job.id})
