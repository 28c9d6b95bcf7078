"""Storage faults on the production backends: S3 (SeaweedFS) or MongoDB (SecantusDB) goes away
while jobs run. Every accepted job still ends in exactly one final state, and none is
completed twice."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest

from tests.conftest import Clip
from tests.procs import (
    FINAL,
    ServiceFactory,
    completions,
    upload,
    wait_final,
    wait_running,
)
from tests.servers import MongoServer, S3Server
from tests.speech import wer


def _status(client: httpx.Client, job_id: str) -> dict[str, Any]:
    status: dict[str, Any] = client.get(f"/api/v1/tasks/{job_id}/status").json()
    return status


def _wait_any_running(client: httpx.Client, jobs: list[str], timeout: float = 120) -> str:
    """The first of `jobs` seen transcribing (PROCESSING with progress above 0)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job_id in jobs:
            status = _status(client, job_id)
            if status["status"] == "PROCESSING" and status["progress"] > 0:
                return job_id
            assert status["status"] in ("PENDING", "PROCESSING"), status
        time.sleep(0.05)
    raise AssertionError("no job started transcribing")


@pytest.mark.timeout(420)
def test_blob_store_down_mid_job_is_retried_and_completes_once(
    production_env: dict[str, str],
    service: ServiceFactory,
    long_clip: Clip,
    s3_server: S3Server,
) -> None:
    svc = service(**production_env, MAX_ATTEMPTS=10, RETRY_DELAYS=2, WHISPER_CHUNK_SECONDS=30)
    svc.start("api")
    worker = svc.start("worker")
    with svc.client() as client:
        job_id = upload(client, long_clip.path, language="en")
        try:
            wait_running(client, job_id, above=0)  # audio fetched, result not yet stored
            s3_server.kill()
            worker.wait_for_log(f"[job {job_id}] attempt 1 failed: s3 is unavailable", timeout=240)
            assert _status(client, job_id)["status"] in ("PENDING", "PROCESSING")
        finally:
            s3_server.start()
        status = wait_final(client, job_id, timeout=240)
        result = client.get(f"/api/v1/tasks/{job_id}/result").json()
        document = httpx.get(result["download_url"], timeout=10).json()
    assert status["status"] == "COMPLETED", status
    assert status["attempts"] >= 2
    assert completions(worker) == {job_id: 1}
    assert wer(long_clip.text, result["transcription"]) <= 0.15
    assert document["text"] == result["transcription"]
    # The retry kept the transcribed chunks: the outage cost no transcription work.
    resumed = re.findall(r"resuming after (\d+) checkpointed chunk", worker.log())
    assert resumed and int(resumed[-1]) >= 2, worker.log()[-3000:]


@pytest.mark.timeout(420)
def test_database_down_briefly_while_jobs_run(
    production_env: dict[str, str],
    service: ServiceFactory,
    short_clip: Clip,
    mongo_server: MongoServer,
) -> None:
    # Down for longer than a job takes: attempts end, claims and checkpoints fail meanwhile,
    # and heartbeats go stale (STALE_AFTER) so the recovery loop joins in afterwards.
    svc = service(**production_env, MAX_CONCURRENT_JOBS=2, RETRY_DELAYS=2, STALE_AFTER=10)
    svc.start("api")
    workers = [svc.start("worker", name=f"w{n}") for n in range(2)]
    with svc.client() as client:
        jobs = [upload(client, short_clip.path, language="en") for _ in range(8)]
        try:
            _wait_any_running(client, jobs)
            mongo_server.kill()  # a crash, not a polite stop
            time.sleep(12)
        finally:
            mongo_server.start()
        statuses = {job: wait_final(client, job, timeout=300) for job in jobs}
        time.sleep(5)  # a final state never changes again
        again = {job: _status(client, job)["status"] for job in jobs}
    assert all(s["status"] in FINAL for s in statuses.values())
    assert again == {job: s["status"] for job, s in statuses.items()}
    assert [s["status"] for s in statuses.values()] == ["COMPLETED"] * 8, statuses
    assert completions(*workers) == dict.fromkeys(jobs, 1)
    log = "\n".join(worker.log() for worker in workers)
    # The outage reached the running attempts: a write of theirs failed (an attempt that
    # failed, or a heartbeat that could not be recorded), and at least one job needed a
    # second attempt (a retry, or the recovery sweep's takeover of a stale one). Which of
    # them happens depends on where each attempt was when the database died.
    assert re.search(r"(attempt 1 failed|heartbeat not recorded): mongodb is unavailable", log), (
        log[-4000:]
    )
    assert "started attempt 2" in log, log[-4000:]
