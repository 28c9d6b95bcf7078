"""The in-process queue of `smap-stt serve`: a priority queue fed by the API in the same process.

It holds nothing durable: the job store is the record. On start the worker's recovery pass
publishes every PENDING job again, so a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

from smap_stt.jobs import JobMessage, JobStatus
from smap_stt.queue.base import Delivery, Handler, JobQueue, QueueStats, encode_message
from smap_stt.store.base import JobStore

log = logging.getLogger(__name__)


class _EmbeddedDelivery(Delivery):
    """Frees its consumer slot exactly once, like a broker settles a message once: a job that
    acked early (long jobs do) and then fails or is handed back must not free it again, or the
    worker would run more jobs at once than MAX_CONCURRENT_JOBS."""

    def __init__(self, queue: EmbeddedQueue, item: tuple[int, int, bytes, int | None]) -> None:
        self._queue = queue
        self._item = item
        self._settled = False
        self.body = item[2]
        self.redelivered = False
        self.retry_of = item[3]

    def _settle(self) -> None:
        if not self._settled:
            self._settled = True
            self._queue._settled()

    async def ack(self) -> None:
        self._settle()

    async def retry_later(self, delay: float, *, attempt: int) -> None:
        self._settle()
        priority, _, body, _ = self._item
        loop = asyncio.get_running_loop()
        self._queue._delayed += 1
        loop.call_later(delay, self._queue._put_delayed, -priority, body, attempt)

    async def dead_letter(self, reason: str) -> None:
        if not self._settled:
            log.warning("dropped message %r: %s", self.body[:200], reason)
        self._settle()

    async def hand_back(self) -> None:
        # After an early ack the message is gone, so a hand-back puts in a new one (as the
        # RabbitMQ queue publishes a new one).
        self._settle()
        priority, _, body, retry_of = self._item
        self._queue._put(-priority, body, retry_of)


class EmbeddedQueue(JobQueue):
    name = "embedded"

    def __init__(self) -> None:
        self._items: asyncio.PriorityQueue[tuple[int, int, bytes, int | None]] = (
            asyncio.PriorityQueue()
        )
        self._order = itertools.count()
        self._consumers: list[asyncio.Task[None]] = []
        self._slots: asyncio.Semaphore | None = None
        self._delayed = 0

    async def publish(self, message: JobMessage, *, priority: int) -> None:
        self._put(priority, encode_message(message), None)

    def _put(self, priority: int, body: bytes, retry_of: int | None) -> None:
        # Highest priority first, then first in first out.
        self._items.put_nowait((-priority, next(self._order), body, retry_of))

    def _settled(self) -> None:
        if self._slots is not None:
            self._slots.release()

    async def consume(self, handler: Handler, *, prefetch: int) -> None:
        self._slots = asyncio.Semaphore(prefetch)
        self._consumers.append(asyncio.create_task(self._deliver(handler)))

    async def _deliver(self, handler: Handler) -> None:
        assert self._slots is not None
        tasks: set[asyncio.Task[None]] = set()
        while True:
            await self._slots.acquire()
            item = await self._items.get()
            task = asyncio.create_task(handler(_EmbeddedDelivery(self, item)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def stop_consuming(self) -> None:
        for task in self._consumers:
            task.cancel()
        self._consumers.clear()

    async def close(self) -> None:
        await self.stop_consuming()

    async def ping(self) -> None:
        return None

    async def waiting(self) -> int:
        return self._items.qsize()

    # --- operations (issue 11) ---------------------------------------------------------------

    def _put_delayed(self, priority: int, body: bytes, retry_of: int | None) -> None:
        self._delayed -= 1
        self._put(priority, body, retry_of)

    async def stats(self, store: JobStore) -> QueueStats:
        """From memory, but dead letters: the embedded queue drops them, their jobs are the
        FAILED ones in the store."""
        return QueueStats(
            work=self._items.qsize(),
            retry=self._delayed,
            dead=await store.count(status=JobStatus.FAILED),
            consumers=len(self._consumers),
        )
