"""(e) A 1 GB upload: how much the API process's memory grows while it streams it."""

from __future__ import annotations

import sys
import time

from tests.procs import upload

from bench.common import DATA, PeakRss, running, table, write_wav

COMMAND = ".venv/bin/python -m bench.run e"


def main(quick: bool = False) -> str:
    seconds = 600 if quick else 32_800  # 16 kHz 16-bit mono: 32,800 s ≈ 1.05 GB
    clip = write_wav(DATA / f"big-{seconds}.wav", seconds)
    size_mb = clip.stat().st_size / 2**20
    with running("api", MAX_UPLOAD_SIZE_MB=int(size_mb) + 100) as svc, svc.client() as client:
        api = svc.procs[0]
        time.sleep(1)
        with PeakRss(api.pid) as rss:
            time.sleep(0.5)
            before = rss.peak_mb
            started = time.perf_counter()
            job_id = upload(client, clip, language="en")
            elapsed = time.perf_counter() - started
            time.sleep(0.5)
        client.post(f"/api/v1/tasks/{job_id}/cancel")
    growth = rss.peak_mb - before
    rows = [
        [
            f"{size_mb:.0f} MB",
            f"{elapsed:.1f} s",
            f"{before:.0f} MB",
            f"{rss.peak_mb:.0f} MB",
            f"{growth:+.0f} MB",
            "met" if growth <= 64 else "MISSED",
        ]
    ]
    return table(
        "(e) big upload to `smap-stt api`",
        ["upload", "time", "API RSS before", "API peak RSS", "growth", "≤ 64 MB"],
        rows,
        COMMAND,
    )


if __name__ == "__main__":
    main("--quick" in sys.argv)
