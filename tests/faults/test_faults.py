"""Fault injection: every accepted job ends in exactly one final state, no result is written
twice, and the consumer keeps consuming, whatever breaks around it."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import uuid

import aio_pika
import pytest

from tests.conftest import AMQP_URL, Clip
from tests.faults.proxy import TcpProxy
from tests.procs import ServiceFactory, completions, upload, wait_final, wait_running
from tests.speech import wer

pytestmark = pytest.mark.timeout(600)


async def _publish_raw(exchange: str, routing_key: str, bodies: list[bytes]) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        target = await channel.get_exchange(exchange)
        for body in bodies:
            await target.publish(aio_pika.Message(body, delivery_mode=2), routing_key=routing_key)


async def _queue_depth(name: str) -> int:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return queue.declaration_result.message_count or 0


def test_sigkill_mid_job_five_times(service: ServiceFactory, long_clip: Clip) -> None:
    svc = service(MAX_ATTEMPTS=10)
    svc.start("api")
    workers = [svc.start("worker", name="w0")]
    with svc.client() as client:
        job_id = upload(client, long_clip.path, language="en")
        for round_ in range(5):
            wait_running(client, job_id, above=0)
            workers[-1].kill()
            workers.append(svc.start("worker", name=f"w{round_ + 1}"))
        status = wait_final(client, job_id, timeout=300)
        result = client.get(f"/api/v1/tasks/{job_id}/result").json()
    assert status["status"] == "COMPLETED", status
    assert status["attempts"] == 6
    assert wer(long_clip.text, result["transcription"]) <= 0.15
    assert completions(*workers) == {job_id: 1}


def test_job_that_kills_every_worker_fails_after_max_attempts(
    service: ServiceFactory, long_clip: Clip
) -> None:
    svc = service(MAX_ATTEMPTS=2)
    svc.start("api")
    worker = svc.start("worker", name="w0")
    with svc.client() as client:
        job_id = upload(client, long_clip.path, language="en")
        for round_ in range(2):
            wait_running(client, job_id, above=0)
            worker.kill()
            worker = svc.start("worker", name=f"w{round_ + 1}")
        status = wait_final(client, job_id, timeout=120)
    assert status["status"] == "FAILED"
    assert "gave up after 2 attempts" in status["error_message"]


def test_broker_down_during_uploads_uses_the_outbox(
    service: ServiceFactory, tiny_clip: Clip
) -> None:
    proxy = TcpProxy("127.0.0.1", 5672).start()
    try:
        svc = service()
        svc.start("api", RABBITMQ_PORT=proxy.port)
        worker = svc.start("worker")
        proxy.cut()
        with svc.client() as client:
            answers = []
            for _ in range(20):
                with tiny_clip.path.open("rb") as audio:
                    answers.append(
                        client.post(
                            "/api/v1/tasks/upload",
                            files={"file": ("t.wav", audio)},
                            data={"language": "en"},
                        )
                    )
            assert [a.status_code for a in answers] == [201] * 20, answers[-1].text
            assert "as soon as it is back" in answers[-1].json()["message"]
            jobs = [a.json()["job_id"] for a in answers]
            pending = client.get(f"/api/v1/tasks/{jobs[0]}/status").json()
            assert pending["status"] == "PENDING"
            proxy.restore()
            statuses = [wait_final(client, job, timeout=300) for job in jobs]
        assert [s["status"] for s in statuses] == ["COMPLETED"] * 20
        assert all(count == 1 for count in completions(worker).values())
    finally:
        proxy.stop()


def test_poison_messages_are_dead_lettered_and_consuming_goes_on(
    service: ServiceFactory, tiny_clip: Clip
) -> None:
    svc = service()
    svc.start("api")
    worker = svc.start("worker")
    exchange, queue = svc.env["RABBITMQ_EXCHANGE_NAME"], svc.env["RABBITMQ_QUEUE_NAME"]
    bodies: list[bytes] = []
    for i in range(50):
        kind = i % 5
        if kind == 0:
            bodies.append(b"\xff\xfe not json")
        elif kind == 1:
            bodies.append(b"[1, 2, 3]")
        elif kind == 2:
            bodies.append(json.dumps({"job_id": str(uuid.uuid4())}).encode())
        elif kind == 3:
            bodies.append(json.dumps({"job_id": 42, "language": None}).encode())
        else:
            bodies.append(json.dumps({"job_id": "x" * 5000}).encode())
    asyncio.run(_publish_raw(exchange, "stt.job", bodies))
    deadline = time.monotonic() + 60
    while asyncio.run(_queue_depth(f"{queue}.dead")) < 50:
        assert time.monotonic() < deadline, "poison messages did not reach the dead-letter queue"
        time.sleep(0.2)
    with svc.client() as client:
        job_id = upload(client, tiny_clip.path, language="en")
        assert wait_final(client, job_id)["status"] == "COMPLETED"
    assert worker.popen is not None and worker.popen.poll() is None


def test_same_message_twice_runs_once(service: ServiceFactory, short_clip: Clip) -> None:
    svc = service(MAX_CONCURRENT_JOBS=2)
    svc.start("api")
    worker = svc.start("worker")
    with svc.client() as client:
        job_id = upload(client, short_clip.path, language="en")
        body = json.dumps(
            {"job_id": job_id, "language": "en", "model": "base", "filename": "x.wav"}
        ).encode()
        asyncio.run(_publish_raw(svc.env["RABBITMQ_EXCHANGE_NAME"], "stt.job", [body, body]))
        status = wait_final(client, job_id)
        time.sleep(2)  # let the duplicates arrive after the job finished, too
        asyncio.run(_publish_raw(svc.env["RABBITMQ_EXCHANGE_NAME"], "stt.job", [body]))
        time.sleep(2)
        status = client.get(f"/api/v1/tasks/{job_id}/status").json()
    assert status["status"] == "COMPLETED"
    assert status["attempts"] == 1
    assert completions(worker) == {job_id: 1}


def test_expired_message_fails_its_job(service: ServiceFactory, tiny_clip: Clip) -> None:
    svc = service(QUEUE_MESSAGE_TTL=2)
    svc.start("api")
    with svc.client() as client:
        job_id = upload(client, tiny_clip.path, language="en")
        time.sleep(4)  # no worker: the message expires in the queue
        svc.start("worker")
        status = wait_final(client, job_id, timeout=60)
    assert status["status"] == "FAILED"
    assert status["error_message"].startswith("expired")


def test_cancel_queued_and_running_jobs(service: ServiceFactory, long_clip: Clip) -> None:
    svc = service(MAX_CONCURRENT_JOBS=1)
    svc.start("api")
    worker = svc.start("worker")
    with svc.client() as client:
        running = upload(client, long_clip.path, language="en")
        queued = upload(client, long_clip.path, language="en")
        wait_running(client, running, above=0)
        answer = client.post(f"/api/v1/tasks/{queued}/cancel")
        assert answer.status_code == 200 and answer.json()["job_status"] == "CANCELLED"
        started = time.monotonic()
        assert client.post(f"/api/v1/tasks/{running}/cancel").status_code == 200
        worker.wait_for_log(f"[job {running}] stopped", timeout=5)
        assert time.monotonic() - started < 5
        again = client.post(f"/api/v1/tasks/{running}/cancel")
        assert again.status_code == 409
        time.sleep(2)
        assert client.get(f"/api/v1/tasks/{queued}/status").json()["started_at"] is None
        assert client.get(f"/api/v1/tasks/{running}/status").json()["status"] == "CANCELLED"
        assert client.delete(f"/api/v1/tasks/{running}").status_code == 200
        assert client.get(f"/api/v1/tasks/{running}/status").status_code == 404
    assert f"[job {queued}] started" not in worker.log()


def test_delete_refuses_active_jobs_and_removes_files(
    service: ServiceFactory, tiny_clip: Clip, long_clip: Clip
) -> None:
    svc = service()
    svc.start("serve")
    with svc.client() as client:
        job_id = upload(client, tiny_clip.path, language="en")
        wait_final(client, job_id)
        assert list((svc.data_dir / "blobs").rglob(f"{job_id}*"))
        assert client.delete(f"/api/v1/tasks/{job_id}").status_code == 200
        assert not list((svc.data_dir / "blobs").rglob(f"{job_id}*"))
        # 75 s of speech cannot finish between these requests: the job is surely active.
        active = upload(client, long_clip.path, language="en")
        answer = client.delete(f"/api/v1/tasks/{active}")
        assert answer.status_code == 409, answer.text
        assert "cancel it before deleting it" in answer.json()["detail"]
        status = client.get(f"/api/v1/tasks/{active}/status").json()["status"]
        assert status in ("PENDING", "PROCESSING")
        assert list((svc.data_dir / "blobs").rglob(f"{active}*"))  # nothing was removed
        assert client.post(f"/api/v1/tasks/{active}/cancel").status_code == 200


def test_resume_from_checkpoints_after_sigkill(service: ServiceFactory, long_clip: Clip) -> None:
    svc = service(WHISPER_CHUNK_SECONDS=15)
    svc.start("api")
    first = svc.start("worker", name="first")
    with svc.client() as client:
        job_id = upload(client, long_clip.path, language="en")
        wait_running(client, job_id, above=60, timeout=300)
        first.kill()
        second = svc.start("worker", name="second")
        status = wait_final(client, job_id, timeout=300)
        result = client.get(f"/api/v1/tasks/{job_id}/result").json()
    assert status["status"] == "COMPLETED"
    match = re.search(r"resuming after (\d+) checkpointed chunk", second.log())
    assert match and int(match.group(1)) >= 2, second.log()[-2000:]
    assert wer(long_clip.text, result["transcription"]) <= 0.15
    starts = [segment["start"] for segment in result["segments"]]
    assert starts == sorted(starts)


def test_worker_death_after_early_ack_is_recovered(
    service: ServiceFactory, long_clip: Clip
) -> None:
    svc = service(EARLY_ACK_AFTER=1, STALE_AFTER=4)
    svc.start("api")
    first = svc.start("worker", name="first")
    with svc.client() as client:
        job_id = upload(client, long_clip.path, language="en")
        first.wait_for_log("acked its message early", timeout=120)
        first.kill()
        second = svc.start("worker", name="second")
        status = wait_final(client, job_id, timeout=300)
    assert status["status"] == "COMPLETED", status
    assert status["attempts"] == 2
    assert completions(first, second) == {job_id: 1}


def test_sigterm_serve_then_restart_finishes_everything(
    service: ServiceFactory, tiny_clip: Clip
) -> None:
    svc = service(MAX_CONCURRENT_JOBS=1, SHUTDOWN_GRACE_SECONDS=0)
    serve = svc.start("serve")
    with svc.client() as client:
        jobs = [upload(client, tiny_clip.path, language="en") for _ in range(5)]
        serve.signal(signal.SIGTERM)
        assert serve.popen is not None and serve.popen.wait(60) == 0
        svc.start("serve", name="again")
        statuses = [wait_final(client, job, timeout=120) for job in jobs]
    assert [s["status"] for s in statuses] == ["COMPLETED"] * 5
