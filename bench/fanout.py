"""(j) One long file across workers: a lone ~10 min file through `api` + one worker pinned to one
core, then + two workers pinned to a core each (`taskset`), in the same run; upload → COMPLETED,
the chunks each worker took, WER against the text that was spoken. Each worker decodes with
one single-threaded decoder (MAX_CONCURRENT_JOBS=1, WHISPER_CPU_THREADS=1), as a one-core
machine would. The lone worker does not split the file (there is nobody to share it with), so
the ratio is the two workers' time against what one worker does by default."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import av
from tests.procs import upload, wait_final
from tests.speech import wer

from bench.common import running, table
from bench.long import clip_for

COMMAND = ".venv/bin/python -m bench.run j"
ONE_CORE = {"MAX_CONCURRENT_JOBS": 1, "WHISPER_CPU_THREADS": 1}


def _pin(pid: int, core: int) -> None:
    """Every thread of `pid` (the model's decoders exist by now) and those it starts later."""
    subprocess.run(["taskset", "-a", "-cp", str(core), str(pid)], check=True, capture_output=True)


def run(clip: Path, workers: int, **env: object) -> tuple[float, str, list[int]]:
    with running("api", workers=workers, **ONE_CORE, **env) as svc, svc.client() as client:
        for core, proc in enumerate(svc.procs[1:]):
            _pin(proc.pid, core)
        started = time.perf_counter()
        job_id = upload(client, clip, language="en")
        status = wait_final(client, job_id, timeout=1800)
        elapsed = time.perf_counter() - started
        assert status["status"] == "COMPLETED", status
        text = client.get(f"/api/v1/tasks/{job_id}/result").json()["transcription"]
        taken = [len(re.findall(r"chunk \d+ \(\S+\) transcribed", p.log())) for p in svc.procs[1:]]
    return elapsed, text, taken


def main(quick: bool = False) -> str:
    reference, clip = clip_for(quick)  # (b)'s clip: ~10 min, or ~90 s with --quick
    with av.open(str(clip)) as container:
        duration = float(container.duration or 0) / 1e6
    env: dict[str, object] = {"FANOUT_MIN_SECONDS": 60, "FANOUT_CHUNK_SECONDS": 20} if quick else {}
    cases = [
        ("1 worker, 1 core (a lone worker does not split)", 1, env),
        ("2 workers, 1 core each", 2, env),
    ]
    results = []
    for name, workers, extra in cases:
        elapsed, text, taken = run(clip, workers, **extra)
        results.append((name, elapsed, wer(reference, text), taken))
        print(f"{name}: {elapsed:.1f} s, WER {results[-1][2]:.3f}, chunks {taken}", flush=True)
    one, two = results
    ratio = two[1] / one[1]
    rows: list[list[object]] = [
        [name, f"{elapsed:.1f} s", f"{elapsed / duration:.3f}", f"{error:.3f}", taken]
        for name, elapsed, error, taken in results
    ]
    rows.append(
        [
            "2 workers / 1 worker",
            f"{ratio:.2f}×",
            "",
            f"{two[2] - one[2]:+.3f}",
            f"time ≤ 0.6×: {'met' if ratio <= 0.6 else 'MISSED'}; WER within 0.01: "
            f"{'met' if abs(two[2] - one[2]) <= 0.01 else 'MISSED'}",
        ]
    )
    return table(
        f"(j) one {duration:.0f} s file across workers pinned to a core each, one run",
        ["", "upload → COMPLETED", "× real time", "WER", "chunks per worker"],
        rows,
        COMMAND + (" --quick" if quick else ""),
    )


if __name__ == "__main__":
    main("--quick" in sys.argv)
