"""The job store contract. The base class owns every state change; backends only provide
atomic primitives (`_insert`, `_get`, `_find`, `_update`, ...), so the rules of which state may
follow which live in one place for SQLite and MongoDB alike."""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

from smap_stt.errors import JobConflict, JobNotFound
from smap_stt.jobs import ACTIVE_STATES, FINAL_STATES, Job, JobStatus, sources, utcnow
from smap_stt.keys import ApiKey

__all__ = ["JobStore"]


class JobStore(ABC):
    """Jobs and their chunk checkpoints.

    Every method may raise `BackendUnavailable` when the database does not answer.
    Guarded updates return False (or None) when the guard no longer holds: the job was
    finished, cancelled or taken over by another attempt meanwhile.
    """

    name: str

    # --- primitives for backends -------------------------------------------------------------

    @abstractmethod
    async def _insert(self, job: Job) -> None: ...

    @abstractmethod
    async def _get(self, job_id: str) -> Job | None: ...

    @abstractmethod
    async def _find(
        self,
        *,
        statuses: Collection[JobStatus] | None,
        limit: int,
        newest_first: bool = True,
        published: bool | None = None,
        updated_before: datetime | None = None,
        offset: int = 0,
        owner: str | None = None,
    ) -> list[Job]:
        """Jobs matching every given filter (`owner` None: any owner), by `created_at` (then
        id), skipping `offset`."""

    @abstractmethod
    async def _update(
        self,
        job_id: str,
        *,
        statuses: Collection[JobStatus],
        attempts: int | None,
        changes: dict[str, Any],
    ) -> Job | None:
        """Atomically apply `changes` if the job's status is in `statuses` (and its attempts
        equal `attempts` when given); return the updated job, or None if the guard failed."""

    @abstractmethod
    async def _delete(self, job_id: str) -> bool: ...

    # --- dialects (issue 10): paging, queue position, speed, lookups by key or content ---

    @abstractmethod
    async def _count(
        self,
        *,
        statuses: Collection[JobStatus] | None,
        ahead_of: Job | None = None,
        owner: str | None = None,
    ) -> tuple[int, float]:
        """How many jobs match, and the audio seconds they have left to transcribe (known
        `duration_seconds` × (100 − progress) / 100; unknown durations count 0). With
        `ahead_of`: only jobs that run before it (higher priority, or the same priority and
        created earlier). With `owner` (issue 12): only that owner's jobs."""

    @abstractmethod
    async def _find_equal(self, name: str, value: str, *, limit: int) -> list[Job]:
        """Jobs whose field `name` (idempotency_key or content_sha256) equals `value`,
        newest first."""

    @abstractmethod
    async def _speed_samples(self, limit: int) -> list[tuple[float, float]]:
        """(processing_time_seconds, duration_seconds) of the latest `limit` COMPLETED jobs
        that were transcribed (not deduplicated), most recently completed first."""

    # --- issue 12 (security): primitives for tenants, keys, secrets and limits ---------------

    @abstractmethod
    async def _delete_if(
        self, job_id: str, *, statuses: Collection[JobStatus], owner: str | None
    ) -> Job | None:
        """Atomically delete the job if its status is in `statuses` (and it belongs to `owner`
        when given); the deleted job, or None if nothing matched."""

    @abstractmethod
    async def insert_key(self, key: ApiKey) -> None: ...

    @abstractmethod
    async def get_key(self, key_id: str) -> ApiKey | None: ...

    @abstractmethod
    async def list_keys(self) -> builtins.list[ApiKey]:
        """Every key, revoked ones too, oldest first."""

    @abstractmethod
    async def revoke_key(self, key_id: str, at: datetime) -> ApiKey | None:
        """Mark the key revoked (once: a second revoke keeps the first time); None if unknown."""

    @abstractmethod
    async def has_active_keys(self) -> bool: ...

    @abstractmethod
    async def shared_secret(self, name: str, candidate: str) -> str:
        """The secret stored under `name`, storing `candidate` first if there is none: one
        atomic step, so every process sharing the database ends up with the same value."""

    @abstractmethod
    async def add_usage(self, counter: str, amount: int, expires_at: datetime) -> int:
        """Add `amount` to the counter `counter` (created at 0, forgotten after `expires_at`)
        and return its new total, in one atomic step shared by every API process."""

    @abstractmethod
    async def save_chunk(self, job_id: str, index: int, data: dict[str, Any]) -> None:
        """Checkpoint chunk `index` of a job (overwrites a previous save of the same chunk)."""

    @abstractmethod
    async def load_chunks(self, job_id: str) -> list[dict[str, Any]]:
        """Checkpointed chunks of a job, in index order."""

    @abstractmethod
    async def chunk_indices(self, job_id: str) -> list[int]:
        """The indices of a job's checkpointed chunks, in order (their data is not read)."""

    @abstractmethod
    async def delete_chunks(self, job_id: str) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raise `BackendUnavailable` unless the database answers."""

    @abstractmethod
    async def try_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew the lease `name` for `ttl` seconds. True if `holder` has it now: it
        was free, expired, or already `holder`'s. One atomic step, so among processes sharing
        the database exactly one holds a lease at a time (the recovery sweeps use this)."""

    async def open(self) -> None:
        """Connect and create tables/indexes; idempotent."""

    async def close(self) -> None:
        """Release connections."""

    # --- the contract ------------------------------------------------------------------------

    async def create(self, job: Job) -> None:
        await self._insert(job)

    async def get(self, job_id: str, *, owner: str | None = None) -> Job:
        """The job; with `owner`, only if it is that owner's (another's job is not found)."""
        job = await self._get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise JobNotFound(f"no job with id {job_id!r}")
        return job

    async def list(
        self,
        *,
        status: JobStatus | None = None,
        limit: int = 20,
        offset: int = 0,
        owner: str | None = None,
    ) -> builtins.list[Job]:
        statuses = None if status is None else [status]
        return await self._find(statuses=statuses, limit=limit, offset=offset, owner=owner)

    # --- dialects (issue 10) -----------------------------------------------------------------

    async def count(self, *, status: JobStatus | None = None, owner: str | None = None) -> int:
        statuses = None if status is None else [status]
        count, _ = await self._count(statuses=statuses, owner=owner)
        return count

    async def queue_ahead(self, job: Job) -> tuple[int, float]:
        """PENDING jobs that run before `job`, and their audio seconds left."""
        return await self._count(statuses=[JobStatus.PENDING], ahead_of=job)

    async def running(self) -> tuple[int, float]:
        """PROCESSING jobs, and their audio seconds left."""
        return await self._count(statuses=[JobStatus.PROCESSING])

    async def by_idempotency_key(self, key: str) -> Job | None:
        jobs = await self._find_equal("idempotency_key", key, limit=1)
        return jobs[0] if jobs else None

    async def by_content(self, sha256: str, *, limit: int = 20) -> builtins.list[Job]:
        """Jobs of a file with this content hash, newest first."""
        return await self._find_equal("content_sha256", sha256, limit=limit)

    async def speed_samples(self, limit: int = 20) -> builtins.list[tuple[float, float]]:
        return await self._speed_samples(limit)

    async def claim(self, job_id: str, worker_id: str, *, takeover: bool = False) -> Job | None:
        """Start a new attempt: PENDING → PROCESSING (or PROCESSING → PROCESSING when
        `takeover`, because the previous holder is known to be gone). None if not claimable."""
        job = await self._get(job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        allowed = sources(JobStatus.PROCESSING) if takeover else {JobStatus.PENDING}
        if job.status not in allowed:
            return None
        now = utcnow()
        changes: dict[str, Any] = {
            "status": JobStatus.PROCESSING,
            "attempts": job.attempts + 1,
            "worker_id": worker_id,
            "started_at": now,
            "heartbeat_at": now,
            "updated_at": now,
            "published": True,
        }
        return await self._update(job_id, statuses=allowed, attempts=job.attempts, changes=changes)

    async def heartbeat(
        self, job: Job, *, progress: float | None = None, chunks: tuple[int, int] | None = None
    ) -> bool:
        """Record that the attempt is alive (and its progress; `chunks`: finished, expected).
        False: stop working on it."""
        changes: dict[str, Any] = {"heartbeat_at": utcnow(), "updated_at": utcnow()}
        if progress is not None:
            changes["progress"] = round(min(max(progress, 0.0), 100.0), 1)
        if chunks is not None:
            changes["chunks_completed"], changes["chunks_total"] = chunks
        return await self._holding(job, changes) is not None

    async def complete(self, job: Job, **fields: Any) -> bool:
        now = utcnow()
        changes = {
            "status": JobStatus.COMPLETED,
            "progress": 100.0,
            "completed_at": now,
            "updated_at": now,
            "error_message": None,
            "webhook_next_at": now,  # the webhook outbox (issue 11)
            **fields,
        }
        return await self._holding(job, changes) is not None

    async def release(self, job: Job, *, error: str | None = None) -> bool:
        """Hand an attempt back: PROCESSING → PENDING, to be retried or resumed."""
        changes = {
            "status": JobStatus.PENDING,
            "updated_at": utcnow(),
            "error_message": error,
            "worker_id": None,
        }
        return await self._holding(job, changes) is not None

    async def fail(self, job_id: str, reason: str, *, attempt: int | None = None) -> bool:
        """Mark FAILED unless the job is already final (or, with `attempt`, was taken over)."""
        now = utcnow()
        changes = {
            "status": JobStatus.FAILED,
            "error_message": reason,
            "completed_at": now,
            "updated_at": now,
            "webhook_next_at": now,  # the webhook outbox (issue 11)
        }
        updated = await self._update(
            job_id, statuses=sources(JobStatus.FAILED), attempts=attempt, changes=changes
        )
        return updated is not None

    async def cancel(self, job_id: str, *, owner: str | None = None) -> Job:
        job = await self.get(job_id, owner=owner)
        if job.status in FINAL_STATES:
            raise JobConflict(f"job {job_id} is already {job.status.value}")
        now = utcnow()
        changes = {
            "status": JobStatus.CANCELLED,
            "completed_at": now,
            "updated_at": now,
            "error_message": "cancelled by request",
            "webhook_next_at": now,  # the webhook outbox (issue 11)
        }
        updated = await self._update(
            job_id, statuses=sources(JobStatus.CANCELLED), attempts=None, changes=changes
        )
        if updated is None:  # it became final between the read and the update
            return await self.cancel(job_id, owner=owner)
        return updated

    async def delete(self, job_id: str, *, owner: str | None = None) -> Job:
        """Delete a final job in one guarded step: of concurrent deletes exactly one gets the
        job back, the others JobNotFound. Its checkpoints go with it."""
        deleted = await self._delete_if(job_id, statuses=FINAL_STATES, owner=owner)
        if deleted is None:
            job = await self.get(job_id, owner=owner)  # gone (404), or still running (409)
            raise JobConflict(f"job {job_id} is {job.status.value}; cancel it before deleting it")
        await self.delete_chunks(job_id)
        return deleted

    async def mark_published(self, job_id: str) -> None:
        await self._update(
            job_id, statuses=ACTIVE_STATES, attempts=None, changes={"published": True}
        )

    async def mark_unpublished(self, job_id: str) -> None:
        await self._update(
            job_id, statuses=[JobStatus.PENDING], attempts=None, changes={"published": False}
        )

    async def heartbeat_pending(self, job_id: str) -> None:
        """Note that a PENDING job was just published again, so it is not re-sent next pass."""
        await self._update(
            job_id, statuses=[JobStatus.PENDING], attempts=None, changes={"updated_at": utcnow()}
        )

    async def unpublished(self, *, older_than: timedelta, limit: int = 100) -> builtins.list[Job]:
        """PENDING jobs whose message may never have reached the broker (the outbox)."""
        return await self._find(
            statuses=[JobStatus.PENDING],
            limit=limit,
            newest_first=False,
            published=False,
            updated_before=utcnow() - older_than,
        )

    async def pending(self, *, older_than: timedelta, limit: int = 100) -> builtins.list[Job]:
        return await self._find(
            statuses=[JobStatus.PENDING],
            limit=limit,
            newest_first=False,
            updated_before=utcnow() - older_than,
        )

    async def stale(self, *, older_than: timedelta, limit: int = 100) -> builtins.list[Job]:
        """PROCESSING jobs whose worker stopped sending heartbeats."""
        return await self._find(
            statuses=[JobStatus.PROCESSING],
            limit=limit,
            newest_first=False,
            updated_before=utcnow() - older_than,
        )

    async def _holding(self, job: Job, changes: dict[str, Any]) -> Job | None:
        """Update the job only while this attempt holds it (PROCESSING, same attempt)."""
        target = changes.get("status", JobStatus.PROCESSING)
        allowed = sources(target) & {JobStatus.PROCESSING}
        return await self._update(job.id, statuses=allowed, attempts=job.attempts, changes=changes)

    # --- operations (issue 11): queue figures, webhooks, retention ----------------------------

    async def _select(
        self,
        *,
        statuses: Collection[JobStatus] | None,
        before: Mapping[str, datetime],
        is_null: Collection[str] = (),
        not_null: Collection[str] = (),
        limit: int,
        order_by: str = "created_at",
    ) -> builtins.list[Job]:
        """Jobs whose status is in `statuses`, whose `before` fields are set and earlier than
        the given times, whose `is_null` fields are unset and `not_null` ones set; oldest
        `order_by` first."""
        raise NotImplementedError

    async def list_oldest(self, *, status: JobStatus, limit: int) -> builtins.list[Job]:
        """The jobs in `status` that were created first (the backlog's head)."""
        return await self._find(statuses=[status], limit=limit, newest_first=False)

    async def webhooks_due(self, *, limit: int) -> builtins.list[Job]:
        """Final jobs with a callback whose next webhook attempt is due."""
        return await self._select(
            statuses=FINAL_STATES,
            before={"webhook_next_at": utcnow()},
            not_null=["callback_url"],
            limit=limit,
            order_by="webhook_next_at",
        )

    async def finished_before(
        self, *, status: JobStatus, before: datetime, limit: int
    ) -> builtins.list[Job]:
        """Final jobs in `status` that finished before `before` (retention)."""
        return await self._select(
            statuses=[status], before={"completed_at": before}, limit=limit, order_by="completed_at"
        )

    async def audio_kept(self, *, limit: int) -> builtins.list[Job]:
        """Final jobs whose audio is still stored (KEEP_AUDIO=false deletes it)."""
        return await self._select(
            statuses=FINAL_STATES,
            before={"completed_at": utcnow()},
            is_null=["audio_deleted_at"],
            limit=limit,
            order_by="completed_at",
        )

    async def update_final(self, job_id: str, changes: dict[str, Any]) -> Job | None:
        """Change bookkeeping fields of a final job (webhook state, audio deleted); never its
        status. None if the job is gone or not final."""
        if "status" in changes:
            raise ValueError("a final job's status never changes")
        return await self._update(job_id, statuses=FINAL_STATES, attempts=None, changes=changes)
