"""The FastAPI application: routers, the one layer that maps errors to HTTP, and the lifespan
that opens the backends, runs the recovery sweeps and, for `serve`, the worker given to it.

Imports no worker, engine or model code (tests/unit/test_layers.py checks): an API process
stays small and starts fast."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from smap_stt import __version__, limits, recovery
from smap_stt.api import auth
from smap_stt.api.routes import asr, media, openai, ops, page, tasks
from smap_stt.backends import Backends, make_backends
from smap_stt.config import Settings
from smap_stt.errors import (
    BackendUnavailable,
    BlobNotFound,
    InvalidRequest,
    JobConflict,
    JobNotFound,
)
from smap_stt.logs import setup_logging

log = logging.getLogger(__name__)


def _error(status_code: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"status": "error", "detail": detail}, status_code=status_code, headers=headers
    )


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InvalidRequest)
    async def invalid(_: Request, exc: InvalidRequest) -> JSONResponse:
        headers: dict[str, str] = dict(getattr(exc, "headers", None) or {})
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:  # limits.Refused: 429/503 say when to come back
            headers["Retry-After"] = str(retry_after)
        return _error(exc.status_code, str(exc), headers or None)

    @app.exception_handler(JobConflict)
    async def conflict(_: Request, exc: JobConflict) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(JobNotFound)
    async def not_found(_: Request, exc: JobNotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(BlobNotFound)
    async def blob_missing(_: Request, exc: BlobNotFound) -> JSONResponse:
        return _error(404, f"stored file missing: {exc}")

    @app.exception_handler(BackendUnavailable)
    async def unavailable(_: Request, exc: BackendUnavailable) -> JSONResponse:
        log.warning("answered 503: %s", exc)
        return _error(503, f"{exc}; try again shortly")

    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        return _error(422, problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if request.url.path.startswith("/v1/"):  # no /v1 route matched: OpenAI's shape too
            headers = dict(exc.headers or {})
            return openai.openai_error(exc.status_code, str(exc.detail), headers=headers)
        # Keep the exception's headers: a 405 must say which methods are allowed (`Allow`).
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, "internal error; the server log has the details")


class InProcessWorker(Protocol):
    """What `serve` runs beside the API (a `smap_stt.worker.runner.Worker`)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def create_app(
    settings: Settings, backends: Backends, *, worker: InProcessWorker | None = None
) -> FastAPI:
    """`worker` given: `serve` on the embedded queue, whose messages died with the last
    process, so queued and running jobs are queued again first."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await backends.open()
        reminder = asyncio.create_task(auth.warn_while_open(settings, backends))
        if worker is not None:
            await recovery.requeue_after_restart(backends.store, max_attempts=settings.max_attempts)
            await worker.start()
        sweeps = asyncio.create_task(recovery.run_sweeps(settings, backends))
        try:
            yield
        finally:
            if worker is not None:
                await worker.stop()
            sweeps.cancel()
            reminder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeps
            await backends.close()

    app = FastAPI(
        title="smap-stt",
        version=__version__,
        description="Self-hosted speech-to-text jobs: upload audio, poll status, fetch the "
        "transcript.",
        lifespan=lifespan,
        dependencies=[auth.AUTHENTICATE],  # every route; `openapi_extra=auth.PUBLIC` opens one
    )
    app.state.settings = settings
    app.state.backends = backends
    app.state.upload_slots = limits.UploadSlots(settings.max_concurrent_uploads)
    _add_error_handlers(app)
    auth.install(app, settings)
    app.include_router(tasks.router)
    # The web page and what it fetches (issue 13).
    app.include_router(media.router)
    app.include_router(page.router)
    app.mount("/web", page.static_files(), name="web")
    app.include_router(ops.router)  # /metrics (issue 11)
    app.include_router(openai.router)  # dialects (issue 10)
    app.include_router(asr.router)
    return app


def create_app_from_env() -> FastAPI:
    """Entry point for uvicorn's worker processes (`smap-stt api` with API_WORKERS > 1)."""
    settings = Settings()
    setup_logging(settings)
    return create_app(settings, make_backends(settings, embedded=False))
