"""Retention on a real SQLite store and blob directory: exactly what is old goes, with its
audio, transcript and checkpoints; KEEP_AUDIO=false keeps the transcript; stale temp files of
dead processes go, a live process's stay."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from smap_stt import admin, retention
from smap_stt.backends import Backends
from smap_stt.blobs.local import LocalBlobStore
from smap_stt.config import Settings
from smap_stt.errors import InvalidRequest, JobNotFound
from smap_stt.jobs import Job, JobStatus, new_job_id, utcnow
from smap_stt.queue.embedded import EmbeddedQueue
from smap_stt.store.sqlite import SqliteJobStore


@pytest.fixture
async def backends(tmp_path: Path) -> AsyncIterator[Backends]:
    made = Backends(
        SqliteJobStore(tmp_path / "jobs.sqlite3"),
        LocalBlobStore(tmp_path / "blobs"),
        EmbeddedQueue(),
    )
    await made.open()
    yield made
    await made.close()


async def make(backends: Backends, status: JobStatus, age_days: float) -> Job:
    """A job in `status` that finished `age_days` ago, with audio, transcript and a chunk."""
    job_id = new_job_id()
    job = Job(
        id=job_id, filename="a.wav", language="en", model="base", audio_key=f"uploads/{job_id}.wav"
    )
    await backends.store.create(job)
    await backends.blobs.put_bytes(job.audio_key, b"RIFF audio")
    await backends.store.save_chunk(job_id, 0, {"index": 0})
    if status is JobStatus.PENDING:
        return job
    claimed = await backends.store.claim(job_id, "w")
    assert claimed is not None
    if status is JobStatus.COMPLETED:
        key = f"results/{job_id}.json"
        await backends.blobs.put_bytes(key, b"{}")
        assert await backends.store.complete(claimed, result_key=key)
    elif status is JobStatus.FAILED:
        assert await backends.store.fail(job_id, "bad audio")
    else:
        await backends.store.cancel(job_id)
    when = utcnow() - timedelta(days=age_days)
    updated = await backends.store.update_final(job_id, {"completed_at": when})
    assert updated is not None
    return updated


async def gone(backends: Backends, job: Job) -> bool:
    try:
        await backends.store.get(job.id)
    except JobNotFound:
        pass
    else:
        return False
    assert not await backends.blobs.exists(job.audio_key)
    assert not await backends.blobs.exists(f"results/{job.id}.json")
    assert await backends.store.load_chunks(job.id) == []
    return True


async def test_retention_deletes_exactly_what_is_old(backends: Backends) -> None:
    settings = Settings(_env_file=None, retention_days=5, retention_failed_days=20)
    old_done = await make(backends, JobStatus.COMPLETED, 6)
    old_cancelled = await make(backends, JobStatus.CANCELLED, 30)
    failed_kept = await make(backends, JobStatus.FAILED, 10)  # its own limit: 20 days
    failed_old = await make(backends, JobStatus.FAILED, 21)
    new_done = await make(backends, JobStatus.COMPLETED, 4)
    pending = await make(backends, JobStatus.PENDING, 0)
    await backends.store.update_final(pending.id, {"completed_at": utcnow()})  # not final: no-op

    dry = await retention.apply_retention(settings, backends, dry_run=True)
    assert dry.deleted == {"CANCELLED": 1, "COMPLETED": 1, "FAILED": 1}
    assert not await gone(backends, old_done)  # a dry run deletes nothing

    report = await retention.apply_retention(settings, backends)
    assert report.deleted == {"CANCELLED": 1, "COMPLETED": 1, "FAILED": 1}
    for job in (old_done, old_cancelled, failed_old):
        assert await gone(backends, job)
    for job in (failed_kept, new_done, pending):
        assert (await backends.store.get(job.id)).id == job.id
        assert await backends.blobs.exists(job.audio_key)
    assert (await retention.apply_retention(settings, backends)).total == 0


async def test_retention_zero_keeps_everything(backends: Backends) -> None:
    settings = Settings(_env_file=None)
    job = await make(backends, JobStatus.COMPLETED, 3650)
    assert (await retention.apply_retention(settings, backends)).total == 0
    assert await backends.blobs.exists(job.audio_key)


async def test_keep_audio_false_deletes_final_audio_keeps_transcript(backends: Backends) -> None:
    settings = Settings(_env_file=None, keep_audio=False)
    done = await make(backends, JobStatus.COMPLETED, 0)
    failed = await make(backends, JobStatus.FAILED, 0)
    pending = await make(backends, JobStatus.PENDING, 0)
    assert await retention.delete_final_audio(settings, backends) == 2
    assert not await backends.blobs.exists(done.audio_key)
    assert await backends.blobs.exists(f"results/{done.id}.json")
    assert await backends.blobs.exists(pending.audio_key)
    assert (await backends.store.get(done.id)).audio_deleted_at is not None
    assert await retention.delete_final_audio(settings, backends) == 0
    with pytest.raises(InvalidRequest, match="audio is gone"):
        await admin.requeue_job(backends, failed.id, embedded=True)
    assert (await backends.store.get(failed.id)).status is JobStatus.FAILED


async def test_requeue_makes_a_new_job_and_the_failed_one_stays(backends: Backends) -> None:
    failed = await make(backends, JobStatus.FAILED, 0)
    new = await admin.requeue_job(backends, failed.id, embedded=True)
    assert new.id != failed.id and new.retry_of == failed.id
    assert new.status is JobStatus.PENDING and not new.published  # serve's outbox sends it
    assert await backends.blobs.get_bytes(new.audio_key) == b"RIFF audio"
    old = await backends.store.get(failed.id)
    assert old.status is JobStatus.FAILED and old.requeued_as == new.id
    with pytest.raises(InvalidRequest, match="already requeued"):
        await admin.requeue_job(backends, failed.id, embedded=True)
    assert await admin.purge(backends) == 1  # embedded purge: every PENDING job
    assert (await backends.store.get(new.id)).error_message == admin.PURGE_REASON
    assert await backends.store.count(status=JobStatus.PENDING) == 0


def test_stale_temp_files_of_dead_processes_go(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    for name in (f"uploads-{dead_pid}", f"work-{dead_pid}", f"metrics-{dead_pid}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "upload-x.part").write_bytes(b"x")
    live = [f"uploads-{os.getpid()}", f"work-{os.getppid()}"]
    for name in live:
        (tmp_path / name).mkdir()
    legacy_old = tmp_path / "job-abc-1"
    legacy_old.mkdir()
    legacy_new = tmp_path / "uploads"
    legacy_new.mkdir()
    (legacy_new / "upload-y.part").write_bytes(b"y")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(legacy_old, (day_ago, day_ago))
    assert retention.clean_stale_temp(tmp_path) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*live, "uploads"])


def test_cleanup_command(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SQLITE_PATH": str(tmp_path / "jobs.sqlite3"),
        "BLOB_DIR": str(tmp_path / "blobs"),
        "TEMP_DIR": str(tmp_path / "tmp"),
    }
    run = [sys.executable, "-m", "smap_stt.cli", "cleanup"]
    kept = subprocess.run([*run, "--dry-run"], env=env, capture_output=True, text=True)
    assert kept.returncode == 0, kept.stderr
    assert "RETENTION_DAYS is 0" in kept.stdout and "would delete no jobs" in kept.stdout
    env["RETENTION_DAYS"] = "1"
    done = subprocess.run(run, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "deleted no jobs" in done.stdout and "removed 0 stale" in done.stdout
