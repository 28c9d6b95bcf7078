"""(d) Ingest: uploads per second and latency at concurrency 32 with 1 MB audio files, workers
idle and busy, against a bare FastAPI/uvicorn endpoint that only streams to disk."""

from __future__ import annotations

import asyncio
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
    body, content_type = _multipart(data)
    latencies: list[float] = []
    slots = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one() -> None:
            async with slots:
                started = time.perf_counter()
                response = await client.post(
                    url, content=body, headers={"content-type": content_type}
                )
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 201, response.text

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
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


def main(quick: bool = False) -> str:
    count = 64 if quick else 400
    speech = np.frombuffer(cached_speech(paragraphs("english")[0]).read_bytes()[44:], np.int16)
    clip = write_wav(DATA / "ingest-1mb.wav", 32.0, source=speech[::1])
    data = clip.read_bytes()
    rows = []
    port = free_port()
    bare = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.bare_upload:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/docs")
        elapsed, latencies = asyncio.run(_hammer(f"http://127.0.0.1:{port}/upload", data, count))
        rows.append(_row("bare streaming endpoint", elapsed, latencies, count))
    finally:
        bare.terminate()
        bare.wait()
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
    bare_rate = float(rows[0][1])
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
