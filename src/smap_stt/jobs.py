"""What a job is and how its state may change. Pure data, no I/O.

The allowed state changes are `TRANSITIONS` below; the job store applies each one as a single
guarded update whose allowed source states come from `sources` (store/base.py), so a change to
the rules is made here."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


DATETIME_FIELDS = (
    "created_at",
    "updated_at",
    "started_at",
    "completed_at",
    "heartbeat_at",
    "webhook_next_at",
    "webhook_delivered_at",
    "audio_deleted_at",
)
FINAL_STATES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE_STATES = frozenset({JobStatus.PENDING, JobStatus.PROCESSING})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    # claimed by a worker; failed (e.g. its message died); cancelled by request
    JobStatus.PENDING: frozenset({JobStatus.PROCESSING, JobStatus.FAILED, JobStatus.CANCELLED}),
    # taken over (PROCESSING again, a new attempt) or handed back (PENDING), or finished
    JobStatus.PROCESSING: frozenset(
        {
            JobStatus.PROCESSING,
            JobStatus.PENDING,
            JobStatus.COMPLETED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
        }
    ),
    # a final state never changes again
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}
"""state → the states a job in it may move to."""


def sources(target: JobStatus) -> frozenset[JobStatus]:
    """The states a job may move to `target` from."""
    return frozenset(state for state, targets in TRANSITIONS.items() if target in targets)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Job:
    """One transcription request and everything known about it.

    `attempts` counts claims by workers: every state change a worker makes is guarded on the
    attempt it holds, so a worker whose job was taken over, cancelled or timed out can never
    overwrite the newer state.
    """

    id: str
    filename: str
    language: str
    model: str
    audio_key: str
    priority: int = 5
    status: JobStatus = JobStatus.PENDING
    progress: float = 0.0
    error_message: str | None = None
    size_bytes: int = 0
    duration_seconds: float | None = None
    processing_time_seconds: float | None = None
    transcription: str | None = None
    detected_language: str | None = None
    result_key: str | None = None
    attempts: int = 0
    worker_id: str | None = None
    published: bool = False
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    heartbeat_at: datetime | None = None
    # --- dialects (issue 10): submit once, dedup ---
    idempotency_key: str | None = None
    """The client's Idempotency-Key, scoped by owner (see `service.scoped_key`)."""
    content_sha256: str | None = None
    """Hex sha256 of the uploaded file, computed while it streamed in."""
    deduplicated_from: str | None = None
    """With DEDUP=true: the finished job whose transcript this one reuses."""
    # --- operations (issue 11): webhooks, requeued dead letters, retention ---
    callback_url: str | None = None
    """Where to POST the job's final state (webhooks)."""
    webhook_delivery_id: str | None = None
    """The id of the current delivery (X-SMAP-Delivery): the same for every retry of it."""
    webhook_next_at: datetime | None = None
    """When the next webhook attempt is due; None: nothing to send (none asked, delivered,
    given up). Set in the same guarded update that makes the job final (the outbox)."""
    webhook_attempts: list[dict[str, Any]] = field(default_factory=list)
    """Every attempt: {at, status_code | error, duration_ms, delivery_id}."""
    webhook_delivered_at: datetime | None = None
    retry_of: str | None = None
    """The FAILED job this one was requeued from (`smap-stt queue requeue-dead`)."""
    requeued_as: str | None = None
    """The new job a FAILED one was requeued as (it stays FAILED: final states never change)."""
    audio_deleted_at: datetime | None = None
    """When the audio was deleted because the job was final and KEEP_AUDIO is false."""
    # --- outputs (issue 9): the upload's decoding options, the detected language's
    # probability, the model name the client asked for (when WHISPER_MODEL_ALIASES mapped it),
    # and progress by chunks as the original's clients read it.
    task: str = "transcribe"
    word_timestamps: bool = False
    initial_prompt: str | None = None
    hotwords: str | None = None
    beam_size: int | None = None
    vad_filter: bool = True
    temperature: float = 0.0
    language_probability: float | None = None
    requested_model: str | None = None
    chunks_total: int = 0
    chunks_completed: int = 0

    # --- security (issue 12) ---
    owner: str | None = None
    """The id of the API key that made the job; None when it was made while the API was open."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        known = {name for name in cls.__dataclass_fields__}
        values = {key: value for key, value in data.items() if key in known}
        values["status"] = JobStatus(values["status"])
        if values.get("webhook_attempts") is None:  # rows written before the field existed
            values.pop("webhook_attempts", None)
        for key in DATETIME_FIELDS:
            value = values.get(key)
            if isinstance(value, str):
                value = datetime.fromisoformat(value)
            if isinstance(value, datetime) and value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            if key in values:
                values[key] = value
        return cls(**values)


def give_up_reason(
    job: Job | int, max_attempts: int, why: str, *, what: str = "attempts"
) -> str | None:
    """The one rule for giving up on a job, shared by the worker's message path and the
    recovery sweeps: once `max_attempts` attempts were made, whatever stopped the last one
    (an error, a silent worker, a crashed process) ends the job FAILED with this reason instead
    of starting it again. None: it may run again. A chunk of a fanned-out file counts its
    own tries (`job` is then that count, `what` "tries")."""
    attempts = job if isinstance(job, int) else job.attempts
    if attempts < max_attempts:
        return None
    return f"gave up after {attempts} {what}: {why}"


def result_key(job_id: str) -> str:
    """Where the worker stores a job's transcript document (known without the job row, so a
    transcript written by an attempt that lost its job can still be found and removed)."""
    return f"results/{job_id}.json"


@dataclass(frozen=True)
class JobMessage:
    """The body of a queue message, as the original system sent it."""

    job_id: str
    language: str
    model: str
    filename: str

    @classmethod
    def for_job(cls, job: Job) -> JobMessage:
        return cls(job_id=job.id, language=job.language, model=job.model, filename=job.filename)


@dataclass(frozen=True)
class ChunkMessage:
    """A chunk of a long file, for whichever worker takes it (issue 14, worker/fanout.py):
    samples [start, end) of the job's audio at 16 kHz, stored as a WAV of their own at
    `audio_key`, to be transcribed in `language` and checkpointed as chunk `index`."""

    job_id: str
    index: int
    start: int
    end: int
    language: str
    audio_key: str
    windows: tuple[tuple[tuple[int, int], ...], ...] = ()
    """The chunk's speech windows as found where it was cut, each its [start, end) sample
    ranges of the chunk, so the worker that takes it need not run VAD again; empty: it does."""


def chunk_audio_prefix(job_id: str) -> str:
    """Where a fanned-out job's chunk audio lives while the job runs."""
    return f"chunks/{job_id}/"


def chunk_audio_key(job_id: str, index: int) -> str:
    return f"{chunk_audio_prefix(job_id)}{index:05d}.wav"
