"""Pytest fixtures for the storage backends, on real servers (see `tests/servers.py`).

- `mongo_server`, `s3_server` (session): a SecantusDB / SeaweedFS started on first use and
  killed at the end; a test may `kill()`/`stop()` and `start()` them (same port, same data),
  and must leave them running.
- `rabbit_node` (session): a second RabbitMQ node of the tests' own (tests/rabbit_node.py) for
  destructive broker cases; the shared broker on 5672 is never stopped or reconfigured.
- A server that cannot be started fails the test under `CI=true` (as `make test` runs), and
  skips it, saying why, otherwise.
- `job_store` (parametrized "sqlite", "mongo") and `blob_store` ("local", "s3"): a fresh,
  opened store per test (own SQLite file / database / directory / bucket), closed and
  dropped afterwards. Select one backend with `-k "sqlite"`, `-k "not mongo"`...
  With `MONGODB_TEST_URL` set, the "mongo" job stores use that server instead of SecantusDB
  (`MONGODB_TEST_URL=mongodb://... pytest tests/store -k mongo` checks a real MongoDB), and
  tests that need `mongo_server` (to stop or crash it) are skipped.
- `production_env`: settings (as environment variables) that point smap-stt at
  `mongo_server` and `s3_server`, with a database and a bucket of its own, dropped afterwards.

Enable with `pytest_plugins = ["tests.servers_plugin"]` in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pymongo
import pytest

from smap_stt.blobs.base import BlobStore
from smap_stt.blobs.local import LocalBlobStore
from smap_stt.blobs.s3 import S3BlobStore
from smap_stt.store.base import JobStore
from smap_stt.store.mongo import MongoJobStore
from smap_stt.store.sqlite import SqliteJobStore
from tests.rabbit_node import RabbitNode, RabbitNodeError
from tests.servers import MongoServer, S3Server, ServerError, start_mongo, start_s3


def strict_servers() -> bool:
    """Under CI a missing test server is a broken setup, never a reason to pass."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def server_unavailable(reason: str) -> NoReturn:
    if strict_servers():
        pytest.fail(f"{reason} (CI=true: a test server that cannot start is an error)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def rabbit_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    try:
        node = RabbitNode(tmp_path_factory.mktemp("rabbit-node")).start()
    except RabbitNodeError as exc:
        server_unavailable(f"no second RabbitMQ node: {exc}")
    yield node
    node.stop()


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    if os.environ.get("MONGODB_TEST_URL"):
        pytest.skip(
            "MONGODB_TEST_URL is set: tests that stop or crash a server of their own are skipped"
        )
    try:
        server = start_mongo(tmp_path_factory.mktemp("mongo"))
    except ServerError as exc:
        server_unavailable(f"no MongoDB-protocol server: {exc}")
    yield server
    server.kill()  # throwaway data: a kill is instant, a clean stop takes seconds


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    try:
        server = start_s3(tmp_path_factory.mktemp("s3"))
    except ServerError as exc:
        server_unavailable(f"no S3 server: {exc}")
    yield server
    server.kill()


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["sqlite", "mongo"])
async def job_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    store: JobStore
    if request.param == "sqlite":
        store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    elif os.environ.get("MONGODB_TEST_URL"):
        store = MongoJobStore(os.environ["MONGODB_TEST_URL"], _unique("test_"))
    else:
        server: MongoServer = request.getfixturevalue("mongo_server")
        store = MongoJobStore(server.url, _unique("test_"))
    await store.open()
    yield store
    await store.close()
    if isinstance(store, MongoJobStore):
        await asyncio.to_thread(_drop_database, store.url, store.database)


def _drop_database(url: str, database: str) -> None:
    client: pymongo.MongoClient[dict[str, Any]]
    with (
        contextlib.suppress(pymongo.errors.PyMongoError),
        pymongo.MongoClient(url, serverSelectionTimeoutMS=2000) as client,
    ):
        client.drop_database(database)


@pytest.fixture(params=["local", "s3"])
async def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    store: BlobStore
    server: S3Server | None = None
    if request.param == "local":
        store = LocalBlobStore(tmp_path / "blobs")
    else:
        server = request.getfixturevalue("s3_server")
        store = S3BlobStore(
            server.endpoint,
            server.access_key,
            server.secret_key,
            _unique("test-"),
            region=server.region,
            url_expiry=300,
        )
    await store.open()
    yield store
    await store.close()
    if server is not None and isinstance(store, S3BlobStore):
        await asyncio.to_thread(_drop_bucket, server, store.bucket)


def _drop_bucket(server: S3Server, bucket: str) -> None:
    """Each bucket holds a SeaweedFS volume; dropping it gives the volume back."""
    client = server.client()
    with contextlib.suppress(Exception):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=item["Key"])
        client.delete_bucket(Bucket=bucket)


@pytest.fixture
def production_env(mongo_server: MongoServer, s3_server: S3Server) -> Iterator[dict[str, str]]:
    """MONGODB_* and MINIO_* for a service under test: the production backends, with a
    database and a bucket no other test uses."""
    env = {
        "MONGODB_URL": mongo_server.url,
        "MONGODB_DATABASE": _unique("prod_"),
        "MINIO_ENDPOINT": s3_server.endpoint,
        "MINIO_ACCESS_KEY": s3_server.access_key,
        "MINIO_SECRET_KEY": s3_server.secret_key,
        "MINIO_BUCKET": _unique("prod-"),
        "MINIO_REGION": s3_server.region,
    }
    yield env
    _drop_database(mongo_server.url, env["MONGODB_DATABASE"])
    _drop_bucket(s3_server, env["MINIO_BUCKET"])
