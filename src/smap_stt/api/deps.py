"""Request dependencies as `Annotated` aliases: routes ask for what they use."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from smap_stt.backends import Backends
from smap_stt.config import Settings


# Async on purpose: FastAPI runs plain functions in its thread pool, a hop per request.
async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _backends(request: Request) -> Backends:
    backends: Backends = request.app.state.backends
    return backends


SettingsDep = Annotated[Settings, Depends(_settings)]
BackendsDep = Annotated[Backends, Depends(_backends)]


def settings_and_backends(request: Request) -> tuple[Settings, Backends]:
    """The same as SettingsDep and BackendsDep as a plain call, for the upload routes: each
    dependency FastAPI solves costs a few per cent of an upload's time on the event loop
    (issue 14's profile)."""
    state = request.app.state
    return state.settings, state.backends
