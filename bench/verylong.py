"""(f) Very long audio: the worker's peak memory on a 1 hour clip against the 10 minute clip."""

from __future__ import annotations

import sys
import time

import av
import numpy as np
from tests.procs import upload, wait_final
from tests.speech import long_speech

from bench.common import DATA, PeakRss, running, table, write_wav

COMMAND = ".venv/bin/python -m bench.run f"


def _samples(path: str) -> np.ndarray:
    """The 10 minute clip as 16 kHz int16 (once, to tile the 1 hour clip from)."""
    from smap_stt.stt.audio import decode_audio

    audio = decode_audio(__import__("pathlib").Path(path))
    return (np.clip(audio, -1, 1) * 32767).astype(np.int16)


def _peak(clip: str) -> tuple[float, float, str]:
    with running("serve") as svc, svc.client() as client, PeakRss(svc.procs[0].pid) as rss:
        started = time.perf_counter()
        job_id = upload(client, __import__("pathlib").Path(clip), language="en")
        status = wait_final(client, job_id, timeout=3600)
        elapsed = time.perf_counter() - started
    return rss.peak_mb, elapsed, status["status"]


def main(quick: bool = False) -> str:
    _, ten = long_speech()
    with av.open(str(ten)) as container:
        ten_seconds = float(container.duration or 0) / 1e6
    hour_seconds = 1200 if quick else 3600
    hour = write_wav(DATA / f"verylong-{hour_seconds}.wav", hour_seconds, source=_samples(str(ten)))
    rows = []
    for label, clip, seconds in (
        ("10 min", str(ten), ten_seconds),
        (f"{hour_seconds / 60:.0f} min", str(hour), hour_seconds),
    ):
        peak, elapsed, status = _peak(clip)
        rows.append([label, f"{seconds:.0f} s", status, f"{elapsed:.1f} s", f"{peak:.0f} MB"])
    growth = float(str(rows[1][4]).split()[0]) - float(str(rows[0][4]).split()[0])
    rows.append(
        [
            "difference",
            "",
            "",
            "",
            f"{growth:+.0f} MB ({'met' if growth <= 50 else 'MISSED'}: target ≤ +50 MB, issue 14)",
        ]
    )
    return table(
        "(f) very long audio, peak RSS of `smap-stt serve` (API + worker)",
        ["clip", "audio", "status", "wall", "peak RSS"],
        rows,
        COMMAND,
    )


if __name__ == "__main__":
    main("--quick" in sys.argv)
