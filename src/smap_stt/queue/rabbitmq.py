"""The RabbitMQ job queue (aio-pika).

Topology, all durable:
- `stt_exchange` (direct) → `stt_jobs_queue` (classic, x-max-priority 10, message TTL, dead
  letters to `stt_exchange.dlx`);
- `stt_exchange.dlx` (fanout) → `stt_jobs_queue.dead` (kept for operators) and
  `stt_jobs_queue.dead-events` (read by workers to mark the jobs of dead messages FAILED);
- `stt_jobs_queue.retry.<N>s`: wait queues whose messages expire after N seconds and dead-letter
  back to the work exchange, which is how a retry is delayed;
- `stt_jobs_queue.chunks` (routing key `<RABBITMQ_ROUTING_KEY>.chunks`, same arguments as the
  work queue) and its own `stt_jobs_queue.chunks.retry.<N>s`: the chunks of long files fanned
  out across workers (issue 14, worker/fanout.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import aio_pika
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from smap_stt.errors import ConfigurationError, QueueUnavailable
from smap_stt.jobs import JobMessage
from smap_stt.queue.base import Delivery, Handler, JobQueue, QueueStats, encode_message
from smap_stt.store.base import JobStore

log = logging.getLogger(__name__)

RETRY_HEADER = "x-smap-retry-of"
DEAD_MESSAGE_TTL_MS = 7 * 24 * 3600 * 1000
_TIMEOUT = 10.0

Lane = Literal["work", "chunks"]
"""Job messages, or chunk messages of fanned-out files: each has its queue and wait queues."""


class RabbitDelivery(Delivery):
    def __init__(
        self, queue: RabbitQueue, message: AbstractIncomingMessage, lane: Lane = "work"
    ) -> None:
        self._queue = queue
        self._lane = lane
        self._message = message
        self._acked = False
        self.body = message.body
        self.redelivered = bool(message.redelivered)
        retry_of = (message.headers or {}).get(RETRY_HEADER)
        self.retry_of = retry_of if isinstance(retry_of, int) else None

    @property
    def death_reason(self) -> str:
        """Why the broker dead-lettered this message (its `x-death` header)."""
        deaths = (self._message.headers or {}).get("x-death")
        if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
            reason = deaths[0].get("reason")
            if isinstance(reason, bytes):
                return reason.decode()
            if isinstance(reason, str):
                return reason
        return "unknown"

    async def _settle(self, action: str, **kwargs: Any) -> None:
        if self._acked:
            return
        self._acked = True
        try:
            await getattr(self._message, action)(**kwargs)
        except Exception as exc:  # the channel is gone: the broker redelivers the message
            log.warning("could not %s message %s: %s", action, self._message.message_id, exc)

    async def ack(self) -> None:
        await self._settle("ack")

    async def retry_later(self, delay: float, *, attempt: int) -> None:
        await self._queue.publish_raw(
            self.body,
            priority=self._message.priority or 0,
            message_id=self._message.message_id,
            delay=delay,
            headers={RETRY_HEADER: attempt},
            lane=self._lane,
        )
        await self.ack()

    async def dead_letter(self, reason: str) -> None:
        await self._settle("reject", requeue=False)

    async def hand_back(self) -> None:
        if self._acked:  # acked early (long job): the only way back is a new message
            await self._queue.publish_raw(
                self.body,
                priority=self._message.priority or 0,
                message_id=self._message.message_id,
                lane=self._lane,
            )
            return
        await self._settle("nack", requeue=True)


class RabbitQueue(JobQueue):
    name = "rabbitmq"
    fans_out = True

    def __init__(
        self,
        url: str,
        *,
        exchange: str,
        routing_key: str,
        queue: str,
        message_ttl_seconds: int,
        retry_delays: Sequence[int],
        message_ttl_source: str = "the settings",
    ) -> None:
        """`retry_delays`: the delays (seconds) a retry may wait; a wait queue exists for each.
        `message_ttl_source` says where the TTL came from, for the error when an existing
        queue has another."""
        self._url = url
        self._exchange_name = exchange
        self._routing_key = routing_key
        self._queue_name = queue
        self._message_ttl_ms = message_ttl_seconds * 1000
        self._message_ttl_source = message_ttl_source
        self._delays = sorted(set(retry_delays) or {1})
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._connect_lock = asyncio.Lock()
        self._declared = False

    @property
    def dlx_name(self) -> str:
        return f"{self._exchange_name}.dlx"

    @property
    def dead_queue_name(self) -> str:
        return f"{self._queue_name}.dead"

    @property
    def dead_events_queue_name(self) -> str:
        return f"{self._queue_name}.dead-events"

    @property
    def chunk_queue_name(self) -> str:
        return f"{self._queue_name}.chunks"

    def _queue_for(self, lane: Lane) -> str:
        return self._queue_name if lane == "work" else self.chunk_queue_name

    def _routing_key_for(self, lane: Lane) -> str:
        return self._routing_key if lane == "work" else f"{self._routing_key}.chunks"

    def wait_queue_name(self, delay: int, lane: Lane = "work") -> str:
        return f"{self._queue_for(lane)}.retry.{delay}s"

    async def open(self) -> None:
        """Connect if the broker answers; if not, publishing raises `QueueUnavailable` and the
        next call tries again, so an API can start (and take uploads) before its broker.
        Raises `ConfigurationError` when the work queue exists with another message TTL."""
        try:
            await self._ensure()
        except QueueUnavailable as exc:
            log.warning("%s; will connect when it is back", exc)

    async def _ensure(self) -> AbstractRobustChannel:
        if self._channel is not None and not self._channel.is_closed:
            return self._channel
        async with self._connect_lock:
            if self._connection is None:
                try:
                    self._connection = await aio_pika.connect_robust(
                        self._url,
                        timeout=_TIMEOUT,
                        client_properties={"connection_name": "smap-stt"},
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    raise QueueUnavailable(_describe(exc)) from exc
            elif not self._connection.connected.is_set():
                # Never replace a robust connection: it reconnects by itself and restores
                # the consumers on it; a new one would leave them behind.
                raise QueueUnavailable("connection lost; reconnecting")
            try:
                if not self._declared:
                    await self._declare_topology()
                    self._declared = True
                if self._channel is None or self._channel.is_closed:
                    self._channel = await self._connection.channel(publisher_confirms=True)
            except asyncio.CancelledError:
                raise
            except ConfigurationError:
                await self._drop_connection()  # the process stops: leave nothing half-open
                raise
            except Exception as exc:
                raise QueueUnavailable(_describe(exc)) from exc
            return self._channel

    async def _drop_connection(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._declared = False
        if connection is not None:
            with contextlib.suppress(Exception):  # already broken; nothing to release
                async with asyncio.timeout(_TIMEOUT):
                    await connection.close()

    async def _declare_topology(self) -> None:
        assert self._connection is not None
        channel = await self._connection.channel()
        try:
            exchange = await channel.declare_exchange(
                self._exchange_name, aio_pika.ExchangeType.DIRECT, durable=True
            )
            dlx = await channel.declare_exchange(
                self.dlx_name, aio_pika.ExchangeType.FANOUT, durable=True
            )
            dead = await channel.declare_queue(
                self.dead_queue_name, durable=True, arguments={"x-message-ttl": DEAD_MESSAGE_TTL_MS}
            )
            await dead.bind(dlx)
            events = await channel.declare_queue(self.dead_events_queue_name, durable=True)
            await events.bind(dlx)
            arguments = {
                "x-max-priority": 10,
                "x-dead-letter-exchange": self.dlx_name,
                "x-message-ttl": self._message_ttl_ms,
            }
            try:
                queue = await channel.declare_queue(
                    self._queue_name, durable=True, arguments=arguments
                )
            except aio_pika.exceptions.ChannelPreconditionFailed as exc:
                # A TTL that differs from the settings' would be kept for ever, silently: refuse
                # (issue 15). Other differences (the original system's queue, with no TTL and
                # no dead letters) are used as they are; refusing those would strand its jobs.
                existing_ttl = _existing_ttl_ms(str(exc))
                if existing_ttl is not None:
                    raise ConfigurationError(self._ttl_conflict(existing_ttl)) from None
                log.warning(
                    "queue %s exists with other arguments (%s); using it as it is",
                    self._queue_name,
                    exc,
                )
                await channel.close()
                channel = await self._connection.channel()
                queue = await channel.declare_queue(self._queue_name, passive=True)
            await queue.bind(exchange, self._routing_key)
            chunks = await channel.declare_queue(
                self.chunk_queue_name, durable=True, arguments=arguments
            )
            await chunks.bind(exchange, self._routing_key_for("chunks"))
            for lane in ("work", "chunks"):
                for delay in self._delays:
                    await channel.declare_queue(
                        self.wait_queue_name(delay, lane),
                        durable=True,
                        arguments={
                            "x-message-ttl": delay * 1000,
                            "x-dead-letter-exchange": self._exchange_name,
                            "x-dead-letter-routing-key": self._routing_key_for(lane),
                        },
                    )
        finally:
            if not channel.is_closed:
                await channel.close()

    def _ttl_conflict(self, existing_ms: int) -> str:
        wanted_ms = self._message_ttl_ms
        why = self._message_ttl_source
        keep = (
            f"set QUEUE_MESSAGE_TTL={existing_ms // 1000} to keep using it, or "
            if existing_ms % 1000 == 0 and existing_ms > 0
            else ""
        )
        return (
            f"queue {self._queue_name} exists with x-message-ttl {existing_ms} ms "
            f"({existing_ms / 1000:g} s) but the settings ask for {wanted_ms} ms "
            f"({wanted_ms / 1000:g} s, from {why}); RabbitMQ cannot change a queue's TTL in "
            f"place. Either {keep}migrate it: stop every API and worker, run "
            f"`rabbitmqctl delete_queue {self._queue_name}`, start them again (waiting jobs "
            "stay PENDING in the job store and are published again); see docs/DEPLOYMENT.md"
        )

    async def publish(self, message: JobMessage, *, priority: int) -> None:
        await self.publish_raw(
            encode_message(message), priority=priority, message_id=message.job_id
        )

    async def publish_chunk(self, body: bytes, *, priority: int, message_id: str) -> None:
        await self.publish_raw(body, priority=priority, message_id=message_id, lane="chunks")

    async def publish_raw(
        self,
        body: bytes,
        *,
        priority: int,
        message_id: str | None,
        delay: float = 0,
        headers: dict[str, Any] | None = None,
        lane: Lane = "work",
    ) -> None:
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            priority=max(0, min(10, priority)),
            message_id=message_id,
            headers=headers or {},
        )
        try:
            channel = await self._ensure()
            async with asyncio.timeout(_TIMEOUT):
                if delay > 0:
                    name = self.wait_queue_name(self._nearest_delay(delay), lane)
                    await channel.default_exchange.publish(message, routing_key=name)
                else:
                    exchange = await channel.get_exchange(self._exchange_name, ensure=False)
                    await exchange.publish(message, routing_key=self._routing_key_for(lane))
        except QueueUnavailable:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise QueueUnavailable(_describe(exc)) from exc

    def _nearest_delay(self, delay: float) -> int:
        """Wait queues exist for the configured delays only; use the closest one."""
        return min(self._delays, key=lambda known: abs(known - delay))

    async def consume(self, handler: Handler, *, prefetch: int) -> None:
        await self._consume(self._queue_name, prefetch, handler)

    async def consume_chunks(self, handler: Handler, *, prefetch: int) -> None:
        await self._consume(self.chunk_queue_name, prefetch, handler, lane="chunks")

    async def consume_dead_events(self, handler: Handler) -> None:
        await self._consume(self.dead_events_queue_name, 10, handler)

    async def _consume(
        self, name: str, prefetch: int, handler: Handler, *, lane: Lane = "work"
    ) -> None:
        await self._ensure()
        assert self._connection is not None
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.declare_queue(name, passive=True)
        tasks: set[asyncio.Task[None]] = set()

        async def deliver(message: AbstractIncomingMessage) -> None:
            # Run each delivery as its own task so the consumer keeps reading while jobs run.
            task = asyncio.create_task(handler(RabbitDelivery(self, message, lane)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        tag = await queue.consume(deliver)
        self._consumers.append((queue, tag))

    async def stop_consuming(self) -> None:
        consumers, self._consumers = self._consumers, []
        for queue, tag in consumers:
            try:
                async with asyncio.timeout(_TIMEOUT):  # a broker that is gone never answers
                    await queue.cancel(tag)
            except Exception as exc:
                log.warning("could not cancel consumer %s: %s", tag, exc)

    # Passive declarations with robust=False: a robust channel answers a repeated passive
    # declaration from its cache, without asking the broker (aio-pika 9-10), so counts went
    # stale (3 messages "waiting" long after all 3 were consumed and acked) and the
    # lost-messages sweep never saw the queue empty.

    async def ping(self) -> None:
        channel = await self._ensure()
        try:
            async with asyncio.timeout(5):
                await channel.declare_queue(self._queue_name, passive=True, robust=False)
        except Exception as exc:
            raise QueueUnavailable(_describe(exc)) from exc

    async def chunk_consumers(self) -> int | None:
        try:
            channel = await self._ensure()
            async with asyncio.timeout(5):
                queue = await channel.declare_queue(
                    self.chunk_queue_name, passive=True, robust=False
                )
            return queue.declaration_result.consumer_count or 0
        except Exception:
            return None

    async def waiting(self) -> int | None:
        try:
            channel = await self._ensure()
            names = [self._queue_name, *(self.wait_queue_name(d) for d in self._delays)]
            total = 0
            async with asyncio.timeout(5):
                for name in names:
                    queue = await channel.declare_queue(name, passive=True, robust=False)
                    total += queue.declaration_result.message_count or 0
            return total
        except Exception:
            return None

    async def close(self) -> None:
        await self.stop_consuming()
        await self._drop_connection()

    # --- operations (issue 11) ---------------------------------------------------------------

    async def stats(self, store: JobStore) -> QueueStats:
        """From the broker: passive declarations report depth and consumers without touching a
        message."""
        try:
            await self._ensure()
            assert self._connection is not None
            channel = await self._connection.channel()
            try:
                async with asyncio.timeout(5):
                    work = await channel.declare_queue(self._queue_name, passive=True)
                    chunks = await channel.declare_queue(self.chunk_queue_name, passive=True)
                    retry = 0
                    for name in self.admin_queue_names("retry"):
                        wait = await channel.declare_queue(name, passive=True)
                        retry += wait.declaration_result.message_count or 0
                    dead = await channel.declare_queue(self.dead_queue_name, passive=True)
            finally:
                if not channel.is_closed:
                    await channel.close()
        except QueueUnavailable:
            raise
        except Exception as exc:
            raise QueueUnavailable(_describe(exc)) from exc
        return QueueStats(
            work=work.declaration_result.message_count or 0,
            retry=retry,
            dead=dead.declaration_result.message_count or 0,
            consumers=work.declaration_result.consumer_count or 0,
            chunks=chunks.declaration_result.message_count or 0,
        )

    def admin_queue_names(self, which: str) -> list[str]:
        """The broker queues behind `work` (job and chunk messages), `retry` or `dead`."""
        if which == "work":
            return [self._queue_name, self.chunk_queue_name]
        if which == "retry":
            return [
                self.wait_queue_name(delay, lane)
                for lane in ("work", "chunks")
                for delay in self._delays
            ]
        return [self.dead_queue_name]

    async def browse(
        self,
        which: str,
        take: Callable[[bytes, dict[str, Any]], Awaitable[bool]],
        *,
        limit: int = 10_000,
    ) -> int:
        """Read up to `limit` messages of the `work`, `retry` or `dead` queues one by one;
        those `take` returns True for are removed (acked), the others go back unchanged when
        the pass ends. Returns how many were read. Nothing is lost if this process dies: an
        unsettled message returns to its queue when the channel closes."""
        await self._ensure()
        assert self._connection is not None
        channel = await self._connection.channel()
        seen = 0
        try:
            for name in self.admin_queue_names(which):
                queue = await channel.declare_queue(name, passive=True)
                kept: list[AbstractIncomingMessage] = []
                while seen < limit:
                    message = await queue.get(no_ack=False, fail=False, timeout=_TIMEOUT)
                    if message is None:
                        break
                    seen += 1
                    if await take(message.body, dict(message.headers or {})):
                        await message.ack()
                    else:
                        kept.append(message)
                for message in kept:
                    await message.nack(requeue=True)
        except QueueUnavailable:
            raise
        except Exception as exc:
            raise QueueUnavailable(_describe(exc)) from exc
        finally:
            if not channel.is_closed:
                await channel.close()
        return seen


_TTL_MISMATCH = re.compile(
    r"inequivalent arg 'x-message-ttl'.*but current is (?:the value )?'(\d+)'"
)


def _existing_ttl_ms(refusal: str) -> int | None:
    """The TTL an existing queue has, when RabbitMQ refused a declaration over it (it checks
    x-message-ttl before the other arguments); None when the queue has none or the refusal is
    about another argument."""
    match = _TTL_MISMATCH.search(refusal)
    return int(match.group(1)) if match else None


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "…"
