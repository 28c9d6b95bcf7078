"""(i) Short files on every core: a lone job of 15–30 s through the service against bare
faster-whisper, warm, `cpu_threads` = cores, beam 5, VAD, on three clips of different lengths,
texts and voices that are not in the repository's fixtures, interleaved.

Two figures per clip: the worker's `processing_time_seconds` (claim to final, as the status
reports it) against bare, and upload → COMPLETED as a client sees it polling every 0.1 s."""

from __future__ import annotations

import os
import sys
import time

import av
from tests.procs import ROOT, upload
from tests.speech import cached_speech, wer

from bench.common import median, running, table

COMMAND = ".venv/bin/python -m bench.run i"
POLL = 0.1

# (voice, words per minute, text): about 16, 23 and 29 seconds of speech.
CLIPS = [
    (
        "en-us",
        135,
        "The harbour opens at six in the morning, when the fishing boats come back with the "
        "night's catch. Traders wait on the quay with crates of ice, and by eight o'clock most "
        "of the fish has already been sold to restaurants across the city.",
    ),
    (
        "en-gb",
        150,
        "Before you replace the battery, switch the device off and unplug the charger. Remove "
        "the four screws on the back panel, lift the cover gently, and disconnect the old "
        "battery by pulling the plug straight out, never by the wires. Fit the new one the "
        "same way and close the cover. Charge it fully before the first use, which usually "
        "takes about three hours.",
    ),
    (
        "en-us",
        165,
        "Our library will be closed on Monday for the public holiday. Books that are due that "
        "day can be returned on Tuesday without a fine. The reading room reopens at nine, and "
        "the new exhibition about the history of the railway starts on Wednesday afternoon, "
        "with a short talk by the curator at four o'clock. Entry is free, and children are "
        "welcome. Please remember that the car park behind the building is being resurfaced, "
        "so visitors should use the one on Station Road, which is a short walk away.",
    ),
]


def main(quick: bool = False) -> str:
    from faster_whisper import WhisperModel

    runs = 2 if quick else 7
    clips = [(text, cached_speech(text, voice=voice, speed=speed)) for voice, speed, text in CLIPS]
    if quick:
        clips = clips[:1]
    cores = os.cpu_count() or 1
    bare_model = WhisperModel(
        str(ROOT / "models" / "base"), device="cpu", compute_type="int8", cpu_threads=cores
    )

    def bare(path: object) -> tuple[float, str]:
        started = time.perf_counter()
        segments, _ = bare_model.transcribe(str(path), language="en", beam_size=5, vad_filter=True)
        text = " ".join(segment.text.strip() for segment in segments)
        return time.perf_counter() - started, text

    rows: list[list[object]] = []
    with running("serve") as svc, svc.client() as client:

        def service(path: object) -> tuple[float, float, str]:
            started = time.perf_counter()
            job_id = upload(client, path, language="en")  # type: ignore[arg-type]
            while True:
                status = client.get(f"/api/v1/tasks/{job_id}/status").json()
                if status["status"] in ("COMPLETED", "FAILED"):
                    break
                time.sleep(POLL)
            elapsed = time.perf_counter() - started
            assert status["status"] == "COMPLETED", status
            text = client.get(f"/api/v1/tasks/{job_id}/result").json()["transcription"]
            return elapsed, float(status["processing_time_seconds"]), text

        service(clips[0][1])  # warm-up: the first job pays for lazy imports
        bare(clips[0][1])
        for reference, path in clips:
            with av.open(str(path)) as container:
                seconds = float(container.duration or 0) / 1e6
            through, processing, bare_times = [], [], []
            service_text = bare_text = ""
            for _ in range(runs):
                elapsed, worker, service_text = service(path)
                through.append(elapsed)
                processing.append(worker)
                bare_time, bare_text = bare(path)
                bare_times.append(bare_time)
            b, p, t = median(bare_times), median(processing), median(through)
            verdict = (
                f"processing ≤ bare: {'met' if p <= b else 'MISSED'}; "
                f"upload → COMPLETED ≤ bare + 0.15 s: {'met' if t <= b + 0.15 else 'MISSED'}"
            )
            rows.append(
                [
                    f"{seconds:.1f} s",
                    f"{b:.2f} s",
                    f"{p:.2f} s ({p / b:.2f}×)",
                    f"{t:.2f} s ({t - b:+.2f} s)",
                    f"{wer(reference, service_text):.3f} / {wer(reference, bare_text):.3f}",
                    verdict,
                ]
            )
    return table(
        f"(i) a lone short job, medians of {runs} interleaved runs, polling every {POLL} s",
        ["clip", "bare (warm)", "processing", "upload → COMPLETED", "WER service/bare", ""],
        rows,
        COMMAND + (" --quick" if quick else ""),
    )


if __name__ == "__main__":
    main("--quick" in sys.argv)
