"""(d) Ingest: uploads per second and latency at concurrency 32 with 1 MB audio files, workers
idle and busy, against a bare FastAPI/uvicorn endpoint that only streams to disk, and the
floor under any API that queues a job (bench/bare_upload.py: hash, SQLite row, publish)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time

import httpx
import numpy as np
from tests.procs import ROOT, free_port, upload, wait_http
from tests.speech import cached_speech, paragraphs

from bench.common import DATA, running, table, write_wav

COMMAND = ".venv/bin/python -m bench.run d"
CONCURRENCY = 32


async def _hammer(url: str, data: bytes, count: int) -> tuple[float, list[float]]:
    # The multipart body is built once: encoding it per request costs the client ~1.5 ms of
    # CPU on the same cores and capped the bare endpoint (found by a second benchmark run).
    # Each of the CONCURRENCY senders has a client of its own with one connection: one shared
    # pool of 32 checks every idle connection (a getpeername and a poll each) whenever a
    # request starts or ends, so the faster the server, the more client CPU per upload
    # (issue 14: 3.6 ms per upload against the bare endpoint, 2.1 ms against the API; it held
    # the bare endpoint to ~270/s, which serves ~500/s to this client). The clients are made
    # before the clock starts (each loads the CA certificates: ~0.8 s for 32).
    body, content_type = _multipart(data)
    headers = {"content-type": content_type}
    latencies: list[float] = []
    left = count

    async def sender(client: httpx.AsyncClient) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            started = time.perf_counter()
            response = await client.post(url, content=body, headers=headers)
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 201, response.text

    limits = httpx.Limits(max_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(timeout=120, limits=limits))
            for _ in range(min(CONCURRENCY, count))
        ]
        started = time.perf_counter()
        await asyncio.gather(*(sender(client) for client in clients))
        return time.perf_counter() - started, latencies


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "smap-stt-bench-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="language"\r\n\r\nen\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + data + tail, f"multipart/form-data; boundary={boundary}"


def _row(name: str, elapsed: float, latencies: list[float], count: int) -> list[object]:
    p50, p99 = np.percentile(latencies, [50, 99])
    return [name, f"{count / elapsed:.1f}", f"{p50 * 1000:.0f} ms", f"{p99 * 1000:.0f} ms"]


def _bare_row(name: str, target: str, data: bytes, count: int) -> list[object]:
    """`target` (an app of bench/bare_upload.py) under uvicorn in a process of its own."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", target, "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/docs")
        elapsed, latencies = asyncio.run(_hammer(f"http://127.0.0.1:{port}/upload", data, count))
        return _row(name, elapsed, latencies, count)
    finally:
        server.terminate()
        server.wait()


def main(quick: bool = False) -> str:
    count = 64 if quick else 400
    speech = np.frombuffer(cached_speech(paragraphs("english")[0]).read_bytes()[44:], np.int16)
    clip = write_wav(DATA / "ingest-1mb.wav", 32.0, source=speech[::1])
    data = clip.read_bytes()
    rows = []
    for name, target in (
        ("bare streaming endpoint", "bench.bare_upload:app"),
        ("floor: bare + sha256 + SQLite row + RabbitMQ publish", "bench.bare_upload:floor"),
    ):
        rows.append(_bare_row(name, target, data, count))
    for busy in (False, True):
        with running("api", workers=1 if busy else 0) as svc:
            if busy:
                with svc.client() as client:
                    long = cached_speech(" ".join(paragraphs("long")[:6]))
                    for _ in range(3):
                        upload(client, long, language="en", priority=10)
            url = f"{svc.url}/api/v1/tasks/upload"
            elapsed, latencies = asyncio.run(_hammer(url, data, count))
            rows.append(
                _row(
                    f"smap-stt api, workers {'busy' if busy else 'idle'}", elapsed, latencies, count
                )
            )
    bare_rate = float(str(rows[0][1]))
    for row in rows[1:]:
        row.append(f"{float(str(row[1])) / bare_rate:.0%} of bare uploads/s")
    rows[0].append("")
    return table(
        f"(d) ingest, {count} uploads of {clip.stat().st_size / 1e6:.1f} MB at "
        f"concurrency {CONCURRENCY}",
        ["endpoint", "uploads/s", "p50", "p99", ""],
        rows,
        COMMAND,
    )


if __name__ == "__main__":
    main("--quick" in sys.argv)
