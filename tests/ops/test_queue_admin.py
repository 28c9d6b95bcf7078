"""`smap-stt queue ...` against RabbitMQ and the job store: stats, dead letters, requeue-dead
(a new job per dead letter; the failed one stays FAILED) and purge (drained jobs FAILED, none
left PENDING)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import Clip
from tests.procs import ROOT, SMAP_STT, Service, upload, wait_final


def cli(svc: Service, *args: str) -> str:
    return svc.cli(*args)


def statuses(client: httpx.Client) -> dict[str, dict[str, object]]:
    jobs = client.get("/api/v1/tasks", params={"limit": 100}).json()["jobs"]
    return {job["job_id"]: job for job in jobs}


@pytest.fixture(scope="module")
def svc(module_service: Callable[..., Service]) -> Service:
    # Messages expire after 10 s in the queue: with no worker running they become dead letters.
    # The worker runs two jobs at once, so requeued jobs never wait that long.
    svc = module_service(QUEUE_MESSAGE_TTL=10, MAX_CONCURRENT_JOBS=2)
    svc.start("api")
    return svc


def test_dead_letters_are_requeued_as_new_jobs(svc: Service, tiny_clip: Clip) -> None:
    with svc.client() as client:
        old = [upload(client, tiny_clip.path) for _ in range(2)]
        sent = time.monotonic()
        stats = cli(svc, "queue", "stats")
        assert "work          2" in stats and "consumers: 0" in stats
        assert old[0] in stats  # the oldest waiting job
        time.sleep(max(0, sent + 11 - time.monotonic()))  # both expire into the dead letters
        worker = svc.start("worker")  # marks their jobs FAILED (expired)
        for job_id in old:
            status = wait_final(client, job_id)
            assert status["status"] == "FAILED" and "expired" in status["error_message"]
        dead = cli(svc, "queue", "dead")
        assert all(job_id in dead for job_id in old) and "expired" in dead

        requeued = cli(svc, "queue", "requeue-dead", "--all")
        pairs = dict(line.split(" -> ") for line in requeued.strip().splitlines())
        assert set(pairs) == set(old)
        for old_id, new_id in pairs.items():
            status = wait_final(client, new_id)
            assert status["status"] == "COMPLETED" and status["retry_of"] == old_id
            assert client.get(f"/api/v1/tasks/{old_id}/status").json()["status"] == "FAILED"
        assert "no dead letters" in cli(svc, "queue", "dead")
        assert "dead          0" in cli(svc, "queue", "stats")
        assert not [j for j in statuses(client).values() if j["status"] == "PENDING"]
        worker.stop()


def test_purge_fails_every_waiting_job(svc: Service, tiny_clip: Clip) -> None:
    with svc.client() as client:
        waiting = [upload(client, tiny_clip.path) for _ in range(3)]
        refused = subprocess.run(
            [*SMAP_STT, "queue", "purge"], env=svc.env, cwd=ROOT, capture_output=True, text=True
        )
        assert refused.returncode != 0 and "--yes" in refused.stderr
        assert "purged 3 job(s)" in cli(svc, "queue", "purge", "--yes")
        for job_id in waiting:
            status = client.get(f"/api/v1/tasks/{job_id}/status").json()
            assert (status["status"], status["error_message"]) == ("FAILED", "purged by operator")
        assert "work          0" in cli(svc, "queue", "stats")
        assert not [j for j in statuses(client).values() if j["status"] == "PENDING"]


def test_embedded_queue_through_the_job_store(
    module_service: Callable[..., Service], tiny_clip: Clip
) -> None:
    """`--embedded` (beside `serve`) reads and changes the job store, not RabbitMQ."""
    svc = module_service()
    svc.start("serve")
    with svc.client() as client:
        job_id = upload(client, tiny_clip.path)
        assert wait_final(client, job_id)["status"] == "COMPLETED"
        stats = cli(svc, "queue", "stats", "--embedded")
        assert "work          0" in stats and "job store" in stats
        assert "no dead letters" in cli(svc, "queue", "dead", "--embedded")
        assert "purged 0 job(s)" in cli(svc, "queue", "purge", "--yes", "--embedded")
        assert client.get(f"/api/v1/tasks/{job_id}/status").json()["status"] == "COMPLETED"
