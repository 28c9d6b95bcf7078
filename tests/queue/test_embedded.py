"""The in-process queue of `serve`: a consumer slot is freed once per delivery, and a message
handed back or retried keeps its priority."""

from __future__ import annotations

import asyncio

from smap_stt.jobs import JobMessage
from smap_stt.queue.base import Delivery, decode_message
from smap_stt.queue.embedded import EmbeddedQueue


def _message(job_id: str) -> JobMessage:
    return JobMessage(job_id=job_id, language="en", model="base", filename=f"{job_id}.wav")


async def test_a_delivery_frees_its_slot_once() -> None:
    """A long job acks early, then acks (or fails, or is handed back) at its end: the second
    settle used to free a second slot, so the worker ran more jobs than MAX_CONCURRENT_JOBS."""
    queue = EmbeddedQueue()
    running: set[str] = set()
    most = 0
    release = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        nonlocal most
        job_id = decode_message(delivery.body).job_id
        if job_id == "settles-twice":
            await delivery.ack()
            await delivery.dead_letter("failed after its early ack")
            return
        running.add(job_id)
        most = max(most, len(running))
        await release.wait()
        running.discard(job_id)
        await delivery.ack()

    for job_id in ("settles-twice", "a", "b", "c"):
        await queue.publish(_message(job_id), priority=5)
    await queue.consume(handler, prefetch=1)
    await asyncio.sleep(0.2)
    assert most == 1, f"{most} jobs ran at once with prefetch 1"
    release.set()
    for _ in range(50):
        if await queue.waiting() == 0 and not running:
            break
        await asyncio.sleep(0.02)
    await queue.close()
    assert most == 1


async def test_handed_back_and_retried_messages_keep_their_priority() -> None:
    queue = EmbeddedQueue()
    order: list[str] = []
    done = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        job_id = decode_message(delivery.body).job_id
        order.append(job_id)
        if order.count(job_id) == 1 and job_id == "urgent":
            await delivery.hand_back()  # shutdown: it goes back, still urgent
        elif order.count(job_id) == 2 and job_id == "urgent":
            await delivery.retry_later(0.05, attempt=1)  # back in the queue while low-1 runs
        else:
            await asyncio.sleep(0.2)
            await delivery.ack()
        if len(order) == 5:
            done.set()

    await queue.publish(_message("low-1"), priority=0)
    await queue.publish(_message("low-2"), priority=0)
    await queue.publish(_message("urgent"), priority=10)
    await queue.consume(handler, prefetch=1)
    await asyncio.wait_for(done.wait(), 5)
    await queue.close()
    # Put back with its priority negated, "urgent" used to wait behind every other message.
    assert order == ["urgent", "urgent", "low-1", "urgent", "low-2"]
