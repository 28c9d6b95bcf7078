"""Limits and backpressure (issue 12) against two real `api` processes sharing one job store:
what is counted in the store holds across processes; what is per process does not leak into
the other. No worker runs, so jobs stay PENDING and fill the queue caps."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from smap_stt.keys import parse_key
from tests.conftest import Clip, _delete_topology
from tests.procs import ROOT, SMAP_STT, Service, base_env, free_port, wait_http

pytestmark = pytest.mark.timeout(240)

LIMITS = {
    "RATE_LIMIT_PER_MINUTE": 8,
    "UPLOAD_MB_PER_HOUR": 1,
    "MAX_PENDING_JOBS_PER_KEY": 2,
    "MAX_PENDING_JOBS": 4,
    "MAX_CONCURRENT_UPLOADS": 1,
    "UPLOAD_DEADLINE_SECONDS": 3,
}


@dataclass(frozen=True)
class Apis:
    urls: list[str]
    """Two API processes on one SQLite job store."""
    keys: list[str]
    env: dict[str, str]


@pytest.fixture(scope="module")
def apis(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Apis]:
    data_dir = tmp_path_factory.mktemp("limits")
    first, second = free_port(), free_port()
    env = base_env(data_dir, API_PORT=first, **LIMITS)
    service = Service(env, data_dir, first)
    try:
        service.start("api")
        service.start("api", API_PORT=second)
        wait_http(f"http://127.0.0.1:{second}/docs", service.procs[1])
        keys = [_create_key(env, name) for name in "abcdef"]
        yield Apis([f"http://127.0.0.1:{first}", f"http://127.0.0.1:{second}"], keys, env)
    finally:
        service.stop_all()
        asyncio.run(_delete_topology(env["RABBITMQ_EXCHANGE_NAME"], env["RABBITMQ_QUEUE_NAME"]))


def _create_key(env: dict[str, str], name: str) -> str:
    done = subprocess.run(
        [*SMAP_STT, "keys", "create", name, "--max-priority", "10"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def _key(apis: Apis, index: int) -> dict[str, str]:
    return {"Authorization": f"Bearer {apis.keys[index]}"}


def _post(url: str, key: dict[str, str], data: bytes, name: str = "a.wav") -> httpx.Response:
    return httpx.post(
        f"{url}/api/v1/tasks/upload", files={"file": (name, data)}, headers=key, timeout=60
    )


def _wav(seconds: float) -> bytes:
    frames = int(16000 * seconds)
    data = bytes(range(256)) * (frames * 2 // 256) + bytes(frames * 2 % 256)
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
    return (
        b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + fmt
        + b"data" + struct.pack("<I", len(data)) + data
    )  # fmt: skip


def test_waiting_jobs_are_capped_per_key_and_in_all(apis: Apis, tiny_clip: Clip) -> None:
    a, b = apis.urls
    made: list[tuple[int, str]] = []
    clip = tiny_clip.path.read_bytes()
    for url in (a, b):  # the other process counts the first one too
        accepted = _post(url, _key(apis, 0), clip)
        assert accepted.status_code == 201, accepted.text
        made.append((0, accepted.json()["job_id"]))
    third = _post(a, _key(apis, 0), clip)
    assert third.status_code == 429, third.text
    assert "MAX_PENDING_JOBS_PER_KEY" in third.json()["detail"]
    assert int(third.headers["retry-after"]) > 0
    for path, field in (("/v1/audio/transcriptions", "file"), ("/asr", "audio_file")):
        other = httpx.post(  # the other dialects are no way around the limits
            f"{a}{path}", files={field: ("a.wav", clip)}, headers=_key(apis, 0), timeout=60
        )
        assert other.status_code == 429, (path, other.text)
        assert "MAX_PENDING_JOBS_PER_KEY" in other.text and other.headers["retry-after"]

    accepted = _post(b, _key(apis, 1), clip)
    assert accepted.status_code == 201
    made.append((1, accepted.json()["job_id"]))
    big = _wav(40)  # 1.28 MB: over UPLOAD_MB_PER_HOUR once received
    assert len(big) > 1024 * 1024
    accepted = _post(a, _key(apis, 2), big)  # the fourth job waiting
    assert accepted.status_code == 201
    made.append((2, accepted.json()["job_id"]))
    again = _post(b, _key(apis, 2), clip)
    assert again.status_code == 429
    assert "UPLOAD_MB_PER_HOUR" in again.json()["detail"]
    assert 0 < int(again.headers["retry-after"]) <= 3600

    full = _post(a, _key(apis, 1), clip)
    assert full.status_code == 503, full.text
    assert "MAX_PENDING_JOBS" in full.json()["detail"]
    assert int(full.headers["retry-after"]) > 0
    for index, job_id in made:  # cancelled jobs wait no more: the queue has room again
        cancelled = httpx.post(f"{a}/api/v1/tasks/{job_id}/cancel", headers=_key(apis, index))
        assert cancelled.status_code == 200
    assert _post(b, _key(apis, 1), clip).status_code == 201


def test_a_revoked_key_is_refused_by_every_process_at_once(apis: Apis) -> None:
    key = _key(apis, 5)
    assert [httpx.get(f"{url}/api/v1/tasks", headers=key).status_code for url in apis.urls] == [
        200,
        200,
    ]
    key_id = parse_key(apis.keys[5])
    assert key_id is not None
    subprocess.run(
        [*SMAP_STT, "keys", "revoke", key_id], env=apis.env, cwd=ROOT, check=True, timeout=60
    )
    codes = [httpx.get(f"{url}/api/v1/tasks", headers=key).status_code for url in apis.urls]
    assert codes == [401, 401]


def test_the_request_rate_is_counted_across_processes(apis: Apis) -> None:
    if time.time() % 60 > 50:  # keep the ten requests inside one minute's window
        time.sleep(61 - time.time() % 60)
    codes = [
        httpx.get(f"{apis.urls[i % 2]}/api/v1/tasks", headers=_key(apis, 3)).status_code
        for i in range(10)
    ]
    assert codes == [200] * 8 + [429] * 2, codes
    refused = httpx.get(f"{apis.urls[0]}/api/v1/tasks", headers=_key(apis, 3))
    assert "RATE_LIMIT_PER_MINUTE" in refused.json()["detail"]
    assert 0 < int(refused.headers["retry-after"]) <= 60
    assert httpx.get(f"{apis.urls[0]}/api/v1/tasks/health").status_code == 200  # never limited
    assert httpx.get(f"{apis.urls[1]}/api/v1/tasks", headers=_key(apis, 4)).status_code == 200


def test_a_slow_upload_holds_its_process_slot_until_the_deadline(apis: Apis) -> None:
    port = int(apis.urls[0].rsplit(":", 1)[1])
    key = apis.keys[4]
    boundary = "slowslowslow"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    ).encode()
    request = (
        f"POST /api/v1/tasks/upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(head) + 100000}\r\n\r\n"
    ).encode() + head
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
        slow.sendall(request)
        time.sleep(0.5)
        busy = _post(apis.urls[0], {"Authorization": f"Bearer {key}"}, b"x")
        assert busy.status_code == 503, busy.text
        assert "MAX_CONCURRENT_UPLOADS" in busy.json()["detail"]
        assert busy.headers["retry-after"]
        other = _post(apis.urls[1], {"Authorization": f"Bearer {key}"}, b"RIFF")  # its own slot
        assert other.status_code == 415
        reply = b""
        while b"\r\n\r\n" not in reply or not re.search(rb"\}\s*$", reply):
            with contextlib.suppress(OSError):
                slow.sendall(b"\0")  # a byte a second: never idle, always too slow
            slow.settimeout(1)
            try:
                chunk = slow.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            reply += chunk
    elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    assert b"UPLOAD_DEADLINE_SECONDS" in reply
    assert 2.5 < elapsed < 20, elapsed
    # The slot is free again.
    after = _post(apis.urls[0], {"Authorization": f"Bearer {key}"}, b"RIFF")
    assert after.status_code == 415
