"""One long file across many workers (issue 14): real RabbitMQ, worker processes, the real model.

The ~75 s clip is split into chunks of 10–15 s (FANOUT_* lowered so that a clip this short
fans out); each worker decodes with one single-threaded decoder, as on a one-core machine.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import Clip
from tests.procs import (
    Proc,
    Service,
    ServiceFactory,
    completions,
    cpu_after,
    upload,
    wait_final,
    wait_running,
)
from tests.speech import wer

pytestmark = pytest.mark.timeout(600)

FANOUT = {
    "FANOUT_MIN_SECONDS": 30,
    "FANOUT_CHUNK_SECONDS": 15,
    "MAX_CONCURRENT_JOBS": 1,
    "WHISPER_CPU_THREADS": 1,
}
TRANSCRIBED = re.compile(r"\[job (\S+)\] chunk (\d+) \(\S+\) transcribed in")


def _chunks_done(*workers: Proc) -> dict[str, list[int]]:
    """Worker name → the chunk indices it transcribed (from its log)."""
    return {
        worker.name: [int(match[1]) for match in TRANSCRIBED.findall(worker.log())]
        for worker in workers
    }


def _chunk_audio_left(svc: Service, job_id: str) -> list[Path]:
    folder = Path(svc.env["BLOB_DIR"]) / "chunks" / job_id
    return sorted(folder.glob("*")) if folder.exists() else []


def _start(service: ServiceFactory, workers: int, **env: object) -> tuple[Service, list[Proc]]:
    svc = service(**{**FANOUT, **env})
    svc.start("api")
    return svc, [svc.start("worker", name=f"w{n}") for n in range(workers)]


def test_one_long_file_is_shared_by_two_workers(
    service: ServiceFactory, long_clip: Clip, production_env: dict[str, str]
) -> None:
    """On MongoDB and S3: both workers transcribe chunks of the one file, the job completes
    exactly once with the whole text in order, and no chunk audio is left behind."""
    svc, workers = _start(service, 2, **production_env)
    with svc.client() as client:
        job_id = upload(client, long_clip.path, language="en")
        status = wait_final(client, job_id, timeout=400)
        assert status["status"] == "COMPLETED", status
        result = client.get(f"/api/v1/tasks/{job_id}/result", params={"format": "verbose_json"})
    assert result.status_code == 200, result.text
    transcript = result.json()
    svc.stop_all()  # the "completed" line is logged just after the job is
    done = _chunks_done(*workers)
    assert all(done.values()), done  # every worker took part
    indices = Counter(index for chunks in done.values() for index in chunks)
    assert sorted(indices) == list(range(status["chunks_total"])), indices
    assert status["chunks_completed"] == status["chunks_total"] >= 4
    assert completions(*workers) == {job_id: 1}
    assert wer(long_clip.text, transcript["text"]) < 0.2, transcript["text"]
    starts = [segment["start"] for segment in transcript["segments"]]
    assert starts == sorted(starts) and starts[-1] < transcript["duration"]
    assert "split" in "".join(w.log() for w in workers)  # the coordinator said what it did


def test_a_worker_killed_mid_chunk_loses_only_that_chunk(
    service: ServiceFactory, long_clip: Clip
) -> None:
    svc, workers = _start(service, 2)
    with svc.client() as client:
        job_id = upload(client, long_clip.path, language="en")
        wait_running(client, job_id)
        coordinator = _wait_coordinator(workers)
        helper = next(worker for worker in workers if worker is not coordinator)
        helper.wait_for_log("transcribing chunk", timeout=120)
        helper.kill()  # mid-chunk: its unacked chunk message goes back to the queue
        status = wait_final(client, job_id, timeout=400)
        text = client.get(f"/api/v1/tasks/{job_id}/result").json()["transcription"]
    svc.stop_all()
    assert status["status"] == "COMPLETED", status
    assert completions(*workers) == {job_id: 1}
    assert wer(long_clip.text, text) < 0.2, text
    killed = helper.log().count("transcribing chunk") - len(TRANSCRIBED.findall(helper.log()))
    assert killed == 1  # the one it held when it died, then done by the coordinator's process
    assert _chunk_audio_left(svc, job_id) == []


def test_cancel_stops_every_chunk_of_the_job(service: ServiceFactory, long_clip: Clip) -> None:
    svc, workers = _start(service, 2, FANOUT_CHUNK_SECONDS=10)
    with svc.client() as client:
        job_id = upload(client, long_clip.path, language="en")
        for worker in workers:
            worker.wait_for_log("transcribing chunk", timeout=120)
        _wait_some_chunk_done(client, job_id)
        processes = [psutil.Process(worker.pid) for worker in workers]
        assert client.post(f"/api/v1/tasks/{job_id}/cancel").status_code == 200
        assert wait_final(client, job_id)["status"] == "CANCELLED"
        after = [cpu_after(process) for process in processes]
        status = client.get(f"/api/v1/tasks/{job_id}/status").json()
    seconds = [
        float(match) for w in workers for match in re.findall(r"transcribed in ([\d.]+) s", w.log())
    ]
    per_chunk = max(seconds)
    left = status["chunks_total"] - status["chunks_completed"]
    print(f"after the cancel: {after}; a chunk took up to {per_chunk:.1f} s; {left} left")
    assert left >= 4  # finishing would have cost the workers that many chunks more
    for _, cpu in after:
        assert cpu <= 2 * per_chunk  # the chunk each held, and the watch's second
    # Removed by the coordinator once its heartbeat hears of the cancel (every 3 s at most).
    deadline = time.monotonic() + 15
    while _chunk_audio_left(svc, job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _chunk_audio_left(svc, job_id) == []
    time.sleep(3)  # chunk messages still queued are dropped as they come, not transcribed
    done_now = sum(len(chunks) for chunks in _chunks_done(*workers).values())
    time.sleep(3)
    assert sum(len(chunks) for chunks in _chunks_done(*workers).values()) == done_now


def test_a_file_stays_one_unit_when_short_or_alone_and_queue_stats_show_chunks(
    service: ServiceFactory, short_clip: Clip, long_clip: Clip
) -> None:
    """An 18 s file is below FANOUT_MIN_SECONDS, and a long one has no second worker to share
    it with: no chunk messages for either. `queue stats` and /metrics name the chunk queue."""
    svc, workers = _start(service, 1, WORKER_METRICS_PORT=0)
    with svc.client() as client:
        for clip in (short_clip, long_clip):
            job_id = upload(client, clip.path, language="en")
            assert wait_final(client, job_id)["status"] == "COMPLETED"
        metrics = client.get("/metrics").text
    assert "chunk" not in workers[0].log()
    assert 'smap_stt_queue_messages{queue="chunks"}' in metrics
    stats = svc.cli("queue", "stats")
    assert re.search(r"chunks\s+0\s", stats), stats


def _wait_coordinator(workers: list[Proc], timeout: float = 120) -> Proc:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in workers:
            if "started attempt" in worker.log():
                return worker
        time.sleep(0.1)
    raise AssertionError("no worker started the job")


def _wait_some_chunk_done(client: httpx.Client, job_id: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/api/v1/tasks/{job_id}/status").json()
        if status["chunks_completed"] >= 1:
            return
        assert status["status"] in ("PENDING", "PROCESSING"), status
        time.sleep(0.1)
    raise AssertionError(f"no chunk of {job_id} finished: {json.dumps(status)}")
