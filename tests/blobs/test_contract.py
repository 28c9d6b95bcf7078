"""The BlobStore contract, run against every backend (the `blob_store` fixture)."""

from __future__ import annotations

import asyncio
import hashlib
import time
import tracemalloc
import urllib.request
from pathlib import Path

import pytest

from smap_stt.blobs.base import BlobStore
from smap_stt.blobs.local import LocalBlobStore
from smap_stt.blobs.s3 import S3BlobStore
from smap_stt.errors import BackendUnavailable, BlobNotFound
from tests.servers import S3Server

MB = 1024 * 1024


def write_file(path: Path, size_mb: int) -> str:
    """A file of varied bytes, written a megabyte at a time; returns its sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as file:
        for i in range(size_mb):
            block = hashlib.sha256(str(i).encode()).digest() * (MB // 32)
            digest.update(block)
            file.write(block)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(MB):
            digest.update(block)
    return digest.hexdigest()


async def test_bytes_round_trip_and_overwrite(blob_store: BlobStore) -> None:
    await blob_store.put_bytes(
        "results/a.json", b'{"text": "one"}', content_type="application/json"
    )
    assert await blob_store.get_bytes("results/a.json") == b'{"text": "one"}'

    await blob_store.put_bytes("results/a.json", b"")
    assert await blob_store.get_bytes("results/a.json") == b""


async def test_file_round_trip(blob_store: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "talk.wav"
    source.write_bytes(b"RIFF" + bytes(range(256)) * 40)

    await blob_store.put_file("uploads/job-1.wav", source)
    await blob_store.get_file("uploads/job-1.wav", tmp_path / "copy.wav")

    assert source.exists()  # not moved unless asked
    assert (tmp_path / "copy.wav").read_bytes() == source.read_bytes()
    assert await blob_store.get_bytes("uploads/job-1.wav") == source.read_bytes()


async def test_put_file_with_move_consumes_the_file(blob_store: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "spool.wav"
    source.write_bytes(b"audio")

    await blob_store.put_file("uploads/job-2.wav", source, move=True)

    assert not source.exists()
    assert await blob_store.get_bytes("uploads/job-2.wav") == b"audio"


async def test_get_file_overwrites_the_target(blob_store: BlobStore, tmp_path: Path) -> None:
    await blob_store.put_bytes("a", b"new")
    target = tmp_path / "target"
    target.write_bytes(b"old and longer")

    await blob_store.get_file("a", target)

    assert target.read_bytes() == b"new"


async def test_missing_keys_are_not_found(blob_store: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(BlobNotFound):
        await blob_store.get_bytes("uploads/missing.wav")
    with pytest.raises(BlobNotFound):
        await blob_store.get_file("uploads/missing.wav", tmp_path / "out.wav")
    assert not (tmp_path / "out.wav").exists()


async def test_exists_and_idempotent_delete(blob_store: BlobStore) -> None:
    await blob_store.put_bytes("results/b.txt", b"text")
    assert await blob_store.exists("results/b.txt")
    assert not await blob_store.exists("results/c.txt")
    assert not await blob_store.exists("results")  # a "directory" is not an object

    await blob_store.delete("results/b.txt")
    await blob_store.delete("results/b.txt")
    await blob_store.delete("never/was.txt")

    assert not await blob_store.exists("results/b.txt")
    with pytest.raises(BlobNotFound):
        await blob_store.get_bytes("results/b.txt")


async def test_list_keys_by_prefix(blob_store: BlobStore) -> None:
    keys = ["uploads/a.wav", "uploads/b.wav", "uploads/deep/c.wav", "results/a.json", "top"]
    await asyncio.gather(*(blob_store.put_bytes(key, key.encode()) for key in keys))

    assert await blob_store.list_keys("") == sorted(keys)
    assert await blob_store.list_keys("uploads/") == [
        "uploads/a.wav",
        "uploads/b.wav",
        "uploads/deep/c.wav",
    ]
    assert await blob_store.list_keys("uploads/a") == ["uploads/a.wav"]
    assert await blob_store.list_keys("res") == ["results/a.json"]
    assert await blob_store.list_keys("nothing/") == []


async def test_presigned_url_serves_the_object(blob_store: BlobStore) -> None:
    await blob_store.put_bytes("results/job 1.json", b'{"ok": true}')

    url = await blob_store.presigned_url("results/job 1.json")

    if isinstance(blob_store, LocalBlobStore):
        assert url is None  # the API serves local files itself
        return
    assert url is not None and url.startswith("http://")
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
    assert body == b'{"ok": true}'


async def test_a_large_file_streams_in_bounded_memory(
    blob_store: BlobStore, tmp_path: Path
) -> None:
    source, copy = tmp_path / "big.bin", tmp_path / "big-copy.bin"
    digest = await asyncio.to_thread(write_file, source, 50)

    tracemalloc.start()
    try:
        await blob_store.put_file("uploads/big.bin", source)
        await blob_store.get_file("uploads/big.bin", copy)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert peak < 20 * MB, f"{peak / MB:.0f} MB held in memory for a 50 MB file"
    assert await asyncio.to_thread(sha256, copy) == digest


async def test_ping(blob_store: BlobStore) -> None:
    await blob_store.ping()


async def test_keys_cannot_escape_the_local_root(blob_store: BlobStore) -> None:
    if not isinstance(blob_store, LocalBlobStore):
        pytest.skip("object stores have no file system to escape")
    for key in (
        "../outside",
        "a/../../outside",
        "/etc/passwd",
        "",
        ".",
        "a/./b",
        ".hidden",
        "a\\..\\b",
        "a/.x.part",
    ):
        with pytest.raises(ValueError):
            await blob_store.put_bytes(key, b"x")
        with pytest.raises(ValueError):
            await blob_store.get_bytes(key)
    assert not (blob_store.root.parent / "outside").exists()


async def test_wrong_s3_credentials_say_which_settings_to_check(
    blob_store: BlobStore,
    request: pytest.FixtureRequest,
) -> None:
    if not isinstance(blob_store, S3BlobStore):
        pytest.skip("only S3 has credentials")
    server: S3Server = request.getfixturevalue("s3_server")
    wrong = S3BlobStore(
        server.endpoint,
        server.access_key,
        "not-the-secret",
        blob_store.bucket,
        region=server.region,
    )

    with pytest.raises(BackendUnavailable) as refused:
        await wrong.open()
    await wrong.close()

    assert refused.value.backend == "s3"
    assert "MINIO_ACCESS_KEY" in str(refused.value) and "MINIO_SECRET_KEY" in str(refused.value)


async def test_a_down_server_is_reported_and_used_again_when_back(
    blob_store: BlobStore,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    if not isinstance(blob_store, S3BlobStore):
        pytest.skip("local files have no server to lose")
    server: S3Server = request.getfixturevalue("s3_server")
    await blob_store.put_bytes("kept", b"before")
    source = tmp_path / "f"
    source.write_bytes(b"file")

    server.kill()
    try:
        began = time.monotonic()
        for call in (
            blob_store.ping,
            lambda: blob_store.get_bytes("kept"),
            lambda: blob_store.put_file("new", source),
        ):
            with pytest.raises(BackendUnavailable) as down:
                await call()
            assert down.value.backend == "s3"
        assert time.monotonic() - began < 15
    finally:
        server.start()

    assert await blob_store.get_bytes("kept") == b"before"
    await blob_store.put_file("new", source)
    assert await blob_store.get_bytes("new") == b"file"


# --- ranged reads (issue 13) ------------------------------------------------------------------


async def _read_range(blob_store: BlobStore, key: str, offset: int, length: int) -> bytes:
    return b"".join([block async for block in blob_store.read_range(key, offset, length)])


async def test_size_and_ranged_reads(blob_store: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "talk.bin"
    await asyncio.to_thread(write_file, source, 1)
    data = source.read_bytes()
    await blob_store.put_file("uploads/talk.bin", source)

    assert await blob_store.size("uploads/talk.bin") == MB
    assert await _read_range(blob_store, "uploads/talk.bin", 0, MB) == data
    assert await _read_range(blob_store, "uploads/talk.bin", 1000, 1) == data[1000:1001]
    # Crossing the stores' block size, and running past the end (the object ends first).
    assert (
        await _read_range(blob_store, "uploads/talk.bin", 100_000, 400_000) == data[100_000:500_000]
    )
    assert await _read_range(blob_store, "uploads/talk.bin", MB - 10, 100) == data[-10:]
    assert await _read_range(blob_store, "uploads/talk.bin", 5, 0) == b""


async def test_ranged_reads_stream_in_blocks(blob_store: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    await asyncio.to_thread(write_file, source, 4)
    await blob_store.put_file("uploads/big.bin", source)

    blocks = [len(block) async for block in blob_store.read_range("uploads/big.bin", 0, 4 * MB)]

    assert sum(blocks) == 4 * MB
    assert len(blocks) > 1 and max(blocks) <= MB


async def test_size_and_ranged_read_of_a_missing_key(blob_store: BlobStore) -> None:
    with pytest.raises(BlobNotFound):
        await blob_store.size("uploads/missing.wav")
    with pytest.raises(BlobNotFound):
        await _read_range(blob_store, "uploads/missing.wav", 0, 10)
