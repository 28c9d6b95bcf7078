"""AUTH=on, off and auto, in process (httpx.ASGITransport, SQLite): who gets in before and after
the first key, and what the operator is told (issue 12)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest

from smap_stt.api.app import create_app
from smap_stt.api.auth import warn_while_open
from smap_stt.backends import Backends, make_backends
from smap_stt.config import Settings
from smap_stt.keys import new_key

ClientFactory = Callable[..., AbstractAsyncContextManager[tuple[httpx.AsyncClient, Backends]]]


@pytest.fixture
def api(tmp_path: Path) -> ClientFactory:
    @asynccontextmanager
    async def make(auth: str) -> AsyncIterator[tuple[httpx.AsyncClient, Backends]]:
        settings = Settings(
            _env_file=None,
            auth=auth,
            sqlite_path=tmp_path / "jobs.sqlite3",
            blob_dir=tmp_path / "blobs",
            temp_dir=tmp_path / "tmp",
            whisper_models_dir=tmp_path / "models",
            mongodb_url="",
            minio_endpoint="",
        )
        backends = make_backends(settings, embedded=True)
        app = create_app(settings, backends)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            yield client, backends

    return make


async def test_auth_on_without_a_key_refuses_everyone_and_says_how_to_fix_it(
    api: ClientFactory,
) -> None:
    async with api("on") as (client, backends):
        refused = await client.get("/api/v1/tasks")
        assert refused.status_code == 401
        assert "smap-stt keys create" in refused.json()["detail"]
        assert (await client.get("/api/v1/tasks/health")).status_code == 200  # always open
        key, record = new_key("ops", admin=True)
        await backends.store.insert_key(record)
        allowed = await client.get("/api/v1/tasks", headers={"Authorization": f"Bearer {key}"})
        assert allowed.status_code == 200, allowed.text
        assert (await client.get("/api/v1/tasks")).status_code == 401


async def test_auth_off_ignores_keys_even_once_some_exist(api: ClientFactory) -> None:
    async with api("off") as (client, backends):
        _, record = new_key("ops", admin=True)
        await backends.store.insert_key(record)
        assert (await client.get("/api/v1/tasks")).status_code == 200
        bogus = {"Authorization": "Bearer sst_000000000000_not-a-real-key"}
        assert (await client.get("/api/v1/tasks", headers=bogus)).status_code == 200


async def test_auth_auto_is_open_until_the_first_key(api: ClientFactory) -> None:
    async with api("auto") as (client, backends):
        assert (await client.get("/api/v1/tasks")).status_code == 200
        _, record = new_key("ops", admin=True)
        await backends.store.insert_key(record)
        refused = await client.get("/api/v1/tasks")
        assert refused.status_code == 401
        assert "Authorization: Bearer KEY" in refused.json()["detail"]


@pytest.mark.parametrize(
    ("auth", "expected"),
    [("auto", "no API key exists"), ("on", "every request is refused"), ("off", "AUTH=off")],
)
async def test_the_open_api_warning_repeats(
    api: ClientFactory, caplog: pytest.LogCaptureFixture, auth: str, expected: str
) -> None:
    async with api(auth) as (_, backends):
        settings = Settings(_env_file=None, auth=auth)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="smap_stt.api.auth"):
            reminder = asyncio.create_task(warn_while_open(settings, backends, every=0.01))
            await asyncio.sleep(0.2)
            reminder.cancel()
        said = [r.getMessage() for r in caplog.records if expected in r.getMessage()]
        assert len(said) >= 3, caplog.text  # at startup and again, not once
