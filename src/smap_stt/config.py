"""Every option of smap-stt, read from the environment or `.env`.

Names follow the original system where it had them. Which backend is used follows from what is
configured: `MONGODB_URL` set → MongoDB, else SQLite; `MINIO_ENDPOINT` set → S3, else a local
directory; the `api` and `worker` commands use RabbitMQ, `serve` the in-process queue.
"""

from __future__ import annotations

import json
import os
import types
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import quote

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_concurrency() -> int:
    return max(1, os.cpu_count() or 1)


def _container(annotation: Any) -> type | None:
    """`list`, `set`, `tuple` or `dict` when a field holds one (also inside `X | None`)."""
    origin = get_origin(annotation) or annotation
    if origin in (Union, types.UnionType):
        for member in get_args(annotation):
            if (found := _container(member)) is not None:
                return found
        return None
    return origin if origin in (list, set, tuple, dict) else None


def split_setting(text: str, container: type) -> object:
    """The value of a list- or dict-valued setting as written in the environment or `.env`:
    `5,30,120` and `a=1,b=2` (the form the docs show), or JSON (`[5, 30]`, `{"a": 1}`).
    pydantic-settings alone would accept JSON only, so `cp .env.example .env` would break."""
    stripped = text.strip()
    if stripped[:1] in ("[", "{"):
        return json.loads(stripped)
    parts = [part.strip() for part in stripped.split(",") if part.strip()]
    if container is dict:
        pairs = [part.partition("=") for part in parts]
        return {key.strip(): value.strip() for key, _, value in pairs}
    return parts


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        env_ignore_empty=True,
        # Complex values are parsed by `_split_complex` (comma form or JSON), not as JSON only.
        enable_decoding=False,
    )

    # HTTP API
    api_host: str = Field("127.0.0.1", description="Address the API listens on.")
    api_port: int = Field(8000, description="Port the API listens on.")
    api_workers: int = Field(1, ge=1, description="uvicorn worker processes of `smap-stt api`.")
    public_base_url: str = Field(
        "",
        description="Base URL clients reach the API at, used in download_url for local storage "
        "(empty: the request's own base URL if TRUSTED_HOSTS vouches for its Host header, "
        "else a relative path).",
    )

    # RabbitMQ
    rabbitmq_url: str = Field("", description="Full AMQP URL; overrides the RABBITMQ_* parts.")
    rabbitmq_host: str = Field("127.0.0.1", description="RabbitMQ host.")
    rabbitmq_port: int = Field(5672, description="RabbitMQ port.")
    rabbitmq_user: str = Field("guest", description="RabbitMQ user.")
    rabbitmq_password: str = Field("guest", description="RabbitMQ password.")
    rabbitmq_vhost: str = Field("/", description="RabbitMQ virtual host.")
    rabbitmq_exchange_name: str = Field("stt_exchange", description="Durable direct exchange.")
    rabbitmq_routing_key: str = Field("stt.job", description="Routing key of job messages.")
    rabbitmq_queue_name: str = Field("stt_jobs_queue", description="Durable priority work queue.")

    # Job store
    mongodb_url: str = Field("", description="MongoDB URL; set → MongoDB job store, else SQLite.")
    mongodb_database: str = Field("smap_stt", description="MongoDB database name.")
    sqlite_path: Path = Field(Path("data/jobs.sqlite3"), description="SQLite job store file.")

    # Blob store
    minio_endpoint: str = Field(
        "", description="S3 endpoint host:port (or URL); set → S3 blob store, else local files."
    )
    minio_public_endpoint: str = Field(
        "",
        description="Host:port (or URL) presigned download URLs point at, for clients that "
        "cannot reach MINIO_ENDPOINT (a public name, a proxy that keeps the Host header); the "
        "service itself keeps using MINIO_ENDPOINT (empty: MINIO_ENDPOINT).",
    )
    minio_access_key: str = Field("", description="S3 access key.")
    minio_secret_key: str = Field("", description="S3 secret key.")
    minio_bucket: str = Field("smap-stt", description="S3 bucket (created if missing).")
    minio_secure: bool = Field(False, description="Use https for the S3 endpoint.")
    minio_region: str = Field("us-east-1", description="S3 region.")
    presigned_url_expiry_seconds: int = Field(
        3600, ge=1, description="Lifetime of presigned download URLs."
    )
    blob_dir: Path = Field(Path("data/blobs"), description="Local blob store directory.")

    # Jobs and uploads
    max_concurrent_jobs: int = Field(
        default_factory=_default_concurrency,
        ge=1,
        description="Jobs one worker process runs at once (and its RabbitMQ prefetch). "
        "Default: the number of cores.",
    )
    job_timeout: int = Field(3600, ge=1, description="Seconds a job may run before it FAILS.")
    max_upload_size_mb: int = Field(500, ge=1, description="Largest accepted upload, in MB.")
    upload_idle_timeout: float = Field(
        60,
        gt=0,
        description="Seconds an upload may send nothing before it is refused (408) "
        "and its spool file removed.",
    )
    temp_dir: Path = Field(Path("data/tmp"), description="Spool directory for uploads/audio.")
    default_language: str = Field("vi", description="Language when the upload names none.")
    min_audio_seconds: float = Field(
        0.1, ge=0, description="Uploads that decode to less audio than this are refused (422)."
    )
    max_attempts: int = Field(
        4,
        ge=1,
        description="Attempts (including ones whose worker died) before a job FAILS for good.",
    )
    retry_delays: list[int] = Field(
        default_factory=lambda: [5, 30, 120],
        description="Seconds to wait before attempt 2, 3, ... (comma separated).",
    )
    queue_message_ttl: int = Field(
        0,
        ge=0,
        description="Seconds a message may wait in the queue before its job FAILS as "
        "expired (0: 24 × JOB_TIMEOUT).",
    )
    stale_after: float = Field(
        120,
        gt=0,
        description="A running job whose worker sent no heartbeat for this long is "
        "handed to another worker.",
    )
    early_ack_after: float = Field(
        600,
        gt=0,
        description="Seconds after which a running job acks its message, so "
        "RabbitMQ's consumer timeout cannot take it away; heartbeats guard it from then on.",
    )
    republish_after: float = Field(
        300,
        gt=0,
        description="A PENDING job with no message in the queue for this long is published again.",
    )
    outbox_interval: float = Field(
        5,
        gt=0,
        description="Seconds between passes of the recovery sweeps (outbox, stale jobs, lost "
        "messages).",
    )
    shutdown_grace_seconds: float = Field(
        60, ge=0, description="On SIGTERM, how long running jobs may take before being handed back."
    )

    # Dialects (issue 10): synchronous endpoints, submit once
    sync_wait_seconds: float = Field(
        600,
        gt=0,
        description="How long /v1/audio/* and /asr wait for their job before answering "
        "with a timeout that names the job id (poll /api/v1/tasks/{id}/status then).",
    )
    dedup: bool = Field(
        False,
        description="An upload identical to a finished job (same file bytes, same options) "
        "gets a new job COMPLETED at once with that job's transcript, without transcribing.",
    )
    eta_sample_jobs: int = Field(
        20,
        ge=1,
        description="Completed jobs whose speed (processing s per audio s) estimates eta_seconds.",
    )

    # Security and limits (issue 12); docs/SECURITY.md says what each one protects
    auth: Literal["auto", "on", "off"] = Field(
        "auto",
        description="API keys: auto = required once a key exists (`smap-stt keys create`), "
        "on = always required, off = ignored.",
    )
    url_signing_secret: SecretStr = Field(
        SecretStr(""),
        description="Secret for signed audio/download links (empty: a random one kept in the "
        "job store, shared by every API process).",
    )
    metrics_token: SecretStr = Field(
        SecretStr(""),
        description="Bearer token /metrics requires (empty: /metrics is open, as Prometheus "
        "scrapes it without a key).",
    )
    signed_url_seconds: int = Field(
        3600, ge=60, le=7 * 86400, description="Lifetime of signed audio/download links."
    )
    cors_origins: str = Field(
        "",
        description="Comma separated origins allowed to call the API from a browser "
        "(empty: none but the API's own).",
    )
    trusted_hosts: str = Field(
        "",
        description="Comma separated host names the API answers to (empty: any); also lets "
        "download_url use the request's host when PUBLIC_BASE_URL is empty.",
    )
    rate_limit_per_minute: int = Field(
        600, ge=0, description="Requests per minute per API key (0: no limit)."
    )
    upload_mb_per_hour: int = Field(
        20000, ge=0, description="Upload megabytes per hour per API key (0: no limit)."
    )
    max_pending_jobs_per_key: int = Field(
        1000, ge=0, description="Jobs one API key may have waiting (0: no limit)."
    )
    max_pending_jobs: int = Field(
        10000, ge=0, description="Jobs that may wait in total before uploads get 503 (0: no limit)."
    )
    upload_deadline_seconds: float = Field(
        3600, gt=0, description="Longest an upload may take from start to end (408 after)."
    )
    max_concurrent_uploads: int = Field(
        64, ge=1, description="Uploads one API process receives at once (503 beyond)."
    )
    max_audio_duration_seconds: float = Field(
        4 * 3600,
        gt=0,
        description="Longest audio accepted (422 at upload; the worker checks the decoded "
        "length too).",
    )

    # Whisper
    whisper_model: str = Field("base", description="Default model name.")
    whisper_models_dir: Path = Field(Path("models"), description="Installed model directories.")
    whisper_beam_size: int = Field(5, ge=1, description="Beam size.")
    whisper_compute_type: str = Field("int8", description="CTranslate2 compute type.")
    whisper_cpu_threads: int = Field(
        0,
        ge=0,
        description="Cores per job: a worker decodes with MAX_CONCURRENT_JOBS × this "
        "many single-threaded decoders, shared by its jobs, so a job alone uses them all "
        "(0: cores / MAX_CONCURRENT_JOBS).",
    )
    whisper_chunk_seconds: float = Field(
        120, ge=10, description="Audio per checkpointed chunk of a long file."
    )
    fanout_min_seconds: float = Field(
        300,
        ge=0,
        description="Files at least this long are split into chunks that any worker may "
        "take, so several workers share one file (RabbitMQ only, and only while two or more "
        "workers are consuming; 0: never). Shorter files stay one unit of work.",
    )
    fanout_chunk_seconds: float = Field(
        60,
        ge=10,
        description="Audio per chunk of a file split across workers: smaller spreads a file "
        "more evenly, larger wastes less at the cut points.",
    )
    whisper_allow_download: bool = Field(
        False, description="Let faster-whisper fetch unknown model names from the hub."
    )
    allocator: Literal["auto", "tcmalloc", "glibc"] = Field(
        "auto",
        description="C allocator of the processes that decode (`serve`, `worker`, "
        "`transcribe`): tcmalloc decodes long files fastest; auto uses it when installed "
        "(Debian: libtcmalloc-minimal4) and glibc's otherwise. For the least memory (~15 % "
        "slower): glibc with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 and "
        "MALLOC_MMAP_THRESHOLD_=4194304 (docs/PERFORMANCE.md, tuning guide).",
    )
    # --- outputs (issue 9)
    whisper_model_aliases: str = Field(
        "",
        description="Model names clients may ask for, mapped to installed models, e.g. "
        "`medium=base,large=base` (clients that hard-code a model keep working; the job "
        "records the model used and the name asked for). Empty: no aliases.",
    )

    # Operations (issue 11): metrics, webhooks, retention
    worker_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of a worker process's Prometheus `/metrics` (0: off). `serve` and "
        "`api` expose theirs on the API's `/metrics`.",
    )
    worker_metrics_host: str = Field(
        "127.0.0.1", description="Address a worker's `/metrics` listens on."
    )
    webhook_secret: str = Field(
        "",
        description="HMAC-SHA256 key that signs webhook deliveries (X-SMAP-Signature); "
        "uploads with a callback_url are refused while it is empty.",
    )
    webhook_timeout_seconds: float = Field(
        10, gt=0, le=300, description="A webhook receiver must answer 2xx within this."
    )
    webhook_retry_delays: list[int] = Field(
        default_factory=lambda: [5, 30, 120, 600, 3600],
        description="Seconds before webhook attempt 2, 3, ... (comma separated); one attempt "
        "more than delays in all. A 410 answer stops retries.",
    )
    webhook_allow_private: bool = Field(
        False,
        description="Allow webhooks to loopback, private and link-local addresses (internal "
        "deployments, tests). Cloud metadata addresses stay refused.",
    )
    webhook_concurrency: int = Field(
        8, ge=1, description="Webhook deliveries one process sends at once."
    )
    retention_days: float = Field(
        0,
        ge=0,
        description="Delete final jobs (with audio, transcript, checkpoints) this many days "
        "after they finished (0: keep forever).",
    )
    retention_completed_days: float | None = Field(
        None, ge=0, description="RETENTION_DAYS for COMPLETED jobs (empty: RETENTION_DAYS)."
    )
    retention_failed_days: float | None = Field(
        None, ge=0, description="RETENTION_DAYS for FAILED jobs (empty: RETENTION_DAYS)."
    )
    retention_cancelled_days: float | None = Field(
        None, ge=0, description="RETENTION_DAYS for CANCELLED jobs (empty: RETENTION_DAYS)."
    )
    retention_interval: float = Field(600, gt=0, description="Seconds between retention sweeps.")
    keep_audio: bool = Field(
        True,
        description="Keep a job's audio once it is final (false: delete it then; the "
        "transcript stays).",
    )

    # Logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="DEBUG, INFO, WARNING or ERROR."
    )
    log_file: str = Field("", description="Also log to this file (empty: stdout only).")

    @field_validator("*", mode="before")
    @classmethod
    def _split_complex(cls, value: object, info: ValidationInfo) -> object:
        """Every list- or dict-valued setting takes the comma form from the environment and
        `.env` (see `split_setting`), whatever its name."""
        if not isinstance(value, str) or info.field_name is None:
            return value
        container = _container(cls.model_fields[info.field_name].annotation)
        return value if container is None else split_setting(value, container)

    @field_validator("retry_delays", "webhook_retry_delays", mode="before")
    @classmethod
    def _one_delay(cls, value: object) -> object:
        return [value] if isinstance(value, int) else value

    @field_validator("whisper_model_aliases")
    @classmethod
    def _check_aliases(cls, value: str) -> str:
        _parse_aliases(value)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @cached_property
    def amqp_url(self) -> str:
        if self.rabbitmq_url:
            return self.rabbitmq_url
        vhost = quote(self.rabbitmq_vhost, safe="")
        user, password = quote(self.rabbitmq_user), quote(self.rabbitmq_password)
        return f"amqp://{user}:{password}@{self.rabbitmq_host}:{self.rabbitmq_port}/{vhost}"

    @property
    def model_aliases(self) -> dict[str, str]:
        """WHISPER_MODEL_ALIASES as a mapping: requested name → model to use."""
        return _parse_aliases(self.whisper_model_aliases)

    @property
    def cors_origin_list(self) -> list[str]:
        return [
            origin.strip().rstrip("/") for origin in self.cors_origins.split(",") if origin.strip()
        ]

    @property
    def trusted_host_list(self) -> list[str]:
        return [host.strip() for host in self.trusted_hosts.split(",") if host.strip()]

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_size_mb * 1024 * 1024

    @property
    def threads_per_call(self) -> int:
        if self.whisper_cpu_threads:
            return self.whisper_cpu_threads
        return max(1, (os.cpu_count() or 1) // self.max_concurrent_jobs)

    @property
    def message_ttl_seconds(self) -> int:
        return self.queue_message_ttl or 24 * self.job_timeout

    def retention_for(self, status: str) -> float:
        """Days a final job in `status` is kept (0: forever)."""
        override = {
            "COMPLETED": self.retention_completed_days,
            "FAILED": self.retention_failed_days,
            "CANCELLED": self.retention_cancelled_days,
        }.get(status)
        return self.retention_days if override is None else override

    def retry_delay(self, attempt: int) -> int:
        """Delay before retrying after failed attempt number `attempt` (1-based)."""
        if not self.retry_delays:
            return 0
        return self.retry_delays[min(attempt, len(self.retry_delays)) - 1]


def _parse_aliases(value: str) -> dict[str, str]:
    """`medium=base, large=base` → {"medium": "base", "large": "base"}; ValueError naming the
    entry that is not `name=model`."""
    aliases: dict[str, str] = {}
    for entry in value.split(","):
        if not entry.strip():
            continue
        name, sep, target = (part.strip() for part in entry.partition("="))
        if not sep or not name or not target:
            raise ValueError(
                f"WHISPER_MODEL_ALIASES entry {entry.strip()!r} is not name=model "
                "(e.g. medium=base,large=base)"
            )
        aliases[name] = target
    return aliases
