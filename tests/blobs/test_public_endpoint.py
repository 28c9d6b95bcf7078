"""MINIO_PUBLIC_ENDPOINT: presigned URLs carry the host clients use, while the service keeps
talking to MINIO_ENDPOINT. Against SeaweedFS (tests/servers.py): the same server reached as
`127.0.0.1:PORT` by the service and as `localhost:PORT` by the client, so the URL must both
name the public host and still be accepted (the host is part of the signature)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httpx
import pytest

from smap_stt.backends import make_blobs
from smap_stt.blobs.s3 import S3BlobStore
from smap_stt.config import Settings
from tests.servers import S3Server
from tests.servers_plugin import _drop_bucket


@asynccontextmanager
async def _store(server: S3Server, public_endpoint: str) -> AsyncIterator[S3BlobStore]:
    settings = Settings(
        _env_file=None,
        minio_endpoint=server.endpoint,
        minio_public_endpoint=public_endpoint,
        minio_access_key=server.access_key,
        minio_secret_key=server.secret_key,
        minio_bucket=f"public-{uuid.uuid4().hex[:8]}",
        minio_region=server.region,
    )
    store = make_blobs(settings)  # the settings reach the store as a deployment has them
    assert isinstance(store, S3BlobStore)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        await asyncio.to_thread(_drop_bucket, server, store.bucket)


async def test_presigned_url_names_the_public_host_and_downloads(s3_server: S3Server) -> None:
    public = f"localhost:{s3_server.port}"
    async with _store(s3_server, public) as store:
        await store.put_bytes("results/job.json", b'{"text": "hello"}')  # via 127.0.0.1
        url = await store.presigned_url("results/job.json")
        assert url is not None
        assert urlsplit(url).netloc == public, url
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(url)
        assert response.status_code == 200, response.text
        assert response.content == b'{"text": "hello"}'


async def test_a_public_url_with_its_own_scheme(s3_server: S3Server) -> None:
    async with _store(s3_server, "https://files.example.com") as store:
        await store.put_bytes("a", b"x")
        url = await store.presigned_url("a")
        assert url is not None and url.startswith(f"https://files.example.com/{store.bucket}/a?")
        assert await store.get_bytes("a") == b"x"  # the service still uses MINIO_ENDPOINT


async def test_without_it_urls_name_minio_endpoint(s3_server: S3Server) -> None:
    async with _store(s3_server, "") as store:
        url = await store.presigned_url("a")
        assert url is not None and urlsplit(url).netloc == s3_server.endpoint


@pytest.mark.parametrize("value", ["", "localhost:9000"])
def test_the_setting_reaches_the_store(value: str) -> None:
    settings = Settings(
        _env_file=None,
        minio_endpoint="127.0.0.1:9000",
        minio_public_endpoint=value,
    )
    store = make_blobs(settings)
    assert isinstance(store, S3BlobStore)
    assert store.public_endpoint_url == f"http://{value or '127.0.0.1:9000'}"
