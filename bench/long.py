"""(b) Long audio: ~10 min of speech through the service against what a user would run instead
on the same clip, in the same run, interleaved: bare sequential faster-whisper and
faster-whisper's own BatchedInferencePipeline at batch sizes 4 and 8 (same model, int8,
beam 5, VAD, `cpu_threads` = cores). Wall time, × real time, peak RSS (each competitor in its
own process; for the service, the worker process), WER against the text that was spoken."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import av
from tests.procs import ROOT, upload, wait_final
from tests.speech import cached_speech_paragraphs, long_speech, paragraphs, wer

from bench.common import PeakRss, median, running, table

COMMAND = ".venv/bin/python -m bench.run b"

# One competitor in a process of its own: load, say so, wait for "go", transcribe, print text.
COMPETITOR = """
import json, os, sys
from faster_whisper import BatchedInferencePipeline, WhisperModel
model = WhisperModel(sys.argv[1], device="cpu", compute_type="int8", cpu_threads=os.cpu_count())
batch = int(sys.argv[3])
print("loaded", flush=True)
sys.stdin.readline()
if batch:
    segments, _ = BatchedInferencePipeline(model).transcribe(
        sys.argv[2], language="en", beam_size=5, vad_filter=True, batch_size=batch
    )
else:
    segments, _ = model.transcribe(sys.argv[2], language="en", beam_size=5, vad_filter=True)
print(json.dumps(" ".join(s.text.strip() for s in segments)), flush=True)
"""

COMPETITORS = {"bare sequential": 0, "batched, batch 4": 4, "batched, batch 8": 8}


def competitor_run(clip: Path, batch: int) -> tuple[float, float, str]:
    process = subprocess.Popen(
        [sys.executable, "-c", COMPETITOR, str(ROOT / "models" / "base"), str(clip), str(batch)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdout.readline()
    with PeakRss(process.pid) as rss:
        started = time.perf_counter()
        process.stdin.write("go\n")
        process.stdin.flush()
        text = json.loads(process.stdout.readline())
        elapsed = time.perf_counter() - started
    process.wait()
    return elapsed, rss.peak_mb, text


def service_run(clip: Path) -> tuple[float, float, str]:
    """Upload → COMPLETED through `api` + one `worker` (default settings); peak RSS of the
    worker, the process that transcribes (the API is another ~100 MB wherever it runs)."""
    with running("api", workers=1) as svc, svc.client() as client:
        with PeakRss(svc.procs[1].pid) as rss:
            started = time.perf_counter()
            job_id = upload(client, clip, language="en")
            status = wait_final(client, job_id, timeout=900)
            elapsed = time.perf_counter() - started
        assert status["status"] == "COMPLETED", status
        text = client.get(f"/api/v1/tasks/{job_id}/result").json()["transcription"]
    return elapsed, rss.peak_mb, text


def clip_for(quick: bool) -> tuple[str, Path]:
    if quick:  # the first paragraphs only: about two minutes
        texts = paragraphs("long")[:4]
        return " ".join(texts), cached_speech_paragraphs(texts, fmt="mp3", speed=150)
    return long_speech()


def main(quick: bool = False) -> str:
    reference, clip = clip_for(quick)
    with av.open(str(clip)) as container:
        duration = float(container.duration or 0) / 1e6
    runs = 1 if quick else int(os.environ.get("BENCH_RUNS", "3"))
    names = ["service", *COMPETITORS]
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    for _ in range(runs):
        for name in names:
            if name == "service":
                elapsed, peak, text = service_run(clip)
            else:
                elapsed, peak, text = competitor_run(clip, COMPETITORS[name])
            results[name].append((elapsed, peak, wer(reference, text)))
            print(f"{name}: {elapsed:.1f} s, {peak:.0f} MB, WER {results[name][-1][2]:.3f}")

    def wall(name: str) -> float:
        return median([v[0] for v in results[name]])

    def peak(name: str) -> float:
        return max(v[1] for v in results[name])

    def error(name: str) -> float:
        return median([v[2] for v in results[name]])

    rows = [
        [
            name,
            f"{wall(name):.1f} s",
            f"{wall(name) / duration:.3f}",
            f"{peak(name):.0f} MB",
            f"{error(name):.3f}",
            ", ".join(f"{v[0]:.1f}/{v[1]:.0f}/{v[2]:.3f}" for v in results[name]),
        ]
        for name in names
    ]
    best = min(("batched, batch 4", "batched, batch 8"), key=wall)
    bare_ok = wall("service") <= 0.6 * wall("bare sequential")
    fast = wall("service") <= 0.75 * wall(best)
    small = peak("service") <= 0.6 * peak(best)
    accurate = error("service") <= error("bare sequential") + 0.01
    rows += [
        [
            "service / bare sequential",
            f"{wall('service') / wall('bare sequential'):.2f}×",
            "",
            f"{peak('service') / peak('bare sequential'):.2f}×",
            f"{error('service') - error('bare sequential'):+.3f}",
            f"time ≤ 0.6×: {'met' if bare_ok else 'MISSED'}; "
            f"WER ≤ bare + 0.01: {'met' if accurate else 'MISSED'}",
        ],
        [
            f"service / best pipeline ({best})",
            f"{wall('service') / wall(best):.2f}×",
            "",
            f"{peak('service') / peak(best):.2f}×",
            f"{error('service') - error(best):+.3f}",
            f"time ≤ 0.75×: {'met' if fast else 'MISSED'}; "
            f"peak RSS ≤ 0.6×: {'met' if small else 'MISSED'}",
        ],
    ]
    return table(
        f"(b) long audio, {duration:.0f} s clip, medians of {runs} interleaved runs",
        ["", "wall", "× real time", "peak RSS", "WER", "runs (wall s/MB/WER)"],
        rows,
        COMMAND + (" --quick" if quick else ""),
    )


if __name__ == "__main__":
    main("--quick" in sys.argv)
