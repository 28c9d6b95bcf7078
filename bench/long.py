"""(b) Long audio: ~10 min of speech through the service against bare sequential
faster-whisper on the same clip, in the same run: wall time, × real time, peak RSS, WER."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import av
from tests.procs import ROOT, upload, wait_final
from tests.speech import long_speech, wer

from bench.common import PeakRss, median, running, table

COMMAND = ".venv/bin/python -m bench.run b"

BARE = """
import json, sys
from faster_whisper import WhisperModel
model = WhisperModel(sys.argv[1], device="cpu", compute_type="int8")
print("loaded", flush=True)
sys.stdin.readline()
segments, _ = model.transcribe(sys.argv[2], language="en", beam_size=5, vad_filter=True)
print(json.dumps(" ".join(s.text.strip() for s in segments)), flush=True)
"""


def bare_run(clip: str) -> tuple[float, float, str]:
    process = subprocess.Popen(
        [sys.executable, "-c", BARE, str(ROOT / "models" / "base"), clip],
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


def service_run(clip_path: str) -> tuple[float, float, str]:
    with running("serve") as svc, svc.client() as client:
        with PeakRss(svc.procs[0].pid) as rss:
            started = time.perf_counter()
            job_id = upload(client, __import__("pathlib").Path(clip_path), language="en")
            status = wait_final(client, job_id, timeout=900)
            elapsed = time.perf_counter() - started
        assert status["status"] == "COMPLETED", status
        text = client.get(f"/api/v1/tasks/{job_id}/result").json()["transcription"]
    return elapsed, rss.peak_mb, text


def main(quick: bool = False) -> str:
    reference, clip = long_speech()
    with av.open(str(clip)) as container:
        duration = float(container.duration or 0) / 1e6
    runs = 1 if quick else 3
    results: dict[str, list[tuple[float, float, float]]] = {"service": [], "bare": []}
    for _ in range(runs):
        for name, run in (("service", service_run), ("bare", bare_run)):
            elapsed, peak, text = run(str(clip))
            results[name].append((elapsed, peak, wer(reference, text)))
    rows = []
    for name, values in results.items():
        wall = median([v[0] for v in values])
        rows.append(
            [
                name,
                f"{wall:.1f} s",
                f"{wall / duration:.3f}",
                f"{max(v[1] for v in values):.0f} MB",
                f"{median([v[2] for v in values]):.3f}",
                ", ".join(f"{v[0]:.1f}/{v[2]:.3f}" for v in values),
            ]
        )
    service_wall = median([v[0] for v in results["service"]])
    bare_wall = median([v[0] for v in results["bare"]])
    service_wer = median([v[2] for v in results["service"]])
    bare_wer = median([v[2] for v in results["bare"]])
    met = service_wall <= 0.6 * bare_wall and service_wer <= bare_wer + 0.02
    rows.append(
        [
            "service / bare",
            f"{service_wall / bare_wall:.2f}×",
            "",
            "",
            f"{service_wer - bare_wer:+.3f}",
            f"target ≤ 0.6× and WER ≤ bare + 0.02: {'met' if met else 'MISSED'}",
        ]
    )
    return table(
        f"(b) long audio, {duration:.0f} s clip, medians of {runs} runs",
        ["", "wall", "× real time", "peak RSS", "WER", "runs (wall/WER)"],
        rows,
        COMMAND,
    )


if __name__ == "__main__":
    main("--quick" in sys.argv)
