"""(c) Throughput: 40 jobs of ~20 s audio through `api` + workers on RabbitMQ, for worker
counts and thread settings that make sense on this machine: jobs per minute, cores busy."""

from __future__ import annotations

import sys
import time

import psutil
from tests.procs import upload, wait_final
from tests.speech import cached_speech, paragraphs

from bench.common import running, table

COMMAND = ".venv/bin/python -m bench.run c"

# (worker processes, MAX_CONCURRENT_JOBS, WHISPER_CPU_THREADS)
SETTINGS = [(1, 1, 0), (1, 2, 0), (2, 1, 1)]


def one(workers: int, concurrent: int, threads: int, jobs: int) -> list[object]:
    clip = cached_speech(paragraphs("english")[1])
    env = {"MAX_CONCURRENT_JOBS": concurrent, "WHISPER_CPU_THREADS": threads}
    with running("api", workers=workers, **env) as svc, svc.client() as client:
        psutil.cpu_percent()
        started = time.perf_counter()
        ids = [upload(client, clip, language="en") for _ in range(jobs)]
        statuses = [wait_final(client, job_id, timeout=1800) for job_id in ids]
        elapsed = time.perf_counter() - started
        busy = psutil.cpu_percent()
    assert all(s["status"] == "COMPLETED" for s in statuses)
    per_worker = sorted({s["worker_id"] for s in statuses})
    label = f"{workers} worker × {concurrent} job(s) × {threads or 'auto'} thread(s)"
    return [
        label,
        f"{jobs / elapsed * 60:.1f}",
        f"{busy:.0f} %",
        f"{elapsed:.1f} s",
        len(per_worker),
    ]


def main(quick: bool = False) -> str:
    jobs = 8 if quick else 40
    rows = [one(*setting, jobs) for setting in SETTINGS]
    return table(
        f"(c) throughput, {jobs} jobs of ~20 s audio",
        ["setting", "jobs/min", "CPU busy", "wall", "workers used"],
        rows,
        COMMAND,
    )


if __name__ == "__main__":
    main("--quick" in sys.argv)
