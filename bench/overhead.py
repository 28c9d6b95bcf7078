"""(a) Overhead: upload → COMPLETED through the service against bare faster-whisper on the same
~20 s clip, same model and settings, interleaved, warm (both have the model loaded)."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.procs import ROOT, upload
from tests.speech import cached_speech, paragraphs

from bench.common import median, running, table

COMMAND = ".venv/bin/python -m bench.run a"


def main(quick: bool = False) -> str:
    from faster_whisper import WhisperModel

    runs = 2 if quick else 7
    clip = cached_speech(paragraphs("english")[1])
    bare_model = WhisperModel(str(ROOT / "models" / "base"), device="cpu", compute_type="int8")

    def bare() -> float:
        started = time.perf_counter()
        segments, _ = bare_model.transcribe(str(clip), language="en", beam_size=5, vad_filter=True)
        " ".join(segment.text for segment in segments)
        return time.perf_counter() - started

    service_times, bare_times, processing = [], [], []
    with running("serve") as svc, svc.client() as client:

        def through_service() -> float:
            started = time.perf_counter()
            job_id = upload(client, clip, language="en")
            while True:
                status = client.get(f"/api/v1/tasks/{job_id}/status").json()
                if status["status"] in ("COMPLETED", "FAILED"):
                    break
                time.sleep(0.02)
            assert status["status"] == "COMPLETED", status
            processing.append(status["processing_time_seconds"])
            return time.perf_counter() - started

        through_service()  # warm-up: first job pays for lazy imports
        bare()
        for _ in range(runs):
            service_times.append(through_service())
            bare_times.append(bare())
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "smap_stt.cli", "transcribe", str(clip), "--language", "en"],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    cli = time.perf_counter() - started
    service, bare_median = median(service_times), median(bare_times)
    target = bare_median * 1.05 + 0.3
    rows = [
        [
            "service: upload → COMPLETED",
            f"{service:.2f} s",
            f"runs {', '.join(f'{t:.2f}' for t in service_times)}",
        ],
        ["  of which the worker's processing", f"{median(processing):.2f} s", ""],
        [
            "bare faster-whisper, warm",
            f"{bare_median:.2f} s",
            f"runs {', '.join(f'{t:.2f}' for t in bare_times)}",
        ],
        [
            "ratio service / bare",
            f"{service / bare_median:.2f}×",
            f"target ≤ {target:.2f} s: {'met' if service <= target else 'MISSED'}",
        ],
        ["`smap-stt transcribe` (process start + load + transcribe)", f"{cli:.2f} s", ""],
    ]
    return table(
        f"(a) overhead, {clip.name}, medians of {runs} interleaved runs",
        ["what", "time", "notes"],
        rows,
        COMMAND,
    )


if __name__ == "__main__":
    main("--quick" in sys.argv)
