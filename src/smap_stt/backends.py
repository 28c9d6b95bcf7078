"""The one place that picks implementations from Settings; nothing else knows which is live.

Rule: `MONGODB_URL` set → MongoDB, else SQLite at `SQLITE_PATH`; `MINIO_ENDPOINT` set → S3,
else files under `BLOB_DIR`; the queue is RabbitMQ unless the caller runs embedded (`serve`).
"""

from __future__ import annotations

from dataclasses import dataclass

from smap_stt.blobs.base import BlobStore
from smap_stt.config import Settings
from smap_stt.queue.base import JobQueue
from smap_stt.store.base import JobStore


@dataclass
class Backends:
    store: JobStore
    blobs: BlobStore
    queue: JobQueue

    async def open(self) -> None:
        await self.store.open()
        await self.blobs.open()
        await self.queue.open()

    async def close(self) -> None:
        await self.queue.close()
        await self.blobs.close()
        await self.store.close()


def make_store(settings: Settings) -> JobStore:
    if settings.mongodb_url:
        from smap_stt.store.mongo import MongoJobStore

        return MongoJobStore(settings.mongodb_url, settings.mongodb_database)
    from smap_stt.store.sqlite import SqliteJobStore

    return SqliteJobStore(settings.sqlite_path)


def make_blobs(settings: Settings) -> BlobStore:
    if settings.minio_endpoint:
        from smap_stt.blobs.s3 import S3BlobStore

        return S3BlobStore(
            settings.minio_endpoint,
            settings.minio_access_key,
            settings.minio_secret_key,
            settings.minio_bucket,
            secure=settings.minio_secure,
            region=settings.minio_region,
            url_expiry=settings.presigned_url_expiry_seconds,
            public_endpoint=settings.minio_public_endpoint,
        )
    from smap_stt.blobs.local import LocalBlobStore

    return LocalBlobStore(settings.blob_dir)


def make_queue(settings: Settings, *, embedded: bool) -> JobQueue:
    if embedded:
        from smap_stt.queue.embedded import EmbeddedQueue

        return EmbeddedQueue()
    from smap_stt.queue.rabbitmq import RabbitQueue

    return RabbitQueue(
        settings.amqp_url,
        exchange=settings.rabbitmq_exchange_name,
        routing_key=settings.rabbitmq_routing_key,
        queue=settings.rabbitmq_queue_name,
        message_ttl_seconds=settings.message_ttl_seconds,
        retry_delays=settings.retry_delays,
        message_ttl_source=(
            f"QUEUE_MESSAGE_TTL={settings.queue_message_ttl}"
            if settings.queue_message_ttl
            else f"24 × JOB_TIMEOUT={settings.job_timeout}"
        ),
    )


def make_backends(settings: Settings, *, embedded: bool) -> Backends:
    return Backends(
        make_store(settings), make_blobs(settings), make_queue(settings, embedded=embedded)
    )
