"""A Delivery that records how the worker settled it, for tests of the message handlers."""

from __future__ import annotations

from smap_stt.jobs import JobMessage
from smap_stt.queue.base import Delivery, encode_message


class RecordingDelivery(Delivery):
    def __init__(self, job_id: str, *, redelivered: bool = False) -> None:
        self.body = encode_message(
            JobMessage(job_id=job_id, language="en", model="base", filename="a.wav")
        )
        self.redelivered = redelivered
        self.retry_of: int | None = None
        self.settled: list[str] = []

    async def ack(self) -> None:
        self.settled.append("ack")

    async def retry_later(self, delay: float, *, attempt: int) -> None:
        self.settled.append("retry_later")

    async def dead_letter(self, reason: str) -> None:
        self.settled.append("dead_letter")

    async def hand_back(self) -> None:
        self.settled.append("hand_back")
