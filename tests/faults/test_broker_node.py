"""Destructive broker cases, against the tests' own RabbitMQ node (`rabbit_node`): a broker
restart under load and RabbitMQ's consumer timeout. The shared broker is never touched."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import Clip
from tests.procs import ServiceFactory, completions, upload, wait_final, wait_running
from tests.rabbit_node import RabbitNode
from tests.speech import long_speech

pytestmark = pytest.mark.timeout(600)

TIMED_OUT = "timed out waiting for delivery acknowledgement"


def test_broker_restart_with_50_jobs(
    service: ServiceFactory, tiny_clip: Clip, rabbit_node: RabbitNode
) -> None:
    svc = service(MAX_CONCURRENT_JOBS=2, RABBITMQ_PORT=rabbit_node.port)
    svc.start("api")
    worker = svc.start("worker")
    with svc.client() as client:
        jobs = [upload(client, tiny_clip.path, language="en") for _ in range(50)]
        rabbit_node.restart_app(down_seconds=2)
        statuses = [wait_final(client, job, timeout=400) for job in jobs]
    assert [s["status"] for s in statuses] == ["COMPLETED"] * 50
    done = completions(worker)
    assert all(done[job] == 1 for job in jobs), done


@pytest.fixture(scope="module")
def ten_minutes() -> Clip:
    """~10 minutes of speech: a job that holds its message for several seconds however fast
    the CPU (the 75 s clip took ~2 s on an AVX-512 machine, under the timeout below)."""
    text, path = long_speech()
    return Clip(path, text)


@pytest.fixture
def short_consumer_timeout(rabbit_node: RabbitNode) -> Iterator[RabbitNode]:
    """A 3 s consumer timeout, checked every second, on the test node only (channels opened
    from now on use it), then the defaults back."""
    rabbit_node.set_consumer_timeout(3000)
    rabbit_node.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 1000).")
    try:
        yield rabbit_node
    finally:
        rabbit_node.set_consumer_timeout(None)
        rabbit_node.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 60000).")


def _timeouts(node: RabbitNode) -> int:
    return sum(path.read_text(errors="replace").count(TIMED_OUT) for path in node.logs())


def test_long_job_survives_the_consumer_timeout(
    service: ServiceFactory, ten_minutes: Clip, short_consumer_timeout: RabbitNode
) -> None:
    node = short_consumer_timeout
    before = _timeouts(node)
    svc = service(EARLY_ACK_AFTER=1, STALE_AFTER=30, RABBITMQ_PORT=node.port)
    svc.start("api")
    worker = svc.start("worker")
    with svc.client() as client:
        job_id = upload(client, ten_minutes.path, language="en")
        status = wait_final(client, job_id, timeout=300)
    assert status["status"] == "COMPLETED", status
    assert status["attempts"] == 1
    assert "acked its message early" in worker.log()
    assert _timeouts(node) == before  # the broker never took the message back


def test_without_the_early_ack_the_consumer_timeout_takes_the_channel(
    service: ServiceFactory, ten_minutes: Clip, short_consumer_timeout: RabbitNode
) -> None:
    """The control case: the test above proves something only if, with the same broker and
    job, a worker that holds its message unacked really loses its channel."""
    node = short_consumer_timeout
    before = _timeouts(node)
    svc = service(EARLY_ACK_AFTER=3600, STALE_AFTER=30, RABBITMQ_PORT=node.port)
    svc.start("api")
    worker = svc.start("worker")
    with svc.client() as client:
        job_id = upload(client, ten_minutes.path, language="en")
        wait_running(client, job_id, above=0, timeout=120)
        deadline = time.monotonic() + 60  # 3 s timeout + a 1 s tick: well within a minute
        while _timeouts(node) == before and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _timeouts(node) > before, "the broker never timed out the unacked delivery"
        client.post(f"/api/v1/tasks/{job_id}/cancel")
    assert "acked its message early" not in worker.log()
