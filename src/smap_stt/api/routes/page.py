"""The web page at `/`: static files shipped inside the package (no build step, nothing fetched
from anywhere else), so `make run` serves it on a machine without Node or internet."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from smap_stt.api.auth import PUBLIC

__all__ = ["WEB_DIR", "router", "static_files"]

WEB_DIR = Path(__file__).resolve().parent.parent.parent / "web"

# The page loads only its own files; the CSP makes the browser enforce it.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
    "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/", openapi_extra=PUBLIC)  # the page asks for a key itself
async def index() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=_HEADERS)


def static_files() -> StaticFiles:
    """The page's scripts and styles, mounted at /web."""
    return StaticFiles(directory=WEB_DIR)
