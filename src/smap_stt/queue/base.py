"""The job queue contract: publish job messages, deliver them to a handler that settles each
delivery exactly once (ack, retry later, dead-letter or hand back)."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from smap_stt.jobs import JobMessage, JobStatus

if TYPE_CHECKING:
    from smap_stt.store.base import JobStore

__all__ = [
    "Delivery",
    "Handler",
    "JobQueue",
    "QueueStats",
    "decode_message",
    "encode_message",
    "store_stats",
]


def encode_message(message: JobMessage) -> bytes:
    return json.dumps(asdict(message)).encode()


def decode_message(body: bytes) -> JobMessage:
    """Raise ValueError for anything that is not a well-formed job message."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"message body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("message body is not a JSON object")
    job_id = data.get("job_id")
    if not isinstance(job_id, str) or not job_id or len(job_id) > 100:
        raise ValueError("message has no valid job_id")
    fields = {name: str(data.get(name) or "") for name in ("language", "model", "filename")}
    return JobMessage(job_id=job_id, **fields)


class Delivery(ABC):
    """One delivered message. Exactly one of the settling methods is called per delivery."""

    body: bytes
    redelivered: bool
    """The broker delivered it before to a consumer that is gone without settling it."""
    retry_of: int | None
    """The job attempt this message retries, when it was sent back by `retry_later`."""

    @property
    def death_reason(self) -> str:
        """For a dead event (see `JobQueue.consume_dead_events`): why the message died, e.g.
        `rejected`, `expired`, `maxlen`."""
        return "rejected"

    @abstractmethod
    async def ack(self) -> None: ...

    @abstractmethod
    async def retry_later(self, delay: float, *, attempt: int) -> None:
        """Deliver this message again after `delay` seconds, marked as a retry of `attempt`."""

    @abstractmethod
    async def dead_letter(self, reason: str) -> None:
        """Give the message up for good (to the dead-letter queue where there is one)."""

    @abstractmethod
    async def hand_back(self) -> None:
        """Return the message to the queue now, for another consumer (shutdown)."""


Handler = Callable[[Delivery], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class QueueStats:
    """Messages per queue and consumers of the work queue (None: not known here)."""

    work: int
    retry: int
    dead: int
    consumers: int | None


class JobQueue(ABC):
    """Every method may raise `QueueUnavailable` when the broker does not answer."""

    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    @abstractmethod
    async def publish(self, message: JobMessage, *, priority: int) -> None:
        """Return only once the broker has taken responsibility for the message."""

    @abstractmethod
    async def consume(self, handler: Handler, *, prefetch: int) -> None:
        """Start delivering messages to `handler`, at most `prefetch` unsettled at once."""

    async def consume_dead_events(self, handler: Handler) -> None:
        """Deliver a copy of every message that left the work queue for good (rejected,
        expired, over a limit), so its job can be marked FAILED. Queues that drop a message
        only when the worker itself dead-letters it (the embedded one) have none: no-op."""

    @abstractmethod
    async def stop_consuming(self) -> None:
        """Stop taking new messages; deliveries in flight may still be settled."""

    @abstractmethod
    async def ping(self) -> None: ...

    async def waiting(self) -> int | None:
        """Messages waiting to be delivered (including delayed retries), if known."""
        return None

    # --- operations (issue 11) ---------------------------------------------------------------

    async def stats(self, store: JobStore) -> QueueStats:
        """Depths for metrics and `smap-stt queue stats`; by default from the job store."""
        return await store_stats(store)


async def store_stats(store: JobStore) -> QueueStats:
    """Queue figures from the job store, the record behind the embedded queue (the CLI beside
    `serve` reads them so): work = PENDING jobs, dead = FAILED jobs; delayed retries and
    consumers are not known there."""
    return QueueStats(
        work=await store.count(status=JobStatus.PENDING),
        retry=0,
        dead=await store.count(status=JobStatus.FAILED),
        consumers=None,
    )
