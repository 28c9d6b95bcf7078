"""The job queue contract: publish job messages, deliver them to a handler that settles each
delivery exactly once (ack, retry later, dead-letter or hand back)."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from smap_stt.jobs import ChunkMessage, JobMessage, JobStatus

if TYPE_CHECKING:
    from smap_stt.store.base import JobStore

__all__ = [
    "Delivery",
    "Handler",
    "JobQueue",
    "QueueStats",
    "decode_chunk_message",
    "decode_message",
    "encode_chunk_message",
    "encode_message",
    "is_chunk_message",
    "store_stats",
]


def encode_message(message: JobMessage) -> bytes:
    return json.dumps(asdict(message)).encode()


def decode_message(body: bytes) -> JobMessage:
    """Raise ValueError for anything that is not a well-formed job message. A chunk message
    reads as its job's message too (what dead letters and operators need of it)."""
    data = _json_object(body)
    job_id = data.get("job_id")
    if not isinstance(job_id, str) or not job_id or len(job_id) > 100:
        raise ValueError("message has no valid job_id")
    fields = {name: str(data.get(name) or "") for name in ("language", "model", "filename")}
    return JobMessage(job_id=job_id, **fields)


def encode_chunk_message(message: ChunkMessage) -> bytes:
    return json.dumps(asdict(message)).encode()


def decode_chunk_message(body: bytes) -> ChunkMessage:
    """Raise ValueError for anything that is not a well-formed chunk message."""
    job_id = decode_message(body).job_id
    data = _json_object(body)
    numbers = [data.get(name) for name in ("index", "start", "end")]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        raise ValueError("chunk message has no valid index, start and end")
    index, start, end = (int(n) for n in numbers)  # type: ignore[arg-type]
    if end <= start:
        raise ValueError("chunk message has an empty span")
    language, audio_key = data.get("language"), data.get("audio_key")
    if not isinstance(language, str) or not isinstance(audio_key, str) or not audio_key:
        raise ValueError("chunk message has no valid language and audio_key")
    return ChunkMessage(
        job_id=job_id,
        index=index,
        start=start,
        end=end,
        language=language,
        audio_key=audio_key,
        windows=_windows(data.get("windows"), end - start),
    )


def _windows(value: object, samples: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """A chunk message's windows: lists of ascending, non-empty [start, end) sample ranges
    within the chunk's `samples`, each at most Whisper's 30 s, in order. They only spare the
    worker a VAD pass, so anything else is no windows (the worker finds them), not a
    malformed message that would fail the job."""
    if not isinstance(value, list) or len(value) > samples // _MIN_WINDOW + 1:
        return ()
    windows = []
    previous = 0
    for regions in value:
        if not isinstance(regions, list) or not regions or len(regions) > _MAX_REGIONS:
            return ()
        window = []
        for pair in regions:
            if not (
                isinstance(pair, list)
                and len(pair) == 2
                and all(isinstance(n, int) and not isinstance(n, bool) for n in pair)
                and previous <= pair[0] < pair[1] <= samples
            ):
                return ()
            previous = pair[1]
            window.append((pair[0], pair[1]))
        if sum(end - start for start, end in window) > _MAX_WINDOW:
            return ()
        windows.append(tuple(window))
    return tuple(windows)


_MAX_WINDOW = 30 * 16000 + 8000  # samples: one Whisper input (30 s at 16 kHz), and a margin
_MIN_WINDOW = 160  # samples: no window is shorter than 10 ms
_MAX_REGIONS = 1000


def is_chunk_message(body: bytes) -> bool:
    try:
        decode_chunk_message(body)
    except ValueError:
        return False
    return True


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"message body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("message body is not a JSON object")
    return data


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
    chunks: int = 0
    """Chunks of long files waiting for any worker (issue 14); 0 where files are not split."""


class JobQueue(ABC):
    """Every method may raise `QueueUnavailable` when the broker does not answer."""

    name: str
    fans_out: bool = False
    """Whether chunks of one file can go to other workers (`publish_chunk`, `consume_chunks`):
    only across processes; the embedded queue serves one process, which fan-out cannot speed."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    @abstractmethod
    async def publish(self, message: JobMessage, *, priority: int) -> None:
        """Return only once the broker has taken responsibility for the message."""

    @abstractmethod
    async def consume(self, handler: Handler, *, prefetch: int) -> None:
        """Start delivering messages to `handler`, at most `prefetch` unsettled at once."""

    async def publish_chunk(self, body: bytes, *, priority: int, message_id: str) -> None:
        """Publish a chunk message (see `fans_out`)."""
        raise NotImplementedError(f"the {self.name} queue does not split files")

    async def consume_chunks(self, handler: Handler, *, prefetch: int) -> None:
        """Start delivering chunk messages to `handler`; no-op where `fans_out` is False."""

    async def chunk_consumers(self) -> int | None:
        """How many workers take chunk messages now (None: not known)."""
        return None

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
