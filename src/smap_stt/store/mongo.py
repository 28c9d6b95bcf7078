"""The production job store: MongoDB through PyMongo's async client.

Each guarded change is one `find_one_and_update` whose filter carries the guard, so the check
and the write are a single atomic step on the server. The client reconnects by itself; a
server that comes back is used again without restarting anything. Every driver error leaves
this module as `BackendUnavailable("mongodb", ...)`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

from smap_stt.errors import BackendUnavailable, DuplicateIdempotencyKey, JobConflict
from smap_stt.jobs import Job, JobStatus
from smap_stt.keys import ApiKey
from smap_stt.store.base import JobStore

__all__ = ["MongoJobStore"]

Document = dict[str, Any]

# Short enough that a down database is reported in seconds, not after PyMongo's 30 s default.
# Options given in the URL win over these.
_CLIENT_DEFAULTS: dict[str, int] = {
    "serverSelectionTimeoutMS": 3000,
    "connectTimeoutMS": 3000,
    "socketTimeoutMS": 20000,
}
_FIELDS = frozenset(Job.__dataclass_fields__)


@contextmanager
def _unavailable_on_driver_error() -> Iterator[None]:
    try:
        yield
    except PyMongoError as exc:
        raise BackendUnavailable("mongodb", _brief(exc)) from exc


def _brief(exc: PyMongoError) -> str:
    """The first useful line: server selection errors append a whole topology description."""
    text = str(exc).split(", Timeout:")[0].split(" (configured timeouts:")[0]
    return f"{type(exc).__name__}: {text[:300]}"


def _client_options(url: str) -> dict[str, Any]:
    given = {key.lower() for key, _ in parse_qsl(urlsplit(url).query)}
    options: dict[str, Any] = {
        key: value for key, value in _CLIENT_DEFAULTS.items() if key.lower() not in given
    }
    options["tz_aware"] = True
    return options


def _bson(value: object) -> object:
    return value.value if isinstance(value, Enum) else value


def _to_document(job: Job) -> Document:
    document = {key: _bson(value) for key, value in job.to_dict().items()}
    document["_id"] = document.pop("id")
    return document


def _to_job(document: Document) -> Job:
    document["id"] = document.pop("_id")
    return Job.from_dict(document)


def _to_key(document: Document) -> ApiKey:
    document["id"] = document.pop("_id")
    return ApiKey.from_dict(document)


class MongoJobStore(JobStore):
    """Jobs in `<database>.jobs` (`_id` = job id), checkpoints in `<database>.chunks`."""

    name = "mongodb"

    def __init__(self, url: str, database: str) -> None:
        self.url = url
        self.database = database
        self._client: AsyncMongoClient[Document] | None = None

    @property
    def _jobs(self) -> AsyncCollection[Document]:
        return self._connected()[self.database]["jobs"]

    @property
    def _chunks(self) -> AsyncCollection[Document]:
        return self._connected()[self.database]["chunks"]

    def _collection(self, name: str) -> AsyncCollection[Document]:
        return self._connected()[self.database][name]

    def _connected(self) -> AsyncMongoClient[Document]:
        if self._client is None:
            raise RuntimeError("MongoJobStore is not open")
        return self._client

    async def open(self) -> None:
        if self._client is None:
            with _unavailable_on_driver_error():  # a malformed URL is reported here too
                self._client = AsyncMongoClient(self.url, **_client_options(self.url))
        with _unavailable_on_driver_error():
            await self._jobs.create_index([("status", ASCENDING)])
            await self._jobs.create_index([("created_at", DESCENDING)])
            await self._jobs.create_index([("status", ASCENDING), ("created_at", DESCENDING)])
            await self._chunks.create_index([("job_id", ASCENDING), ("idx", ASCENDING)])
            # dialects (issue 10): queue position, recent speed, one job per Idempotency-Key,
            # DEDUP by content (partial: jobs without a key are not indexed)
            await self._jobs.create_index(
                [("status", ASCENDING), ("priority", DESCENDING), ("created_at", ASCENDING)]
            )
            await self._jobs.create_index([("status", ASCENDING), ("completed_at", DESCENDING)])
            await self._jobs.create_index(
                [("idempotency_key", ASCENDING)],
                unique=True,
                partialFilterExpression={"idempotency_key": {"$type": "string"}},
            )
            await self._jobs.create_index([("content_sha256", ASCENDING)])
            await self._jobs.create_index(
                [("callback_url", ASCENDING), ("webhook_next_at", ASCENDING)]
            )
            # issue 12 (security)
            await self._jobs.create_index([("owner", ASCENDING), ("status", ASCENDING)])
            await self._collection("api_keys").create_index([("revoked_at", ASCENDING)])
            await self._collection("usage").create_index([("expires_at", ASCENDING)])

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def _insert(self, job: Job) -> None:
        with _unavailable_on_driver_error():
            try:
                await self._jobs.insert_one(_to_document(job))
            except DuplicateKeyError as exc:
                if "idempotency_key" in str(exc.details or exc):
                    raise DuplicateIdempotencyKey(job.idempotency_key or "") from exc
                raise JobConflict(f"job {job.id} already exists") from exc

    async def _get(self, job_id: str) -> Job | None:
        with _unavailable_on_driver_error():
            document = await self._jobs.find_one({"_id": job_id})
        return None if document is None else _to_job(document)

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
        if limit <= 0:  # MongoDB reads limit 0 as "no limit"
            return []
        query: Document = {}
        if statuses is not None:
            query["status"] = {"$in": [_bson(status) for status in statuses]}
        if published is not None:
            query["published"] = published
        if updated_before is not None:
            query["updated_at"] = {"$lt": updated_before}
        if owner is not None:
            query["owner"] = owner
        order = DESCENDING if newest_first else ASCENDING
        cursor = self._jobs.find(query).sort([("created_at", order), ("_id", order)])
        cursor = cursor.skip(max(offset, 0)).limit(limit)
        with _unavailable_on_driver_error():
            documents = await cursor.to_list()
        return [_to_job(document) for document in documents]

    async def _update(
        self,
        job_id: str,
        *,
        statuses: Collection[JobStatus],
        attempts: int | None,
        changes: dict[str, Any],
    ) -> Job | None:
        bad = (changes.keys() - _FIELDS) | ({"id"} & changes.keys())
        if bad:
            raise ValueError(f"cannot set job fields {sorted(bad)}")
        guard: Document = {"_id": job_id, "status": {"$in": [_bson(s) for s in statuses]}}
        if attempts is not None:
            guard["attempts"] = attempts
        update = {"$set": {key: _bson(value) for key, value in changes.items()}}
        with _unavailable_on_driver_error():
            document = await self._jobs.find_one_and_update(
                guard, update, return_document=ReturnDocument.AFTER
            )
        return None if document is None else _to_job(document)

    async def _delete(self, job_id: str) -> bool:
        with _unavailable_on_driver_error():
            result = await self._jobs.delete_one({"_id": job_id})
        return result.deleted_count > 0

    # --- dialects (issue 10) -----------------------------------------------------------------

    async def _count(
        self,
        *,
        statuses: Collection[JobStatus] | None,
        ahead_of: Job | None = None,
        owner: str | None = None,
    ) -> tuple[int, float]:
        query: Document = {}
        if statuses is not None:
            query["status"] = {"$in": [_bson(status) for status in statuses]}
        if ahead_of is not None:
            query["$or"] = [
                {"priority": {"$gt": ahead_of.priority}},
                {"priority": ahead_of.priority, "created_at": {"$lt": ahead_of.created_at}},
            ]
        if owner is not None:
            query["owner"] = owner
        left = {
            "$multiply": [
                {"$ifNull": ["$duration_seconds", 0]},
                {"$divide": [{"$subtract": [100, "$progress"]}, 100]},
            ]
        }
        pipeline: list[Document] = [
            {"$match": query},
            {"$group": {"_id": None, "count": {"$sum": 1}, "seconds": {"$sum": left}}},
        ]
        with _unavailable_on_driver_error():
            cursor = await self._jobs.aggregate(pipeline)
            rows = await cursor.to_list()
        if not rows:
            return 0, 0.0
        return int(rows[0]["count"]), float(rows[0]["seconds"] or 0.0)

    async def _find_equal(self, name: str, value: str, *, limit: int) -> list[Job]:
        if name not in ("idempotency_key", "content_sha256"):
            raise ValueError(f"cannot look jobs up by {name!r}")
        cursor = self._jobs.find({name: value}).sort([("created_at", DESCENDING)]).limit(limit)
        with _unavailable_on_driver_error():
            documents = await cursor.to_list()
        return [_to_job(document) for document in documents]

    async def _speed_samples(self, limit: int) -> list[tuple[float, float]]:
        query = {
            "status": JobStatus.COMPLETED.value,
            "deduplicated_from": None,
            "processing_time_seconds": {"$gt": 0},
            "duration_seconds": {"$gt": 0},
        }
        projection = {"processing_time_seconds": 1, "duration_seconds": 1}
        cursor = self._jobs.find(query, projection).sort([("completed_at", DESCENDING)])
        with _unavailable_on_driver_error():
            documents = await cursor.limit(limit).to_list()
        return [
            (float(doc["processing_time_seconds"]), float(doc["duration_seconds"]))
            for doc in documents
        ]

    # --- issue 12 (security) ------------------------------------------------------------------

    async def _delete_if(
        self, job_id: str, *, statuses: Collection[JobStatus], owner: str | None
    ) -> Job | None:
        query: Document = {"_id": job_id, "status": {"$in": [_bson(s) for s in statuses]}}
        if owner is not None:
            query["owner"] = owner
        with _unavailable_on_driver_error():
            document = await self._jobs.find_one_and_delete(query)
        return None if document is None else _to_job(document)

    async def insert_key(self, key: ApiKey) -> None:
        document = key.to_dict()
        document["_id"] = document.pop("id")
        with _unavailable_on_driver_error():
            await self._collection("api_keys").insert_one(document)

    async def get_key(self, key_id: str) -> ApiKey | None:
        with _unavailable_on_driver_error():
            document = await self._collection("api_keys").find_one({"_id": key_id})
        return None if document is None else _to_key(document)

    async def list_keys(self) -> list[ApiKey]:
        cursor = self._collection("api_keys").find({}).sort([("created_at", ASCENDING)])
        with _unavailable_on_driver_error():
            documents = await cursor.to_list()
        return [_to_key(document) for document in documents]

    async def revoke_key(self, key_id: str, at: datetime) -> ApiKey | None:
        keys = self._collection("api_keys")
        with _unavailable_on_driver_error():
            await keys.update_one({"_id": key_id, "revoked_at": None}, {"$set": {"revoked_at": at}})
            document = await keys.find_one({"_id": key_id})
        return None if document is None else _to_key(document)

    async def has_active_keys(self) -> bool:
        with _unavailable_on_driver_error():
            document = await self._collection("api_keys").find_one({"revoked_at": None})
        return document is not None

    async def shared_secret(self, name: str, candidate: str) -> str:
        secrets = self._collection("secrets")
        with _unavailable_on_driver_error():
            with suppress(DuplicateKeyError):  # another process stored one first: use theirs
                await secrets.insert_one({"_id": name, "value": candidate})
            document = await secrets.find_one({"_id": name})
        assert document is not None
        return str(document["value"])

    async def add_usage(self, counter: str, amount: int, expires_at: datetime) -> int:
        usage = self._collection("usage")
        document: Document | None = None
        with _unavailable_on_driver_error():
            # Two first increments may race to insert the counter: the loser gets a duplicate
            # key error (or, on some servers, no document) and simply increments again.
            for _ in range(3):
                with suppress(DuplicateKeyError):
                    document = await usage.find_one_and_update(
                        {"_id": counter},
                        {"$inc": {"total": amount}, "$setOnInsert": {"expires_at": expires_at}},
                        upsert=True,
                        return_document=ReturnDocument.AFTER,
                    )
                if document is not None:
                    break
            if document is None:
                raise BackendUnavailable("mongodb", f"counter {counter} could not be updated")
            total = int(document["total"])
            if total == amount:  # a new window: forget the ones that are over
                await usage.delete_many({"expires_at": {"$lt": datetime.now(UTC)}})
        return total

    async def save_chunk(self, job_id: str, index: int, data: dict[str, Any]) -> None:
        # The _id names the chunk, so an upsert can never create a duplicate.
        document = {"_id": f"{job_id}:{index}", "job_id": job_id, "idx": index, "data": data}
        with _unavailable_on_driver_error():
            await self._chunks.replace_one({"_id": document["_id"]}, document, upsert=True)

    async def load_chunks(self, job_id: str) -> list[dict[str, Any]]:
        cursor = self._chunks.find({"job_id": job_id}).sort("idx", ASCENDING)
        with _unavailable_on_driver_error():
            documents = await cursor.to_list()
        return [document["data"] for document in documents]

    async def chunk_indices(self, job_id: str) -> list[int]:
        cursor = self._chunks.find({"job_id": job_id}, {"idx": 1}).sort("idx", ASCENDING)
        with _unavailable_on_driver_error():
            documents = await cursor.to_list()
        return [int(document["idx"]) for document in documents]

    async def delete_chunks(self, job_id: str) -> None:
        with _unavailable_on_driver_error():
            await self._chunks.delete_many({"job_id": job_id})

    async def ping(self) -> None:
        with _unavailable_on_driver_error():
            await self._connected()[self.database].command("ping")

    async def try_lease(self, name: str, holder: str, ttl: float) -> bool:
        now = datetime.now(UTC)
        leases = self._connected()[self.database]["leases"]
        free_or_ours: Document = {
            "_id": name,
            "$or": [{"holder": holder}, {"expires_at": {"$lt": now}}],
        }
        update = {"$set": {"holder": holder, "expires_at": now + timedelta(seconds=ttl)}}
        with _unavailable_on_driver_error():
            try:
                # Upsert: no lease yet creates it; a live lease of another holder does not
                # match the filter, so the insert collides with its _id and we lost.
                await leases.update_one(free_or_ours, update, upsert=True)
            except DuplicateKeyError:
                return False
        return True

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
        names = {*before, *is_null, *not_null, order_by}
        if names - _FIELDS:
            raise ValueError(f"unknown job fields {sorted(names - _FIELDS)}")
        if limit <= 0:
            return []
        query: Document = {}
        if statuses is not None:
            query["status"] = {"$in": [_bson(status) for status in statuses]}
        for name, moment in before.items():
            query[name] = {"$ne": None, "$lt": moment}
        for name in is_null:
            query[name] = None  # matches a missing field too (documents older than it)
        for name in not_null:
            query[name] = {"$ne": None}
        cursor = (
            self._jobs.find(query).sort([(order_by, ASCENDING), ("_id", ASCENDING)]).limit(limit)
        )
        with _unavailable_on_driver_error():
            documents = await cursor.to_list()
        return [_to_job(document) for document in documents]
