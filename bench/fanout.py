"""(j) One long file across workers: a lone ~10 min file through `api` + one worker pinned to one
core, then + two workers pinned to a core each (`taskset`), in the same run; upload → COMPLETED,
the chunks each worker took, WER against the text that was spoken, on three clips of
different voices and speaking rates (one clip is not evidence; `--quick`: one ~90 s clip).
Each worker decodes with one single-threaded decoder (MAX_CONCURRENT_JOBS=1,
WHISPER_CPU_THREADS=1), as a one-core machine would. The lone worker does not split the
file (there is nobody to share it with), so the ratio is the two workers' time against what
one worker does by default."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import av
from tests.procs import upload, wait_final
from tests.speech import long_speech, wer

from bench.common import running, table
from bench.long import clip_for

COMMAND = ".venv/bin/python -m bench.run j"
ONE_CORE = {"MAX_CONCURRENT_JOBS": 1, "WHISPER_CPU_THREADS": 1}
# (voice, words per minute): (b)'s clip first, then a faster British and a slower US reading.
VOICES = [("en-us", 150), ("en-gb", 175), ("en-us", 125)]


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
    clips = [clip_for(True)] if quick else [long_speech(voice=v, speed=w) for v, w in VOICES]
    env: dict[str, object] = {"FANOUT_MIN_SECONDS": 60, "FANOUT_CHUNK_SECONDS": 20} if quick else {}
    rows: list[list[object]] = []
    for reference, clip in clips:
        with av.open(str(clip)) as container:
            duration = float(container.duration or 0) / 1e6
        one, one_text, _ = run(clip, 1, **env)
        two, two_text, taken = run(clip, 2, **env)
        one_wer, two_wer = wer(reference, one_text), wer(reference, two_text)
        ratio = two / one
        print(f"{clip.name} ({duration:.0f} s): {one:.1f} s → {two:.1f} s, {taken}", flush=True)
        rows.append(
            [
                f"{duration:.0f} s ({clip.suffix[1:]})",
                f"{one:.1f} s",
                f"{two:.1f} s",
                f"{ratio:.2f}×",
                f"{one_wer:.3f} → {two_wer:.3f}",
                taken,
                f"time ≤ 0.6×: {'met' if ratio <= 0.6 else 'MISSED'}; WER within 0.01: "
                f"{'met' if abs(two_wer - one_wer) <= 0.01 else 'MISSED'}",
            ]
        )
    return table(
        "(j) one long file across workers pinned to a core each (upload → COMPLETED), one run",
        [
            "clip",
            "1 worker, 1 core (does not split)",
            "2 workers, 1 core each",
            "2 / 1",
            "WER 1 → 2",
            "chunks per worker",
            "",
        ],
        rows,
        COMMAND + (" --quick" if quick else ""),
    )


if __name__ == "__main__":
    main("--quick" in sys.argv)
