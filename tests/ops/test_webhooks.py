"""Webhooks against the real service: signed, retried with one delivery id, recorded in the
status, delivered after a worker is SIGKILLed, and never in the way of transcription."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import pytest

from tests.conftest import Clip
from tests.ops.conftest import SECRET, Receiver
from tests.procs import ROOT, SMAP_STT, Service, upload, wait_final

HOOKS = {
    "WEBHOOK_SECRET": SECRET,
    "WEBHOOK_ALLOW_PRIVATE": "true",
    "WEBHOOK_RETRY_DELAYS": "1,1,1",
    "OUTBOX_INTERVAL": "0.5",
}


@pytest.fixture(scope="module")
def serve(module_service: Callable[..., Service]) -> Service:
    svc = module_service(**HOOKS, WEBHOOK_TIMEOUT_SECONDS=40)
    svc.start("serve")
    return svc


def test_signed_retried_and_recorded(
    serve: Service, receiver: Callable[..., Receiver], tiny_clip: Clip
) -> None:
    hook = receiver(answers=[500, 500]).start()
    with serve.client() as client:
        job_id = upload(client, tiny_clip.path, callback_url=hook.url)
        assert wait_final(client, job_id)["status"] == "COMPLETED"
        hits = hook.wait_hits(3)
        time.sleep(2.5)  # a fourth attempt would come after 1 s
        assert len(hook.hits) == 3
        assert all(hit.verified() for hit in hits)
        assert len({hit.headers["x-smap-delivery"] for hit in hits}) == 1
        body = hits[-1].json()
        assert body["event"] == "job.completed" == hits[-1].headers["x-smap-event"]
        assert (body["job_id"], body["status"]) == (job_id, "COMPLETED")
        assert body["result_url"].endswith(f"/api/v1/tasks/{job_id}/result")
        assert body["duration_seconds"] > 0
        webhook = client.get(f"/api/v1/tasks/{job_id}/status").json()["webhook"]
    assert webhook["url"] == f"http://127.0.0.1:{hook.port}/hook"  # no token in the status
    assert [a.get("status_code") for a in webhook["attempts"]] == [500, 500, 200]
    assert all(a["duration_ms"] >= 0 for a in webhook["attempts"])
    assert webhook["delivered_at"] is not None

    # `smap-stt webhooks redeliver` sends it again now, as a new delivery.
    result = subprocess.run(
        [*SMAP_STT, "webhooks", "redeliver", job_id],
        env=serve.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "delivered" in result.stdout, result.stdout + result.stderr
    again = hook.wait_hits(4)[-1]
    assert again.verified() and again.json()["job_id"] == job_id
    assert again.headers["x-smap-delivery"] != hits[0].headers["x-smap-delivery"]


def test_a_410_stops_at_once_and_a_receiver_that_keeps_failing_is_given_up(
    serve: Service, receiver: Callable[..., Receiver], tiny_clip: Clip
) -> None:
    """WEBHOOK_RETRY_DELAYS=1,1,1: a 410 is the last attempt; 500s get the first try and three
    retries, then no more. Both say so in the status; a cancelled job's event says it too."""
    gone = receiver(answers=[410]).start()
    failing = receiver(answers=[500] * 10).start()
    cancelled = receiver().start()
    with serve.client() as client:
        first = upload(client, tiny_clip.path, callback_url=gone.url)
        second = upload(client, tiny_clip.path, callback_url=failing.url)
        third = upload(client, tiny_clip.path, callback_url=cancelled.url, priority=0)
        client.post(f"/api/v1/tasks/{third}/cancel")
        for job_id in (first, second, third):
            wait_final(client, job_id)
        gone.wait_hits(1)
        failing.wait_hits(4)
        cancelled.wait_hits(1)
        time.sleep(2.5)  # any further attempt would come within a second
        assert (len(gone.hits), len(failing.hits), len(cancelled.hits)) == (1, 4, 1)
        status = {j: client.get(f"/api/v1/tasks/{j}/status").json() for j in (first, second, third)}
    for job_id, codes in ((first, [410]), (second, [500] * 4)):
        webhook = status[job_id]["webhook"]
        assert [a.get("status_code") for a in webhook["attempts"]] == codes
        assert webhook["delivered_at"] is None and webhook["next_attempt_at"] is None
    if status[third]["status"] == "CANCELLED":  # the worker may have finished it first
        assert cancelled.hits[0].json()["event"] == "job.cancelled"


def test_forged_signature_does_not_verify(
    serve: Service, receiver: Callable[..., Receiver], tiny_clip: Clip
) -> None:
    """The receiver check above is not vacuous: a changed body fails it."""
    hook = receiver().start()
    with serve.client() as client:
        upload(client, tiny_clip.path, callback_url=hook.url)
        hit = hook.wait_hits(1)[0]
    assert hit.verified()
    hit.body = hit.body.replace(b"COMPLETED", b"FAILED")
    assert not hit.verified()


def test_private_target_refused_without_the_switch(
    module_service: Callable[..., Service], tiny_clip: Clip
) -> None:
    svc = module_service(WEBHOOK_SECRET=SECRET)
    svc.start("api")
    with svc.client() as client, tiny_clip.path.open("rb") as audio:
        for url in ("http://127.0.0.1:9/x", "http://169.254.169.254/latest", "ftp://h.example/"):
            audio.seek(0)
            answer = client.post(
                "/api/v1/tasks/upload",
                files={"file": (tiny_clip.path.name, audio)},
                data={"callback_url": url},
            )
            assert answer.status_code == 422, answer.text
            assert "callback_url" in answer.json()["detail"]
        assert client.get("/api/v1/tasks").json()["count"] == 0


def test_hanging_receiver_does_not_slow_the_next_job(
    serve: Service, receiver: Callable[..., Receiver], tiny_clip: Clip
) -> None:
    hook = receiver(hang=40).start()
    with serve.client() as client:
        first = upload(client, tiny_clip.path, callback_url=hook.url)
        wait_final(client, first)
        hook.wait_hits(1)  # the receiver holds this request for 40 s
        started = time.monotonic()
        second = upload(client, tiny_clip.path)
        assert wait_final(client, second, timeout=35)["status"] == "COMPLETED"
        elapsed = time.monotonic() - started
        status = client.get(f"/api/v1/tasks/{first}/status").json()
    assert status["webhook"]["attempts"] == []  # still waiting for the hanging receiver
    assert elapsed < 35


def test_delivered_after_the_worker_is_killed(
    module_service: Callable[..., Service], receiver: Callable[..., Receiver], tiny_clip: Clip
) -> None:
    svc = module_service(**HOOKS)
    svc.start("api")
    worker = svc.start("worker")
    hook = receiver()  # not listening yet: the first attempts fail
    with svc.client() as client:
        job_id = upload(client, tiny_clip.path, callback_url=hook.url)
        assert wait_final(client, job_id)["status"] == "COMPLETED"
        worker.kill()  # SIGKILL, right after the job completed
        hook.start()
        hit = hook.wait_hits(1, timeout=60)[0]
        assert hit.json()["job_id"] == job_id and hit.verified()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            webhook = client.get(f"/api/v1/tasks/{job_id}/status").json()["webhook"]
            if webhook["delivered_at"]:
                break
            time.sleep(0.2)
    assert webhook["delivered_at"] is not None
    assert webhook["attempts"][-1]["status_code"] == 200
