"""The JobStore contract, run against every backend (the `job_store` fixture)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any

import pytest

from smap_stt.errors import BackendUnavailable, JobConflict, JobNotFound
from smap_stt.jobs import FINAL_STATES, Job, JobStatus, new_job_id, utcnow
from smap_stt.store.base import JobStore
from smap_stt.store.mongo import MongoJobStore
from smap_stt.store.sqlite import SqliteJobStore
from tests.servers import MongoServer


def make_job(**fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": new_job_id(),
        "filename": "talk.wav",
        "language": "en",
        "model": "base",
        "audio_key": "uploads/talk.wav",
        **fields,
    }
    return Job(**values)


def at_ms(job: Job) -> dict[str, Any]:
    """`job` as data, times cut to milliseconds: MongoDB keeps no finer time."""
    data: dict[str, Any] = job.to_dict()
    for key, value in data.items():
        if isinstance(value, datetime):
            data[key] = value.replace(microsecond=value.microsecond // 1000 * 1000)
    return data


async def created(store: JobStore, **fields: Any) -> Job:
    job = make_job(**fields)
    await store.create(job)
    return job


async def claimed(store: JobStore, worker: str = "w1") -> Job:
    job = await store.claim((await created(store)).id, worker)
    assert job is not None
    return job


def twin(store: JobStore) -> JobStore:
    """Another store object on the same database, as another process would open it."""
    if isinstance(store, SqliteJobStore):
        return SqliteJobStore(store.path)
    assert isinstance(store, MongoJobStore)
    return MongoJobStore(store.url, store.database)


# --- create, get, list ------------------------------------------------------------------------


async def test_create_then_get_returns_the_same_job(job_store: JobStore) -> None:
    job = make_job(priority=9, size_bytes=1234, duration_seconds=1.5, published=True)
    await job_store.create(job)

    got = await job_store.get(job.id)

    assert at_ms(got) == at_ms(job)
    assert got.status is JobStatus.PENDING
    assert got.created_at.utcoffset() == timedelta(0)


async def test_unknown_job_is_not_found(job_store: JobStore) -> None:
    for call in (
        job_store.get,
        job_store.cancel,
        job_store.delete,
        lambda job_id: job_store.claim(job_id, "w1"),
    ):
        with pytest.raises(JobNotFound):
            await call("no-such-job")


async def test_creating_an_existing_id_is_refused(job_store: JobStore) -> None:
    job = await created(job_store)

    with pytest.raises(JobConflict):
        await job_store.create(make_job(id=job.id))


async def test_list_is_newest_first_with_limit_and_status_filter(job_store: JobStore) -> None:
    start = utcnow()
    jobs = [await created(job_store, created_at=start + timedelta(seconds=i)) for i in range(5)]
    await job_store.claim(jobs[1].id, "w1")
    await job_store.claim(jobs[3].id, "w1")
    newest_first = [job.id for job in reversed(jobs)]

    assert [job.id for job in await job_store.list()] == newest_first
    assert [job.id for job in await job_store.list(limit=2)] == newest_first[:2]
    assert [job.id for job in await job_store.list(status=JobStatus.PROCESSING)] == [
        jobs[3].id,
        jobs[1].id,
    ]
    assert [job.id for job in await job_store.list(status=JobStatus.PENDING, limit=1)] == [
        jobs[4].id
    ]
    assert await job_store.list(status=JobStatus.FAILED) == []


# --- claims and attempts ----------------------------------------------------------------------


async def test_claim_starts_an_attempt(job_store: JobStore) -> None:
    job = await created(job_store)

    attempt = await job_store.claim(job.id, "worker-a")

    assert attempt is not None
    assert attempt.status is JobStatus.PROCESSING
    assert (attempt.attempts, attempt.worker_id, attempt.published) == (1, "worker-a", True)
    assert attempt.started_at is not None and attempt.heartbeat_at is not None
    assert at_ms(await job_store.get(job.id)) == at_ms(attempt)
    assert await job_store.claim(job.id, "worker-b") is None  # already taken


async def test_concurrent_claims_have_exactly_one_winner(job_store: JobStore) -> None:
    job = await created(job_store)
    other = twin(job_store)
    await other.open()
    try:
        stores = [job_store, other] * 5  # as if from two processes
        results = await asyncio.gather(
            *(store.claim(job.id, f"w{i}") for i, store in enumerate(stores))
        )
    finally:
        await other.close()

    winners = [attempt for attempt in results if attempt is not None]
    assert len(winners) == 1
    assert (await job_store.get(job.id)).attempts == 1
    assert (await job_store.get(job.id)).worker_id == winners[0].worker_id


async def test_takeover_fences_off_the_previous_attempt(job_store: JobStore) -> None:
    first = await claimed(job_store, "w1")
    assert await job_store.claim(first.id, "w2") is None  # no takeover without asking

    second = await job_store.claim(first.id, "w2", takeover=True)

    assert second is not None and (second.attempts, second.worker_id) == (2, "w2")
    assert not await job_store.heartbeat(first, progress=50)
    assert not await job_store.complete(first, transcription="stale")
    assert not await job_store.release(first, error="stale")
    assert not await job_store.fail(first.id, "stale", attempt=first.attempts)
    assert at_ms(await job_store.get(first.id)) == at_ms(second)
    assert await job_store.heartbeat(second)


async def test_heartbeat_records_progress(job_store: JobStore) -> None:
    job = await claimed(job_store)

    assert await job_store.heartbeat(job, progress=42.04)
    assert (await job_store.get(job.id)).progress == 42.0
    assert await job_store.heartbeat(job, progress=250)
    after = await job_store.get(job.id)
    assert after.progress == 100.0
    assert after.heartbeat_at is not None and job.heartbeat_at is not None
    assert after.heartbeat_at >= job.heartbeat_at


async def test_complete_stores_the_result(job_store: JobStore) -> None:
    job = await claimed(job_store)

    assert await job_store.complete(
        job,
        transcription="hello",
        result_key="results/x.json",
        duration_seconds=3.5,
        detected_language="en",
    )

    done = await job_store.get(job.id)
    assert done.status is JobStatus.COMPLETED
    assert (done.progress, done.transcription, done.result_key) == (
        100.0,
        "hello",
        "results/x.json",
    )
    assert (done.duration_seconds, done.detected_language) == (3.5, "en")
    assert done.completed_at is not None


async def test_release_hands_the_job_back_for_another_attempt(job_store: JobStore) -> None:
    job = await claimed(job_store)

    assert await job_store.release(job, error="broker hiccup")

    back = await job_store.get(job.id)
    assert (back.status, back.worker_id, back.error_message) == (
        JobStatus.PENDING,
        None,
        "broker hiccup",
    )
    again = await job_store.claim(job.id, "w2")
    assert again is not None and again.attempts == 2


async def test_fields_outside_the_job_are_refused(job_store: JobStore) -> None:
    job = await claimed(job_store)

    with pytest.raises(ValueError):
        await job_store.complete(job, no_such_field="x")
    assert (await job_store.get(job.id)).status is JobStatus.PROCESSING


# --- final states -----------------------------------------------------------------------------


async def _finished(store: JobStore, status: JobStatus) -> Job:
    job = await claimed(store)
    if status is JobStatus.COMPLETED:
        assert await store.complete(job, transcription="done")
    elif status is JobStatus.FAILED:
        assert await store.fail(job.id, "bad audio", attempt=job.attempts)
    else:
        await store.cancel(job.id)
    return await store.get(job.id)


@pytest.mark.parametrize("status", sorted(FINAL_STATES))
async def test_a_final_job_never_changes(job_store: JobStore, status: JobStatus) -> None:
    final = await _finished(job_store, status)
    assert final.status is status

    assert not await job_store.fail(final.id, "late failure")
    assert not await job_store.complete(final, transcription="late")
    assert not await job_store.heartbeat(final, progress=1)
    assert not await job_store.release(final)
    assert await job_store.claim(final.id, "w9", takeover=True) is None
    await job_store.mark_published(final.id)
    with pytest.raises(JobConflict):
        await job_store.cancel(final.id)
    assert at_ms(await job_store.get(final.id)) == at_ms(final)


async def test_cancel_stops_pending_and_running_jobs(job_store: JobStore) -> None:
    pending = await created(job_store)
    running = await claimed(job_store)

    assert (await job_store.cancel(pending.id)).status is JobStatus.CANCELLED
    cancelled = await job_store.cancel(running.id)

    assert cancelled.status is JobStatus.CANCELLED and cancelled.completed_at is not None
    assert not await job_store.heartbeat(running)  # the worker learns it must stop
    assert not await job_store.complete(running)


async def test_delete_removes_only_final_jobs(job_store: JobStore) -> None:
    job = await claimed(job_store)
    await job_store.save_chunk(job.id, 0, {"text": "a"})
    with pytest.raises(JobConflict):
        await job_store.delete(job.id)

    await job_store.cancel(job.id)
    deleted = await job_store.delete(job.id)

    assert deleted.id == job.id and deleted.status is JobStatus.CANCELLED
    with pytest.raises(JobNotFound):
        await job_store.get(job.id)
    assert await job_store.load_chunks(job.id) == []


# --- checkpoints ------------------------------------------------------------------------------


async def test_checkpoints_are_saved_overwritten_loaded_in_order_and_deleted(
    job_store: JobStore,
) -> None:
    job, other = await created(job_store), await created(job_store)
    chunk = {"start": 0.0, "segments": [{"start": 0.5, "end": 1.25, "text": "hi"}], "n": 3}
    await job_store.save_chunk(job.id, 2, {"i": 2})
    await job_store.save_chunk(job.id, 10, {"i": 10})
    await job_store.save_chunk(job.id, 0, chunk)
    await job_store.save_chunk(job.id, 2, {"i": 2, "again": True})
    await job_store.save_chunk(other.id, 0, {"other": True})

    assert await job_store.load_chunks(job.id) == [chunk, {"i": 2, "again": True}, {"i": 10}]

    await job_store.delete_chunks(job.id)
    assert await job_store.load_chunks(job.id) == []
    assert await job_store.load_chunks(other.id) == [{"other": True}]


# --- recovery queries -------------------------------------------------------------------------


async def test_unpublished_pending_and_stale_find_what_recovery_needs(
    job_store: JobStore,
) -> None:
    old = utcnow() - timedelta(minutes=10)
    lost = await created(job_store, updated_at=old, created_at=old)
    await created(job_store, updated_at=old, published=True)  # its message went out
    await created(job_store)  # unpublished, but too recent to worry about
    stale = await created(job_store, status=JobStatus.PROCESSING, attempts=1, updated_at=old)
    await claimed(job_store)  # running and beating
    minute = timedelta(minutes=1)

    assert [job.id for job in await job_store.unpublished(older_than=minute)] == [lost.id]
    assert len(await job_store.pending(older_than=minute)) == 2
    assert [job.id for job in await job_store.stale(older_than=minute)] == [stale.id]

    await job_store.mark_published(lost.id)
    assert await job_store.unpublished(older_than=minute) == []
    assert (await job_store.get(lost.id)).published


async def test_outbox_bookkeeping_on_pending_jobs(job_store: JobStore) -> None:
    old = utcnow() - timedelta(minutes=10)
    job = await created(job_store, updated_at=old, published=True)
    minute = timedelta(minutes=1)

    await job_store.mark_unpublished(job.id)
    assert [found.id for found in await job_store.unpublished(older_than=minute)] == [job.id]

    await job_store.heartbeat_pending(job.id)  # just published again: not due for a while
    assert await job_store.pending(older_than=minute) == []
    assert await job_store.unpublished(older_than=minute) == []


async def test_recovery_queries_are_oldest_first_and_limited(job_store: JobStore) -> None:
    old = utcnow() - timedelta(hours=1)
    jobs = [
        await created(job_store, created_at=old + timedelta(seconds=i), updated_at=old)
        for i in range(3)
    ]

    found = await job_store.unpublished(older_than=timedelta(minutes=1), limit=2)

    assert [job.id for job in found] == [jobs[0].id, jobs[1].id]


# --- concurrency and failures -----------------------------------------------------------------


async def test_concurrent_writes_are_all_kept(job_store: JobStore) -> None:
    jobs = [make_job() for _ in range(20)]
    await asyncio.gather(*(job_store.create(job) for job in jobs))
    attempts = await asyncio.gather(*(job_store.claim(job.id, "w") for job in jobs))
    assert all(attempt is not None for attempt in attempts)
    await asyncio.gather(
        *(
            job_store.heartbeat(attempt, progress=i)
            for i, attempt in enumerate(attempts)
            if attempt is not None
        ),
        *(job_store.save_chunk(job.id, 0, {"n": i}) for i, job in enumerate(jobs)),
    )

    stored = {job.id: job for job in await job_store.list(limit=100)}
    assert len(stored) == 20
    for i, job in enumerate(jobs):
        assert (stored[job.id].status, stored[job.id].progress) == (JobStatus.PROCESSING, i)
        assert await job_store.load_chunks(job.id) == [{"n": i}]


async def test_ping(job_store: JobStore) -> None:
    await job_store.ping()


async def test_a_down_server_is_reported_and_used_again_when_back(
    job_store: JobStore,
    request: pytest.FixtureRequest,
) -> None:
    if not isinstance(job_store, MongoJobStore):
        pytest.skip("an embedded store has no server to lose")
    server: MongoServer = request.getfixturevalue("mongo_server")
    job = make_job()

    server.kill()
    try:
        began = time.monotonic()
        for call in (job_store.ping, lambda: job_store.get(job.id), lambda: job_store.create(job)):
            with pytest.raises(BackendUnavailable) as down:
                await call()
            assert down.value.backend == "mongodb"
        assert time.monotonic() - began < 15
    finally:
        server.start()

    # The same store object, no reopening. (What was written just before the kill may be
    # lost, as with mongod's default write concern: the server flushes its log in the
    # background.)
    await job_store.create(job)
    assert await job_store.claim(job.id, "w1") is not None


async def test_a_lease_has_one_holder_at_a_time(job_store: JobStore) -> None:
    other = twin(job_store)
    await other.open()
    try:
        assert await job_store.try_lease("sweep", "a", ttl=30)
        assert not await other.try_lease("sweep", "b", ttl=30)  # held by a, not expired
        assert await job_store.try_lease("sweep", "a", ttl=30)  # a renews its own
        assert await other.try_lease("another-sweep", "b", ttl=30)  # names are independent
    finally:
        await other.close()


async def test_an_expired_lease_passes_to_another_holder(job_store: JobStore) -> None:
    assert await job_store.try_lease("sweep", "a", ttl=0.2)
    await asyncio.sleep(0.4)  # a died without renewing
    assert await job_store.try_lease("sweep", "b", ttl=30)
    assert not await job_store.try_lease("sweep", "a", ttl=30)


async def test_racing_holders_get_exactly_one_lease(job_store: JobStore) -> None:
    stores = [twin(job_store) for _ in range(4)]
    for store in stores:
        await store.open()
    try:
        won = await asyncio.gather(
            *(store.try_lease("race", f"holder-{n}", ttl=30) for n, store in enumerate(stores))
        )
    finally:
        for store in stores:
            await store.close()
    assert sum(won) == 1


# --- operations (issue 11): JSON fields, webhook outbox, retention queries -------------------


async def test_list_fields_round_trip(job_store: JobStore) -> None:
    attempts = [{"at": "2026-01-01T00:00:00+00:00", "status_code": 500, "duration_ms": 12}]
    job = await created(job_store, callback_url="http://h.example/x", webhook_attempts=attempts)
    assert (await job_store.get(job.id)).webhook_attempts == attempts
    assert (await job_store.get((await created(job_store)).id)).webhook_attempts == []
    await job_store.fail(job.id, "broken")
    more = [*attempts, {"at": "later", "error": "timeout", "duration_ms": 3}]
    updated = await job_store.update_final(job.id, {"webhook_attempts": more})
    assert updated is not None and updated.webhook_attempts == more
    assert (await job_store.get(job.id)).webhook_attempts == more


async def test_final_transition_makes_the_webhook_due(job_store: JobStore) -> None:
    hooked = await claimed(job_store)
    await job_store._update(
        hooked.id,
        statuses=[JobStatus.PROCESSING],
        attempts=None,
        changes={"callback_url": "http://h.example/x"},
    )
    plain = await claimed(job_store)
    assert await job_store.complete(hooked)
    assert await job_store.complete(plain)
    await asyncio.sleep(0.01)
    due = {job.id for job in await job_store.webhooks_due(limit=100)}
    assert hooked.id in due and plain.id not in due
    await job_store.update_final(hooked.id, {"webhook_next_at": None})
    assert hooked.id not in {job.id for job in await job_store.webhooks_due(limit=100)}
    with pytest.raises(ValueError):
        await job_store.update_final(hooked.id, {"status": JobStatus.PENDING})


async def test_finished_before_and_counts(job_store: JobStore) -> None:
    old = await created(job_store)
    await job_store.fail(old.id, "x")
    await job_store.update_final(old.id, {"completed_at": utcnow() - timedelta(days=3)})
    new = await created(job_store)
    await job_store.fail(new.id, "y")
    pending = await created(job_store)
    found = await job_store.finished_before(
        status=JobStatus.FAILED, before=utcnow() - timedelta(days=1), limit=100
    )
    ids = {job.id for job in found}
    assert old.id in ids and new.id not in ids and pending.id not in ids
    assert await job_store.count(status=JobStatus.PENDING) >= 1
    kept = {job.id for job in await job_store.audio_kept(limit=1000)}
    assert old.id in kept and pending.id not in kept
    await job_store.update_final(old.id, {"audio_deleted_at": utcnow()})
    assert old.id not in {job.id for job in await job_store.audio_kept(limit=1000)}
