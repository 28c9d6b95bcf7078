"""Per-key rate limits and queue backpressure, counted in the job store so that they hold
across every API process and machine (docs/SECURITY.md).

Rates use fixed windows (a minute for requests, an hour for upload bytes) named by the key and
the window's start: one atomic increment per check, and a client told to retry after the
window ends. A burst at a window's edge may get up to twice the rate; that is the price of
one write per request instead of a sliding log.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from smap_stt.config import Settings
from smap_stt.errors import InvalidRequest
from smap_stt.jobs import JobStatus
from smap_stt.keys import Principal
from smap_stt.store.base import JobStore

__all__ = [
    "Refused",
    "UploadSlots",
    "check_request_rate",
    "check_upload_admission",
    "record_upload",
]


class Refused(InvalidRequest):
    """A limit was reached: 429 (this key) or 503 (the whole service), retry after a while."""

    def __init__(self, message: str, status_code: int, retry_after: int) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = max(1, retry_after)


def _window(seconds: int, now: float) -> tuple[int, int]:
    """The current window's start and the seconds left in it."""
    start = int(now // seconds * seconds)
    return start, max(1, math.ceil(start + seconds - now))


async def _add(
    store: JobStore, name: str, amount: int, seconds: int, now: float
) -> tuple[int, int]:
    start, left = _window(seconds, now)
    expires = datetime.fromtimestamp(start + seconds, UTC)
    return await store.add_usage(f"{name}:{start}", amount, expires), left


async def check_request_rate(settings: Settings, store: JobStore, principal: Principal) -> None:
    """Count one request of the principal's key; Refused (429) past RATE_LIMIT_PER_MINUTE."""
    limit = settings.rate_limit_per_minute
    if not limit or principal.key_id is None:
        return
    total, left = await _add(store, f"rate:{principal.key_id}", 1, 60, time.time())
    if total > limit:
        raise Refused(
            f"this API key made more than {limit} requests this minute "
            f"(RATE_LIMIT_PER_MINUTE); retry in {left} s",
            429,
            left,
        )


async def check_upload_admission(settings: Settings, store: JobStore, principal: Principal) -> None:
    """Before an upload is received: Refused while the key's hourly upload volume is used up
    (429), the key has MAX_PENDING_JOBS_PER_KEY jobs waiting (429) or the whole queue holds
    MAX_PENDING_JOBS (503)."""
    now = time.time()
    if settings.upload_mb_per_hour and principal.key_id is not None:
        used, left = await _add(store, f"upload:{principal.key_id}", 0, 3600, now)
        if used >= settings.upload_mb_per_hour * 1024 * 1024:
            raise Refused(
                f"this API key uploaded its {settings.upload_mb_per_hour} MB for this hour "
                f"(UPLOAD_MB_PER_HOUR); retry in {left} s",
                429,
                left,
            )
    if settings.max_pending_jobs_per_key and principal.key_id is not None:
        mine = await store.count(status=JobStatus.PENDING, owner=principal.key_id)
        if mine >= settings.max_pending_jobs_per_key:
            raise Refused(
                f"this API key already has {mine} jobs waiting (MAX_PENDING_JOBS_PER_KEY is "
                f"{settings.max_pending_jobs_per_key}); retry when some have started",
                429,
                30,
            )
    if settings.max_pending_jobs:
        total = await store.count(status=JobStatus.PENDING)
        if total >= settings.max_pending_jobs:
            raise Refused(
                f"the queue is full ({total} jobs waiting, MAX_PENDING_JOBS); retry shortly",
                503,
                30,
            )


async def record_upload(
    settings: Settings, store: JobStore, principal: Principal, size: int
) -> None:
    """Count an accepted upload's bytes against the key's hourly volume."""
    if settings.upload_mb_per_hour and principal.key_id is not None:
        await _add(store, f"upload:{principal.key_id}", size, 3600, time.time())


class UploadSlots:
    """MAX_CONCURRENT_UPLOADS for one API process: past it an upload is refused at once (503
    with Retry-After) instead of holding yet another connection open."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.active >= self.limit:
            raise Refused(
                f"this server is receiving {self.active} uploads already "
                "(MAX_CONCURRENT_UPLOADS); retry shortly",
                503,
                5,
            )
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
