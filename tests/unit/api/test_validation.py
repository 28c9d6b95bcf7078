"""The API's validation paths, in process (httpx.ASGITransport, no server, no worker): each bad
request gets its precise status and a message for the user, and the job rules (409s) hold."""

from __future__ import annotations

import io
import math
import struct
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from smap_stt.api.app import create_app
from smap_stt.backends import make_backends
from smap_stt.config import Settings


def _wav(seconds: float = 1.0) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        frames = (
            struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * n / 16000)))
            for n in range(int(16000 * seconds))
        )
        out.writeframes(b"".join(frames))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def wav() -> bytes:
    return _wav()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        _env_file=None,
        sqlite_path=tmp_path / "jobs.sqlite3",
        blob_dir=tmp_path / "blobs",
        temp_dir=tmp_path / "tmp",
        whisper_models_dir=tmp_path / "models",
        whisper_allow_download=True,  # no model is installed here, and none is loaded
        mongodb_url="",
        minio_endpoint="",
    )
    app = create_app(settings, make_backends(settings, embedded=True))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        yield client


def _error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error"
    for word in words:
        assert word.lower() in body["detail"].lower(), body["detail"]


async def _upload(client: httpx.AsyncClient, data: bytes, **fields: str) -> httpx.Response:
    return await client.post(
        "/api/v1/tasks/upload", files={"file": ("a.wav", data)}, data={"language": "en", **fields}
    )


async def test_not_multipart_is_415(client: httpx.AsyncClient) -> None:
    _error(await client.post("/api/v1/tasks/upload", json={"file": "x"}), 415, "multipart")


async def test_a_body_cut_before_its_closing_boundary_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/tasks/upload",
        content=b"--x\r\ngarbage without end",
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    _error(response, 400, "malformed multipart")


@pytest.mark.parametrize(
    ("files", "fields", "status", "words"),
    [
        ({"audio": ("a.wav", b"x")}, {}, 422, ["'file'"]),
        ({"file": ("a.wav", b"")}, {}, 422, ["empty"]),
        ({"file": ("a.wav", b"\x00\x01" * 2048)}, {}, 415, ["audio"]),
        ({"file": ("a.wav", "WAV")}, {"language": "klingon"}, 422, ["klingon", "auto"]),
        ({"file": ("a.wav", "WAV")}, {"priority": "11"}, 422, ["priority"]),
        ({"file": ("a.wav", "WAV")}, {"priority": "٣"}, 422, ["priority"]),
    ],
)
async def test_bad_uploads_get_their_status(
    client: httpx.AsyncClient,
    wav: bytes,
    files: dict[str, tuple[str, Any]],
    fields: dict[str, str],
    status: int,
    words: list[str],
) -> None:
    files = {name: (file, wav if data == "WAV" else data) for name, (file, data) in files.items()}
    response = await client.post("/api/v1/tasks/upload", files=files, data=fields)
    _error(response, status, *words)
    listed = (await client.get("/api/v1/tasks")).json()
    assert listed["jobs"] == []  # nothing refused became a job


async def test_unknown_job_is_404_everywhere(client: httpx.AsyncClient) -> None:
    for path in ("status", "result", "download"):
        _error(await client.get(f"/api/v1/tasks/nope/{path}"), 404, "nope")
    _error(await client.post("/api/v1/tasks/nope/cancel"), 404)
    _error(await client.delete("/api/v1/tasks/nope"), 404)


async def test_bad_list_queries_are_422(client: httpx.AsyncClient) -> None:
    _error(await client.get("/api/v1/tasks", params={"limit": 0}), 422, "limit")
    _error(await client.get("/api/v1/tasks", params={"status": "DONE"}), 422, "status")


async def test_job_rules_are_409_with_the_reason(client: httpx.AsyncClient, wav: bytes) -> None:
    answer = await _upload(client, wav)
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["job_id"]
    status = (await client.get(f"/api/v1/tasks/{job_id}/status")).json()
    assert status["status"] == "PENDING"  # no worker in this process: it stays queued

    _error(await client.delete(f"/api/v1/tasks/{job_id}"), 409, "cancel it before deleting")
    _error(await client.get(f"/api/v1/tasks/{job_id}/download"), 409, "no transcript")
    cancelled = await client.post(f"/api/v1/tasks/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["job_status"] == "CANCELLED"
    _error(await client.post(f"/api/v1/tasks/{job_id}/cancel"), 409, "already CANCELLED")
    assert (await client.delete(f"/api/v1/tasks/{job_id}")).status_code == 200
    _error(await client.get(f"/api/v1/tasks/{job_id}/status"), 404)


async def test_the_audio_is_served_whole_and_by_range(
    client: httpx.AsyncClient, wav: bytes
) -> None:
    job_id = (await _upload(client, wav)).json()["job_id"]
    whole = await client.get(f"/api/v1/tasks/{job_id}/audio")
    assert whole.status_code == 200 and whole.content == wav
    part = await client.get(f"/api/v1/tasks/{job_id}/audio", headers={"Range": "bytes=10-109"})
    assert part.status_code == 206 and part.content == wav[10:110]
    assert part.headers["content-range"] == f"bytes 10-109/{len(wav)}"
    _error(
        await client.get(f"/api/v1/tasks/{job_id}/audio", headers={"Range": "bytes=999999-"}), 416
    )


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("language", "klingon", "language"),
        ("prompt", "x" * 1001, "prompt"),
        ("temperature", "7", "temperature"),
        ("priority", "11", "priority"),
    ],
)
async def test_openai_errors_name_the_field_at_fault(
    client: httpx.AsyncClient, wav: bytes, field: str, value: str, param: str
) -> None:
    answer = await client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav)},
        data={"model": "whisper-1", field: value},
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error"), error
