"""The JobQueue contract, run against every queue (the `job_queue` fixture): the embedded queue of
`serve` and RabbitMQ (the shared broker, with queue and exchange names of the test's own)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import cast

import pytest

from smap_stt.jobs import JobMessage
from smap_stt.queue.base import Delivery, Handler, JobQueue, decode_message
from smap_stt.queue.embedded import EmbeddedQueue
from smap_stt.queue.rabbitmq import RabbitQueue
from smap_stt.store.base import JobStore
from tests.conftest import AMQP_URL, delete_topology
from tests.faults.proxy import TcpProxy

RETRY_DELAY = 1


def rabbit_queue(url: str, tag: str) -> RabbitQueue:
    return RabbitQueue(
        url,
        exchange=f"test-{tag}",
        routing_key="jobs",
        queue=f"test-{tag}",
        message_ttl_seconds=3600,
        retry_delays=[RETRY_DELAY],
    )


@dataclass
class QueueFactory:
    """Makes queue objects on the same queue, as separate processes would open it."""

    kind: str
    make: Callable[[], JobQueue]
    opened: list[JobQueue] = field(default_factory=list)

    async def open(self, queue: JobQueue | None = None) -> JobQueue:
        queue = queue or self.make()
        await queue.open()
        self.opened.append(queue)
        return queue


@pytest.fixture(params=["embedded", "rabbitmq"])
async def queues(request: pytest.FixtureRequest) -> AsyncIterator[QueueFactory]:
    tag = uuid.uuid4().hex[:8]
    if request.param == "embedded":
        shared = EmbeddedQueue()  # one per process: every "open" is the same object
        factory = QueueFactory("embedded", lambda: shared)
    else:
        factory = QueueFactory("rabbitmq", lambda: rabbit_queue(AMQP_URL, tag))
    yield factory
    for queue in factory.opened:
        await queue.close()
    if factory.kind == "rabbitmq":
        await delete_topology(AMQP_URL, f"test-{tag}", f"test-{tag}")


def message(job_id: str) -> JobMessage:
    return JobMessage(job_id=job_id, language="en", model="base", filename=f"{job_id}.wav")


class Recorder:
    """A handler that records what it was given and settles as told."""

    def __init__(self, settle: Callable[[Delivery], object] | None = None) -> None:
        self.deliveries: list[Delivery] = []
        self.arrived = asyncio.Condition()
        self._settle = settle

    @property
    def ids(self) -> list[str]:
        return [decode_message(d.body).job_id for d in self.deliveries]

    async def __call__(self, delivery: Delivery) -> None:
        async with self.arrived:
            self.deliveries.append(delivery)
            self.arrived.notify_all()
        if self._settle is not None:
            result = self._settle(delivery)
            if asyncio.iscoroutine(result):
                await result

    async def wait_for(self, count: int, within: float = 10) -> None:
        async with asyncio.timeout(within), self.arrived:
            await self.arrived.wait_for(lambda: len(self.deliveries) >= count)


def acking() -> Recorder:
    return Recorder(lambda delivery: delivery.ack())


async def consume(queue: JobQueue, handler: Handler, prefetch: int = 10) -> None:
    await queue.consume(handler, prefetch=prefetch)


async def test_published_messages_are_delivered_and_acked_ones_are_gone(
    queues: QueueFactory,
) -> None:
    queue = await queues.open()
    for job_id in ("a", "b", "c"):
        await queue.publish(message(job_id), priority=5)
    assert await queue.waiting() == 3
    recorder = acking()
    await consume(queue, recorder)
    await recorder.wait_for(3)
    assert sorted(recorder.ids) == ["a", "b", "c"]
    assert not any(d.redelivered or d.retry_of is not None for d in recorder.deliveries)
    await asyncio.sleep(0.5)
    assert await queue.waiting() == 0
    assert len(recorder.deliveries) == 3  # acked: never delivered again


async def test_higher_priority_is_delivered_first(queues: QueueFactory) -> None:
    queue = await queues.open()
    for job_id, priority in (("low", 0), ("high", 10), ("mid", 5), ("low-2", 0)):
        await queue.publish(message(job_id), priority=priority)
    recorder = acking()
    await consume(queue, recorder, prefetch=1)
    await recorder.wait_for(4)
    assert recorder.ids == ["high", "mid", "low", "low-2"]  # same priority: first in, first out


async def test_prefetch_bounds_the_unsettled_deliveries(queues: QueueFactory) -> None:
    queue = await queues.open()
    for n in range(5):
        await queue.publish(message(f"job-{n}"), priority=5)
    recorder = Recorder()  # settles nothing until told
    await consume(queue, recorder, prefetch=2)
    await recorder.wait_for(2)
    await asyncio.sleep(1)
    assert len(recorder.deliveries) == 2
    await recorder.deliveries[0].ack()
    await recorder.wait_for(3)
    await asyncio.sleep(0.5)
    assert len(recorder.deliveries) == 3
    for delivery in recorder.deliveries[1:]:
        await delivery.ack()
    await recorder.wait_for(5)
    for delivery in recorder.deliveries[3:]:
        await delivery.ack()


async def test_a_dead_lettered_message_is_not_delivered_again(queues: QueueFactory) -> None:
    queue = await queues.open()
    dead = Recorder(lambda delivery: delivery.ack())
    await queue.consume_dead_events(dead)
    await queue.publish(message("poison"), priority=5)
    recorder = Recorder(lambda delivery: delivery.dead_letter("test"))
    await consume(queue, recorder)
    await recorder.wait_for(1)
    if queues.kind == "rabbitmq":  # the broker keeps it, and tells the dead-event consumers
        await dead.wait_for(1)
        assert dead.ids == ["poison"] and dead.deliveries[0].death_reason == "rejected"
    await asyncio.sleep(1)
    assert recorder.ids == ["poison"]
    assert await queue.waiting() == 0


async def test_a_retry_comes_back_after_its_delay_marked_with_its_attempt(
    queues: QueueFactory,
) -> None:
    queue = await queues.open()
    await queue.publish(message("flaky"), priority=7)
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def settle(delivery: Delivery) -> None:
        times.append(loop.time())
        if len(times) == 1:
            await delivery.retry_later(RETRY_DELAY, attempt=3)
        else:
            await delivery.ack()

    recorder = Recorder(settle)
    await consume(queue, recorder)
    await recorder.wait_for(2, within=20)
    first, again = recorder.deliveries
    assert first.retry_of is None and again.retry_of == 3
    assert times[1] - times[0] >= RETRY_DELAY * 0.9
    assert again.body == first.body


async def test_a_handed_back_message_is_delivered_again(queues: QueueFactory) -> None:
    queue = await queues.open()
    await queue.publish(message("shutdown"), priority=5)
    recorder = Recorder(
        lambda delivery: delivery.hand_back() if len(recorder.deliveries) == 1 else delivery.ack()
    )
    await consume(queue, recorder)
    await recorder.wait_for(2)
    assert recorder.ids == ["shutdown", "shutdown"]


async def test_an_unsettled_message_is_redelivered_after_a_dropped_connection(
    queues: QueueFactory,
) -> None:
    if queues.kind == "embedded":
        pytest.skip("the embedded queue has no connection: its messages live in the process")
    proxy = TcpProxy("127.0.0.1", 5672).start()
    tag = uuid.uuid4().hex[:8]
    through_proxy = rabbit_queue(f"amqp://guest:guest@127.0.0.1:{proxy.port}/", tag)
    try:
        queue = await queues.open(through_proxy)
        await queue.publish(message("in-flight"), priority=5)
        recorder = Recorder(lambda d: d.ack() if len(recorder.deliveries) > 1 else None)
        await consume(queue, recorder)
        await recorder.wait_for(1)
        proxy.cut()  # the broker sees the consumer vanish with the message unsettled
        await asyncio.sleep(1)
        proxy.restore()
        await recorder.wait_for(2, within=30)  # the robust connection comes back by itself
        assert recorder.ids == ["in-flight", "in-flight"]
        assert recorder.deliveries[1].redelivered
    finally:
        await through_proxy.close()
        proxy.stop()
        await delete_topology(AMQP_URL, f"test-{tag}", f"test-{tag}")


async def test_chunk_messages_have_their_own_lane_retries_and_priorities() -> None:
    """RabbitMQ only (the embedded queue does not split files): chunk messages reach chunk
    consumers only, by priority, and a retried chunk comes back to the chunk queue."""
    tag = uuid.uuid4().hex[:8]
    queue = rabbit_queue(AMQP_URL, tag)
    await queue.open()
    try:
        assert queue.fans_out and not EmbeddedQueue().fans_out
        for job_id, priority in (("low", 0), ("high", 9)):
            await queue.publish_chunk(job_id.encode(), priority=priority, message_id=job_id)
        jobs, chunks = acking(), Recorder()
        await consume(queue, jobs)
        await queue.consume_chunks(chunks, prefetch=1)
        await chunks.wait_for(1)
        assert chunks.deliveries[0].body == b"high"
        await chunks.deliveries[0].retry_later(RETRY_DELAY, attempt=1)
        await chunks.wait_for(2)
        await chunks.deliveries[1].ack()
        await chunks.wait_for(3, within=20)
        assert [d.body for d in chunks.deliveries] == [b"high", b"low", b"high"]
        assert chunks.deliveries[2].retry_of == 1
        await chunks.deliveries[2].ack()
        assert jobs.deliveries == []
        stats = await queue.stats(cast(JobStore, None))
        assert (stats.work, stats.chunks, stats.retry) == (0, 0, 0)
    finally:
        await queue.close()
        await delete_topology(AMQP_URL, f"test-{tag}", f"test-{tag}")
