"""The embedded job store: one SQLite file, shared safely by every process on the machine.

All sqlite3 calls run on one dedicated thread that owns the connection (as aiosqlite does), so
the event loop never blocks and statements from concurrent coroutines are queued, never
interleaved: each primitive is a single statement in autocommit mode, so one coroutine can
never commit or roll back another's half-done transaction. WAL mode lets readers in other
processes (API workers, job workers) run while one of them writes; `busy_timeout` makes a writer
wait for another process's write instead of failing at once.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import types
import typing
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import MISSING, Field, fields
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from smap_stt.errors import BackendUnavailable, DuplicateIdempotencyKey, JobConflict
from smap_stt.jobs import Job, JobStatus
from smap_stt.keys import ApiKey
from smap_stt.store.base import JobStore

__all__ = ["SqliteJobStore"]

T = TypeVar("T")

_BUSY_TIMEOUT_SECONDS = 10.0
_SQL_TYPES: dict[object, str] = {
    str: "TEXT",
    JobStatus: "TEXT",
    datetime: "TEXT",
    int: "INTEGER",
    bool: "INTEGER",
    float: "REAL",
    "json": "TEXT",
}
_HINTS = {
    name: next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if isinstance(hint, types.UnionType)
    else hint  # `X | None` is stored as X
    for name, hint in typing.get_type_hints(Job).items()
}
# Lists and dicts (`list[dict[str, Any]]`, ...) are stored as JSON text.
_JSON_COLUMNS = frozenset(
    name for name, hint in _HINTS.items() if typing.get_origin(hint) in (list, dict)
)
_HINTS.update({name: "json" for name in _JSON_COLUMNS})
_COLUMNS = frozenset(_HINTS)
_FIELDS = tuple(field.name for field in fields(Job))
_BOOL_COLUMNS = frozenset(name for name, hint in _HINTS.items() if hint is bool)


def _filters(
    statuses: Collection[JobStatus] | None, owner: str | None
) -> tuple[list[str], list[object]]:
    """The WHERE terms, and their parameters, that every listing and count of jobs shares;
    callers append their own."""
    where: list[str] = ["1"]
    params: list[object] = []
    if statuses is not None:
        where.append(f"status IN ({', '.join('?' * len(statuses))})")
        params += [_to_sql(status) for status in statuses]
    if owner is not None:
        where.append("owner = ?")
        params.append(owner)
    return where, params


def _to_sql(value: object) -> object:
    """Datetimes as fixed-width UTC ISO text, so that text order is time order."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return value


def _to_job(row: sqlite3.Row) -> Job:
    data = dict(zip(row.keys(), row, strict=True))
    for name in _BOOL_COLUMNS:
        data[name] = bool(data[name])
    for name in _JSON_COLUMNS:
        if isinstance(data.get(name), str):
            data[name] = json.loads(data[name])
    return Job.from_dict(data)


def _check_columns(names: Collection[str]) -> None:
    """Column names are spliced into SQL, so only `Job`'s own fields (never `id`) may pass."""
    bad = (set(names) - _COLUMNS) | ({"id"} & set(names))
    if bad:
        raise ValueError(f"cannot set job fields {sorted(bad)}")


class SqliteJobStore(JobStore):
    """Jobs in one SQLite file (created with its parent directories on `open()`)."""

    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    # --- the connection thread ---------------------------------------------------------------

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None:
            raise RuntimeError("SqliteJobStore is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, work)

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise RuntimeError("SqliteJobStore is closed")
        try:
            return work(self._conn)
        except sqlite3.Error as exc:
            raise BackendUnavailable("sqlite", f"{self.path}: {exc}") from exc

    def _connect(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise BackendUnavailable("sqlite", f"cannot open {self.path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        self._conn = conn
        self._call(_create_schema)

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        executor = self._executor
        if executor is None:
            return
        await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
        executor.shutdown(wait=False)  # its queue is empty: the thread just exits
        self._executor = None

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- primitives --------------------------------------------------------------------------

    async def _insert(self, job: Job) -> None:
        # Read field by field, not `job.to_dict()`: its deep copy (dataclasses.asdict) was
        # most of an upload's insert (issue 14), and lists and dicts become JSON text anyway.
        values = {name: _to_sql(getattr(job, name)) for name in _FIELDS}
        sql = f"INSERT INTO jobs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})"

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(sql, list(values.values()))
            except sqlite3.IntegrityError as exc:
                if "idempotency_key" in str(exc):
                    raise DuplicateIdempotencyKey(job.idempotency_key or "") from exc
                raise JobConflict(f"job {job.id} already exists") from exc

        await self._run(insert)

    async def _get(self, job_id: str) -> Job | None:
        def get(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else _to_job(row)

        return await self._run(get)

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
        if limit <= 0:
            return []
        where, params = _filters(statuses, owner)
        if published is not None:
            where.append("published = ?")
            params.append(int(published))
        if updated_before is not None:
            where.append("updated_at < ?")
            params.append(_to_sql(updated_before))
        order = "DESC" if newest_first else "ASC"
        sql = (
            f"SELECT * FROM jobs WHERE {' AND '.join(where)} "
            f"ORDER BY created_at {order}, id {order} LIMIT ? OFFSET ?"
        )
        params += [limit, max(offset, 0)]

        def find(conn: sqlite3.Connection) -> list[Job]:
            return [_to_job(row) for row in conn.execute(sql, params).fetchall()]

        return await self._run(find)

    async def _update(
        self,
        job_id: str,
        *,
        statuses: Collection[JobStatus],
        attempts: int | None,
        changes: dict[str, Any],
    ) -> Job | None:
        _check_columns(changes)
        assignments = ", ".join(f"{name} = ?" for name in changes)
        guard = f"id = ? AND status IN ({', '.join('?' * len(statuses))})"
        params = [_to_sql(value) for value in changes.values()]
        params += [job_id, *(_to_sql(status) for status in statuses)]
        if attempts is not None:
            guard += " AND attempts = ?"
            params.append(attempts)
        sql = f"UPDATE jobs SET {assignments} WHERE {guard} RETURNING *"

        def update(conn: sqlite3.Connection) -> Job | None:
            # fetchall, not fetchone: the statement (and so its autocommit) must run to the end.
            rows = conn.execute(sql, params).fetchall()
            return _to_job(rows[0]) if rows else None

        return await self._run(update)

    async def _delete(self, job_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0

        return await self._run(delete)

    # --- dialects (issue 10) -----------------------------------------------------------------

    async def _count(
        self,
        *,
        statuses: Collection[JobStatus] | None,
        ahead_of: Job | None = None,
        owner: str | None = None,
    ) -> tuple[int, float]:
        where, params = _filters(statuses, owner)
        if ahead_of is not None:
            where.append("(priority > ? OR (priority = ? AND created_at < ?))")
            params += [ahead_of.priority, ahead_of.priority, _to_sql(ahead_of.created_at)]
        sql = (
            "SELECT COUNT(*), TOTAL(COALESCE(duration_seconds, 0) * (100 - progress) / 100.0) "
            f"FROM jobs WHERE {' AND '.join(where)}"
        )

        def count(conn: sqlite3.Connection) -> tuple[int, float]:
            number, seconds = conn.execute(sql, params).fetchone()
            return int(number), float(seconds)

        return await self._run(count)

    async def count(self, *, status: JobStatus | None = None, owner: str | None = None) -> int:
        # COUNT(*) alone is answered from the (status, ...) and (owner, status) indexes; the
        # audio seconds `_count` adds up read every row counted. Every upload counts the
        # waiting jobs (MAX_PENDING_JOBS), so that grew with the queue (issue 14).
        where, params = _filters(None if status is None else [status], owner)
        sql = f"SELECT COUNT(*) FROM jobs WHERE {' AND '.join(where)}"

        def count(conn: sqlite3.Connection) -> int:
            return int(conn.execute(sql, params).fetchone()[0])

        return await self._run(count)

    async def _find_equal(self, name: str, value: str, *, limit: int) -> list[Job]:
        if name not in ("idempotency_key", "content_sha256"):
            raise ValueError(f"cannot look jobs up by {name!r}")
        sql = f"SELECT * FROM jobs WHERE {name} = ? ORDER BY created_at DESC, id DESC LIMIT ?"

        def find(conn: sqlite3.Connection) -> list[Job]:
            return [_to_job(row) for row in conn.execute(sql, (value, limit)).fetchall()]

        return await self._run(find)

    async def _speed_samples(self, limit: int) -> list[tuple[float, float]]:
        sql = (
            "SELECT processing_time_seconds, duration_seconds FROM jobs "
            "WHERE status = 'COMPLETED' AND deduplicated_from IS NULL "
            "AND processing_time_seconds > 0 AND duration_seconds > 0 "
            "ORDER BY completed_at DESC LIMIT ?"
        )

        def samples(conn: sqlite3.Connection) -> list[tuple[float, float]]:
            return [(float(a), float(b)) for a, b in conn.execute(sql, (limit,)).fetchall()]

        return await self._run(samples)

    # --- issue 12 (security) ------------------------------------------------------------------

    async def _delete_if(
        self, job_id: str, *, statuses: Collection[JobStatus], owner: str | None
    ) -> Job | None:
        sql = f"DELETE FROM jobs WHERE id = ? AND status IN ({', '.join('?' * len(statuses))})"
        params: list[object] = [job_id, *(_to_sql(status) for status in statuses)]
        if owner is not None:
            sql += " AND owner = ?"
            params.append(owner)

        def delete(conn: sqlite3.Connection) -> Job | None:
            rows = conn.execute(sql + " RETURNING *", params).fetchall()
            return _to_job(rows[0]) if rows else None

        return await self._run(delete)

    async def insert_key(self, key: ApiKey) -> None:
        values = {name: _to_sql(value) for name, value in key.to_dict().items()}
        sql = f"INSERT INTO api_keys ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})"

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(sql, list(values.values()))

        await self._run(insert)

    async def get_key(self, key_id: str) -> ApiKey | None:
        def get(conn: sqlite3.Connection) -> ApiKey | None:
            row = conn.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            return None if row is None else ApiKey.from_dict(dict(row))

        return await self._run(get)

    async def list_keys(self) -> list[ApiKey]:
        def keys(conn: sqlite3.Connection) -> list[ApiKey]:
            rows = conn.execute("SELECT * FROM api_keys ORDER BY created_at, id").fetchall()
            return [ApiKey.from_dict(dict(row)) for row in rows]

        return await self._run(keys)

    async def revoke_key(self, key_id: str, at: datetime) -> ApiKey | None:
        def revoke(conn: sqlite3.Connection) -> ApiKey | None:
            conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (_to_sql(at), key_id),
            )
            row = conn.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            return None if row is None else ApiKey.from_dict(dict(row))

        return await self._run(revoke)

    async def has_active_keys(self) -> bool:
        def exists(conn: sqlite3.Connection) -> bool:
            sql = "SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1"
            return conn.execute(sql).fetchone() is not None

        return await self._run(exists)

    async def shared_secret(self, name: str, candidate: str) -> str:
        def secret(conn: sqlite3.Connection) -> str:
            conn.execute(
                "INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                (name, candidate),
            )
            row = conn.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
            return str(row["value"])

        return await self._run(secret)

    async def add_usage(self, counter: str, amount: int, expires_at: datetime) -> int:
        expires = _to_sql(expires_at)

        def add(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "INSERT INTO usage (name, total, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET total = total + excluded.total "
                "RETURNING total",
                (counter, amount, expires),
            ).fetchall()[0]
            if row["total"] == amount:  # a new window: forget the ones that are over
                now = _to_sql(datetime.now(UTC))
                conn.execute("DELETE FROM usage WHERE expires_at < ?", (now,))
            return int(row["total"])

        return await self._run(add)

    async def save_chunk(self, job_id: str, index: int, data: dict[str, Any]) -> None:
        text = json.dumps(data)

        def save(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO chunks (job_id, idx, data) VALUES (?, ?, ?) "
                "ON CONFLICT (job_id, idx) DO UPDATE SET data = excluded.data",
                (job_id, index, text),
            )

        await self._run(save)

    async def load_chunks(self, job_id: str) -> list[dict[str, Any]]:
        def load(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT data FROM chunks WHERE job_id = ? ORDER BY idx", (job_id,)
            ).fetchall()
            return [json.loads(row["data"]) for row in rows]

        return await self._run(load)

    async def chunk_indices(self, job_id: str) -> list[int]:
        def indices(conn: sqlite3.Connection) -> list[int]:
            rows = conn.execute(
                "SELECT idx FROM chunks WHERE job_id = ? ORDER BY idx", (job_id,)
            ).fetchall()
            return [int(row["idx"]) for row in rows]

        return await self._run(indices)

    async def delete_chunks(self, job_id: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM chunks WHERE job_id = ?", (job_id,))

        await self._run(delete)

    async def ping(self) -> None:
        def ping(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()

        await self._run(ping)

    async def try_lease(self, name: str, holder: str, ttl: float) -> bool:
        now = datetime.now(UTC)
        expires = _to_sql(now + timedelta(seconds=ttl))

        def lease(conn: sqlite3.Connection) -> bool:
            # One statement: inserted, or taken over only when free, expired or ours already.
            rows = conn.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "expires_at = excluded.expires_at "
                "WHERE leases.holder = excluded.holder OR leases.expires_at < ? "
                "RETURNING holder",
                (name, holder, expires, _to_sql(now)),
            ).fetchall()
            return bool(rows)

        return await self._run(lease)

    # --- operations (issue 11) ---------------------------------------------------------------

    async def _select(
        self,
        *,
        statuses: Collection[JobStatus] | None,
        before: Mapping[str, datetime],
        is_null: Collection[str] = (),
        not_null: Collection[str] = (),
        limit: int,
        order_by: str = "created_at",
    ) -> list[Job]:
        _check_columns([*before, *is_null, *not_null, order_by])
        if limit <= 0:
            return []
        where: list[str] = ["1"]
        params: list[object] = []
        if statuses is not None:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params += [_to_sql(status) for status in statuses]
        for name, moment in before.items():
            where.append(f"{name} IS NOT NULL AND {name} < ?")
            params.append(_to_sql(moment))
        where += [f"{name} IS NULL" for name in is_null]
        where += [f"{name} IS NOT NULL" for name in not_null]
        sql = (
            f"SELECT * FROM jobs WHERE {' AND '.join(where)} "
            f"ORDER BY {order_by} ASC, id ASC LIMIT ?"
        )
        params.append(limit)

        def select(conn: sqlite3.Connection) -> list[Job]:
            return [_to_job(row) for row in conn.execute(sql, params).fetchall()]

        return await self._run(select)


def _column_sql(field: Field[Any]) -> str:
    """`name TYPE [DEFAULT value]`: the default fills rows written before the column existed."""
    sql = f"{field.name} {_SQL_TYPES[_HINTS[field.name]]}"
    if field.name == "id":
        return sql + " NOT NULL PRIMARY KEY"
    if field.default is MISSING and field.default_factory is not MISSING:
        default = _to_sql(field.default_factory())
    else:
        default = None if field.default is MISSING else _to_sql(field.default)
    if isinstance(default, str):
        return sql + " DEFAULT '" + default.replace("'", "''") + "'"
    if default is not None:
        return sql + f" DEFAULT {default!r}"
    return sql


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL survives a crash of the process
    columns = [_column_sql(field) for field in fields(Job)]
    conn.execute(f"CREATE TABLE IF NOT EXISTS jobs ({', '.join(columns)})")
    existing = {row["name"] for row in conn.execute("PRAGMA table_info(jobs)")}
    for field, column in zip(fields(Job), columns, strict=True):
        if field.name not in existing:  # a field added to `Job` since the file was created
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {column}")
    conn.execute("CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at)")
    conn.execute("CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at)")
    # dialects (issue 10): queue position, recent speed, Idempotency-Key (one job per key), DEDUP
    conn.execute("CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, priority, created_at)")
    conn.execute("CREATE INDEX IF NOT EXISTS jobs_status_completed ON jobs (status, completed_at)")
    conn.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency_key ON jobs (idempotency_key) "
        "WHERE idempotency_key IS NOT NULL"
    )
    conn.execute(
        "CREATE INDEX IF NOT EXISTS jobs_content ON jobs (content_sha256) "
        "WHERE content_sha256 IS NOT NULL"
    )
    conn.execute(
        "CREATE INDEX IF NOT EXISTS jobs_webhook_next ON jobs (webhook_next_at) "
        "WHERE callback_url IS NOT NULL"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS jobs_completed ON jobs (status, completed_at)")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS chunks (job_id TEXT NOT NULL, idx INTEGER NOT NULL, "
        "data TEXT NOT NULL, PRIMARY KEY (job_id, idx)) WITHOUT ROWID"
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS leases (name TEXT NOT NULL PRIMARY KEY, "
        "holder TEXT NOT NULL, expires_at TEXT NOT NULL) WITHOUT ROWID"
    )
    # issue 12 (security): owners, keys, the shared signing secret, usage counters
    conn.execute("CREATE INDEX IF NOT EXISTS jobs_owner_status ON jobs (owner, status)")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS api_keys (id TEXT NOT NULL PRIMARY KEY, name TEXT NOT NULL, "
        "key_hash TEXT NOT NULL, admin INTEGER NOT NULL, max_priority INTEGER NOT NULL, "
        "created_at TEXT NOT NULL, revoked_at TEXT)"
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS secrets (name TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS usage (name TEXT NOT NULL PRIMARY KEY, "
        "total INTEGER NOT NULL, expires_at TEXT NOT NULL)"
    )
