"""The store's part of issue 10 on every backend: paging with a total, queue position, the
speed of recent jobs, one job per Idempotency-Key, lookups by content."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from smap_stt.errors import DuplicateIdempotencyKey
from smap_stt.jobs import JobStatus, utcnow
from smap_stt.store.base import JobStore
from tests.store.test_contract import created, make_job, twin


async def test_paging_with_offset_and_total(job_store: JobStore) -> None:
    start = utcnow()
    jobs = [
        await created(job_store, created_at=start + timedelta(seconds=index)) for index in range(7)
    ]
    await job_store.fail(jobs[0].id, "broken")
    newest_first = [job.id for job in reversed(jobs)]
    pages = [await job_store.list(limit=3, offset=offset) for offset in (0, 3, 6, 9)]
    assert [[job.id for job in page] for page in pages] == [
        newest_first[0:3],
        newest_first[3:6],
        newest_first[6:7],
        [],
    ]
    assert await job_store.count() == 7
    assert await job_store.count(status=JobStatus.PENDING) == 6
    assert await job_store.count(status=JobStatus.FAILED) == 1
    pending = await job_store.list(status=JobStatus.PENDING, limit=10, offset=5)
    assert [job.id for job in pending] == [jobs[1].id]


async def test_queue_ahead_counts_higher_priority_and_older_equal_priority(
    job_store: JobStore,
) -> None:
    start = utcnow()

    async def at(seconds: int, priority: int, duration: float | None = 10.0) -> str:
        job = await created(
            job_store,
            created_at=start + timedelta(seconds=seconds),
            priority=priority,
            duration_seconds=duration,
        )
        return job.id

    old_low = await at(0, 3)
    old_same = await at(1, 5, duration=20.0)
    await at(2, 5, duration=None)  # unknown length: counted, with 0 s
    mine_id = await at(3, 5)
    await at(4, 5)  # newer, same priority: after it
    await at(5, 9, duration=30.0)  # newer but more urgent: before it
    running = await job_store.claim(await at(-1, 10, duration=40.0), "w1")
    assert running is not None
    mine = await job_store.get(mine_id)

    count, seconds = await job_store.queue_ahead(mine)
    assert count == 3  # old_same, the unknown one and the urgent one; never old_low
    assert seconds == pytest.approx(50.0)
    assert (await job_store.queue_ahead(await job_store.get(old_low)))[0] == 5

    await job_store.heartbeat(running, progress=25)
    count, seconds_left = await job_store.running()
    assert count == 1 and seconds_left == pytest.approx(30.0)
    # Jobs ahead that start running leave the queue: the position falls.
    started = await job_store.claim(old_same, "w2")
    assert started is not None
    assert (await job_store.queue_ahead(mine))[0] == 2


async def test_speed_samples_are_the_latest_transcribed_jobs(job_store: JobStore) -> None:
    for processing, duration in ((2.0, 20.0), (3.0, 10.0)):
        job = await job_store.claim((await created(job_store)).id, "w1")
        assert job is not None
        await job_store.complete(job, processing_time_seconds=processing, duration_seconds=duration)
        await asyncio.sleep(0.01)
    deduplicated = await created(
        job_store, status=JobStatus.COMPLETED, deduplicated_from="x", completed_at=utcnow()
    )
    assert deduplicated.id
    await created(job_store)  # pending: no sample
    assert await job_store.speed_samples(10) == [(3.0, 10.0), (2.0, 20.0)]
    assert await job_store.speed_samples(1) == [(3.0, 10.0)]


async def test_one_job_per_idempotency_key_even_from_two_processes(job_store: JobStore) -> None:
    first = await created(job_store, idempotency_key="key-1", content_sha256="a" * 64)
    other = twin(job_store)
    await other.open()
    try:
        with pytest.raises(DuplicateIdempotencyKey):
            await other.create(make_job(idempotency_key="key-1"))
        await other.create(make_job(idempotency_key="key-2"))
    finally:
        await other.close()
    await created(job_store)  # jobs without a key never collide
    await created(job_store)
    found = await job_store.by_idempotency_key("key-1")
    assert found is not None and found.id == first.id
    assert await job_store.by_idempotency_key("key-3") is None


async def test_concurrent_creates_with_one_key_make_one_job(job_store: JobStore) -> None:
    jobs = [make_job(idempotency_key="same") for _ in range(5)]
    results = await asyncio.gather(*(job_store.create(job) for job in jobs), return_exceptions=True)
    assert sum(result is None for result in results) == 1
    assert all(isinstance(r, DuplicateIdempotencyKey) for r in results if r is not None)


async def test_jobs_by_content_newest_first(job_store: JobStore) -> None:
    start = utcnow()
    older = await created(job_store, content_sha256="b" * 64, created_at=start)
    newer = await created(
        job_store, content_sha256="b" * 64, created_at=start + timedelta(seconds=1)
    )
    await created(job_store, content_sha256="c" * 64)
    assert [job.id for job in await job_store.by_content("b" * 64)] == [newer.id, older.id]
    assert await job_store.by_content("d" * 64) == []
