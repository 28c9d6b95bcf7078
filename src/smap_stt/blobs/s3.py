"""The production blob store: any S3 API (MinIO, AWS S3, SeaweedFS, ...) through boto3.

boto3 is synchronous, so every call runs in a thread. Files are streamed in parts by boto3's
transfer manager (never read whole into memory). Timeouts and retries are short so that a
down server is reported within seconds, as `BackendUnavailable("s3", ...)`, instead of after
boto3's minutes of retrying; botocore's own errors never leave this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from smap_stt.blobs.base import BlobStore
from smap_stt.errors import BackendUnavailable, BlobNotFound, SttError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["S3BlobStore"]

_MB = 1024 * 1024
# Uploads read parts of 8 MB from the file, 4 at a time; downloads queue at most 32 blocks of
# 256 KB for the writer. Memory stays bounded (~10 MB) whatever the file size.
_TRANSFER = TransferConfig(
    multipart_threshold=8 * _MB,
    multipart_chunksize=8 * _MB,
    max_concurrency=4,
    max_io_queue=32,
)
_RANGE_BLOCK = 256 * 1024
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_REJECTED = frozenset(
    {"403", "Forbidden", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
)


def _client_config(region: str) -> Config:
    return Config(
        region_name=region,
        signature_version="s3v4",
        s3={"addressing_style": "path"},  # MinIO and SeaweedFS serve buckets as paths
        connect_timeout=3,
        read_timeout=30,
        retries={"max_attempts": 2, "mode": "standard"},
        # Checksums only where S3 demands them: newer boto3 adds them to every request by
        # default, which several S3-compatible servers reject.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


def _endpoint_url(endpoint: str, secure: bool) -> str:
    """`host:port` (the MINIO_ENDPOINT style) or a full URL."""
    if "://" in endpoint:
        return endpoint
    return f"{'https' if secure else 'http'}://{endpoint}"


def _translated(exc: Exception, key: str | None) -> SttError:
    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
        exc = exc.__context__  # boto3 wraps the real answer in a message string
    if isinstance(exc, RetriesExceededError):
        return BackendUnavailable("s3", str(getattr(exc, "last_exception", exc)))
    if not isinstance(exc, ClientError):
        return BackendUnavailable("s3", str(exc))
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    if key is not None and code in _NOT_FOUND:
        return BlobNotFound(key)
    if code in _REJECTED:
        return BackendUnavailable(
            "s3", f"access denied ({code}): check MINIO_ACCESS_KEY / MINIO_SECRET_KEY"
        )
    return BackendUnavailable("s3", f"{code}: {error.get('Message', exc)}")


@contextmanager
def _s3_errors(key: str | None = None) -> Iterator[None]:
    """Translate boto errors; `key`: a missing object means `BlobNotFound(key)`."""
    try:
        yield
    except (BotoCoreError, ClientError, S3UploadFailedError, RetriesExceededError) as exc:
        raise _translated(exc, key) from exc


class S3BlobStore(BlobStore):
    """Objects in one bucket, created on `open()` if missing."""

    name = "s3"

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        region: str = "us-east-1",
        url_expiry: int = 3600,
        public_endpoint: str = "",
    ) -> None:
        self.endpoint_url = _endpoint_url(endpoint, secure)
        # Presigned URLs name the host clients will send (it is part of the signature), which
        # need not be the one this service reaches the server by.
        self.public_endpoint_url = (
            _endpoint_url(public_endpoint, secure) if public_endpoint else self.endpoint_url
        )
        self.bucket = bucket
        self.region = region
        self.url_expiry = url_expiry
        self._access_key = access_key
        self._secret_key = secret_key
        self._client: S3Client | None = None
        self._signer: S3Client | None = None

    @property
    def _s3(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("S3BlobStore is not open")
        return self._client

    def _make_client(self, endpoint_url: str | None = None) -> S3Client:
        # A session per client: boto3's default session is not safe to share between threads.
        session = boto3.session.Session()
        return session.client(
            "s3",
            endpoint_url=endpoint_url or self.endpoint_url,
            aws_access_key_id=self._access_key,
            aws_secret_access_key=self._secret_key,
            config=_client_config(self.region),
        )

    async def open(self) -> None:
        if self._client is None:
            with _s3_errors():
                self._client = await asyncio.to_thread(self._make_client)
                self._signer = self._client
                if self.public_endpoint_url != self.endpoint_url:  # signs only, never connects
                    self._signer = await asyncio.to_thread(
                        self._make_client, self.public_endpoint_url
                    )
        with _s3_errors():
            await asyncio.to_thread(self._ensure_bucket)

    def _ensure_bucket(self) -> None:
        try:
            self._s3.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in _NOT_FOUND:
                raise
        options: dict[str, Any] = {}
        if self.region != "us-east-1":  # the one region S3 refuses as a location constraint
            options["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._s3.create_bucket(Bucket=self.bucket, **options)
        except ClientError as exc:  # another process created it meanwhile
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            signer, self._signer = self._signer, None
            await asyncio.to_thread(client.close)
            if signer is not None and signer is not client:
                await asyncio.to_thread(signer.close)

    async def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        with _s3_errors():
            await asyncio.to_thread(
                self._s3.upload_file, str(path), self.bucket, key, Config=_TRANSFER
            )
        if move:
            await asyncio.to_thread(Path(path).unlink, missing_ok=True)

    async def put_bytes(self, key: str, data: bytes, *, content_type: str = "") -> None:
        with _s3_errors():
            await asyncio.to_thread(
                self._s3.put_object,
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type or "application/octet-stream",
            )

    async def get_file(self, key: str, path: Path) -> None:
        # boto3 downloads into a temporary name next to `path` and renames it when complete.
        # Parent directories are created, as the local store does.
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        with _s3_errors(key):
            await asyncio.to_thread(
                self._s3.download_file, self.bucket, key, str(path), Config=_TRANSFER
            )

    async def get_bytes(self, key: str) -> bytes:
        with _s3_errors(key):
            return await asyncio.to_thread(self._get_bytes, key)

    def _get_bytes(self, key: str) -> bytes:
        return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    async def delete(self, key: str) -> None:
        with _s3_errors():
            await asyncio.to_thread(self._s3.delete_object, Bucket=self.bucket, Key=key)

    async def exists(self, key: str) -> bool:
        try:
            with _s3_errors(key):
                await asyncio.to_thread(self._s3.head_object, Bucket=self.bucket, Key=key)
        except BlobNotFound:
            return False
        return True

    async def list_keys(self, prefix: str) -> list[str]:
        with _s3_errors():
            return await asyncio.to_thread(self._list_keys, prefix)

    def _list_keys(self, prefix: str) -> list[str]:
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    async def presigned_url(self, key: str) -> str | None:
        # Signing is local computation (no request), quick enough for the event loop.
        signer = self._signer or self._s3
        with _s3_errors():
            return signer.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=self.url_expiry,
            )

    async def size(self, key: str) -> int:
        with _s3_errors(key):
            head = await asyncio.to_thread(self._s3.head_object, Bucket=self.bucket, Key=key)
        return int(head["ContentLength"])

    async def read_range(self, key: str, offset: int, length: int) -> AsyncIterator[bytes]:
        if length <= 0:
            return
        with _s3_errors(key):
            answer = await asyncio.to_thread(
                self._s3.get_object,
                Bucket=self.bucket,
                Key=key,
                Range=f"bytes={offset}-{offset + length - 1}",
            )
        body = answer["Body"]
        try:
            while True:
                with _s3_errors(key):
                    block = await asyncio.to_thread(body.read, _RANGE_BLOCK)
                if not block:
                    return
                yield block
        finally:
            body.close()  # gives the connection back even when the client went away mid-stream

    async def ping(self) -> None:
        with _s3_errors():
            await asyncio.to_thread(self._s3.head_bucket, Bucket=self.bucket)
