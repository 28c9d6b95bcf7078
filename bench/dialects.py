"""(h) The OpenAI endpoint: its per-request overhead against the seed's upload + poll (every
0.1 s) on the same ~20 s clip, interleaved in one run; then the longest file it answers within
its wait (SYNC_WAIT_SECONDS, default 600 s), up a ladder of lengths until one times out."""

from __future__ import annotations

import time
from pathlib import Path

import av
import httpx
import numpy as np
from tests.procs import upload
from tests.speech import cached_speech, long_speech, paragraphs

from bench.common import DATA, median, running, table, write_wav

COMMAND = ".venv/bin/python -m bench.run h"


def _tiled(ten: Path, seconds: int) -> Path:
    from smap_stt.stt.audio import decode_audio

    source = (np.clip(decode_audio(ten), -1, 1) * 32767).astype(np.int16)
    return write_wav(DATA / f"dialects-{seconds}.wav", seconds, source=source)


def main(quick: bool = False) -> str:
    import openai

    runs = 2 if quick else 5
    clip = cached_speech(paragraphs("english")[1])
    seed_times: list[float] = []
    openai_times: list[float] = []
    seed_processing: list[float] = []
    openai_processing: list[float] = []
    with running("serve") as svc, svc.client() as client:
        api = openai.OpenAI(base_url=f"{svc.url}/v1", api_key="unused", timeout=900, max_retries=0)

        def seed() -> float:
            started = time.perf_counter()
            job_id = upload(client, clip, language="en")
            while True:
                status = client.get(f"/api/v1/tasks/{job_id}/status").json()
                if status["status"] in ("COMPLETED", "FAILED"):
                    break
                time.sleep(0.1)
            client.get(f"/api/v1/tasks/{job_id}/result").raise_for_status()
            elapsed = time.perf_counter() - started
            assert status["status"] == "COMPLETED", status
            seed_processing.append(status["processing_time_seconds"])
            return elapsed

        def via_openai() -> float:
            started = time.perf_counter()
            with clip.open("rb") as audio:
                raw = api.audio.transcriptions.with_raw_response.create(
                    model="whisper-1", file=audio, language="en"
                )
            raw.parse()
            elapsed = time.perf_counter() - started
            job = client.get(f"/api/v1/tasks/{raw.headers['X-Job-Id']}/status").json()
            openai_processing.append(job["processing_time_seconds"])
            return elapsed

        seed()  # warm-up
        via_openai()
        seed_processing.clear()
        openai_processing.clear()
        for _ in range(runs):
            seed_times.append(seed())
            openai_times.append(via_openai())

        ladder_rows = []
        _, ten = long_speech()
        lengths = [600] if quick else [600, 3600, 10800]
        for seconds in lengths:
            path = ten if seconds == 600 else _tiled(ten, seconds)
            with av.open(str(path)) as container:
                duration = float(container.duration or 0) / 1e6
            started = time.perf_counter()
            with path.open("rb") as audio:
                response = httpx.post(
                    f"{svc.url}/v1/audio/transcriptions",
                    files={"file": (path.name, audio)},
                    data={"model": "whisper-1", "language": "en"},
                    timeout=900,
                )
            elapsed = time.perf_counter() - started
            outcome = "answered" if response.status_code == 200 else f"{response.status_code}"
            size_mb = path.stat().st_size / 1e6
            ladder_rows.append([f"{duration / 60:.1f} min", f"{size_mb:.1f} MB", outcome, elapsed])
            if response.status_code != 200:
                break

    seed_wall, openai_wall = median(seed_times), median(openai_times)
    seed_overhead = seed_wall - median(seed_processing)
    openai_overhead = openai_wall - median(openai_processing)
    rows: list[list[object]] = [
        [
            "seed upload + poll every 0.1 s + result",
            f"{seed_wall:.2f} s",
            f"{median(seed_processing):.2f} s",
            f"{seed_overhead:.2f} s",
        ],
        [
            "OpenAI client, json (waits server-side)",
            f"{openai_wall:.2f} s",
            f"{median(openai_processing):.2f} s",
            f"{openai_overhead:.2f} s",
        ],
        ["difference (OpenAI − seed)", f"{openai_wall - seed_wall:+.2f} s", "", ""],
    ]
    for length, size, outcome, elapsed in ladder_rows:
        rows.append([f"OpenAI, {length} ({size})", f"{elapsed:.1f} s", outcome, ""])
    return table(
        f"(h) OpenAI endpoint overhead ({runs} interleaved runs, medians) and the longest "
        "file answered within SYNC_WAIT_SECONDS=600",
        ["request", "wall", "processing (worker)", "overhead (wall − processing)"],
        rows,
        COMMAND,
    )
