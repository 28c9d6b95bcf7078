"""The security half of the JobStore contract (issue 12), against every backend: owners,
guarded delete, API keys, the shared secret and the usage counters."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from smap_stt.errors import JobConflict, JobNotFound
from smap_stt.jobs import JobStatus, utcnow
from smap_stt.keys import hash_key, new_key
from smap_stt.store.base import JobStore
from tests.store.test_contract import created, make_job, twin


async def test_another_owners_job_is_not_found(job_store: JobStore) -> None:
    mine = await created(job_store, owner="alice")
    theirs = await created(job_store, owner="bob")
    await created(job_store, owner=None)

    assert (await job_store.get(mine.id, owner="alice")).id == mine.id
    for call in (job_store.get, job_store.cancel, job_store.delete):
        with pytest.raises(JobNotFound) as raised:
            await call(theirs.id, owner="alice")
        assert str(raised.value) == f"no job with id {theirs.id!r}"
    assert (await job_store.get(theirs.id)).status is JobStatus.PENDING  # untouched
    assert [job.id for job in await job_store.list(owner="alice")] == [mine.id]
    assert len(await job_store.list()) == 3
    assert await job_store.count(status=JobStatus.PENDING, owner="alice") == 1
    assert await job_store.count(status=JobStatus.PENDING) == 3


async def test_owner_survives_the_round_trip(job_store: JobStore) -> None:
    job = await created(job_store, owner="k1")
    assert (await job_store.get(job.id)).owner == "k1"
    assert (await job_store.list(status=JobStatus.PENDING, owner="k1"))[0].owner == "k1"


async def test_parallel_deletes_succeed_exactly_once(job_store: JobStore) -> None:
    job = await created(job_store)
    await job_store.cancel(job.id)
    await job_store.save_chunk(job.id, 0, {"text": "x"})
    stores = [twin(job_store) for _ in range(4)]
    for store in stores:
        await store.open()
    try:
        results = await asyncio.gather(
            *(store.delete(job.id) for store in [job_store, *stores]), return_exceptions=True
        )
    finally:
        for store in stores:
            await store.close()
    deleted = [result for result in results if not isinstance(result, BaseException)]
    assert len(deleted) == 1, results
    assert deleted[0].id == job.id
    assert all(isinstance(result, JobNotFound) for result in results if result not in deleted)
    assert await job_store.load_chunks(job.id) == []


async def test_delete_of_a_running_job_is_a_conflict(job_store: JobStore) -> None:
    job = await created(job_store)
    with pytest.raises(JobConflict):
        await job_store.delete(job.id)
    assert (await job_store.get(job.id)).status is JobStatus.PENDING


async def test_keys_are_stored_listed_and_revoked(job_store: JobStore) -> None:
    assert not await job_store.has_active_keys()
    secret, key = new_key("ci", max_priority=3)
    _, admin = new_key("ops", admin=True)
    await job_store.insert_key(key)
    await job_store.insert_key(admin)

    assert await job_store.has_active_keys()
    got = await job_store.get_key(key.id)
    assert got is not None
    assert (got.name, got.admin, got.max_priority, got.revoked_at) == ("ci", False, 3, None)
    assert got.key_hash == hash_key(secret)
    assert got.created_at.utcoffset() == timedelta(0)
    assert [k.id for k in await job_store.list_keys()] == [key.id, admin.id]
    assert await job_store.get_key("000000000000") is None

    revoked = await job_store.revoke_key(key.id, utcnow())
    assert revoked is not None and revoked.revoked_at is not None
    again = await job_store.revoke_key(key.id, utcnow() + timedelta(hours=1))
    assert again is not None and again.revoked_at == revoked.revoked_at
    assert await job_store.revoke_key("000000000000", utcnow()) is None
    assert await job_store.has_active_keys()  # the admin key is still there
    await job_store.revoke_key(admin.id, utcnow())
    assert not await job_store.has_active_keys()


async def test_the_shared_secret_is_the_first_one_stored(job_store: JobStore) -> None:
    other = twin(job_store)
    await other.open()
    try:
        first, second = await asyncio.gather(
            job_store.shared_secret("signing", "a" * 64), other.shared_secret("signing", "b" * 64)
        )
    finally:
        await other.close()
    assert first == second
    assert await job_store.shared_secret("signing", "c" * 64) == first
    assert await job_store.shared_secret("other", "d" * 64) == "d" * 64


async def test_usage_counters_add_up_atomically(job_store: JobStore) -> None:
    expires = utcnow() + timedelta(minutes=1)
    # The first increment creates the counter (racing creations are retried in the backend;
    # SecantusDB was seen to lose such a race now and then), then increments are atomic.
    assert await job_store.add_usage("rate:k1:1", 1, expires) == 1
    totals = await asyncio.gather(
        *(job_store.add_usage("rate:k1:1", 1, expires) for _ in range(19))
    )
    assert sorted(totals) == list(range(2, 21))
    assert await job_store.add_usage("rate:k1:1", 100, expires) == 120
    assert await job_store.add_usage("rate:k2:1", 5, expires) == 5


async def test_expired_counters_are_forgotten(job_store: JobStore) -> None:
    await job_store.add_usage("old", 7, utcnow() - timedelta(seconds=1))
    await job_store.add_usage("new", 1, utcnow() + timedelta(minutes=1))  # sweeps the old ones
    assert await job_store.add_usage("old", 1, utcnow() + timedelta(minutes=1)) == 1


def test_make_job_has_no_owner() -> None:
    assert make_job().owner is None
