"""Response bodies, as the original system's clients expect them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from smap_stt import webhooks
from smap_stt.jobs import Job, JobStatus


class UploadDetails(BaseModel):
    filename: str
    size_mb: float
    language: str
    model: str


class UploadResponse(BaseModel):
    status: str = "success"
    job_id: str
    message: str
    details: UploadDetails


class WebhookAttempt(BaseModel):
    at: str
    status_code: int | None = None
    error: str | None = None
    duration_ms: int


class WebhookStatus(BaseModel):
    url: str = Field(description="The callback URL without its query string")
    attempts: list[WebhookAttempt]
    delivered_at: datetime | None
    next_attempt_at: datetime | None


class JobStatusResponse(BaseModel):
    job_id: str
    status: JobStatus
    filename: str
    language: str
    model: str
    priority: int
    progress: float = Field(description="0–100, by audio seconds transcribed")
    error_message: str | None
    attempts: int
    worker_id: str | None
    duration_seconds: float | None
    processing_time_seconds: float | None
    detected_language: str | None = Field(
        description="The language detection found, only when the job's language was auto "
        "(otherwise null: `language` is the one used)"
    )
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    # --- dialects (issue 10): estimates, see docs/API.md ---
    queue_position: int | None = Field(
        None,
        description="PENDING only (status endpoint): jobs that run before this one (higher "
        "priority, or the same priority and older). An estimate: retries and new urgent jobs "
        "can move it.",
    )
    eta_seconds: float | None = Field(
        None,
        description="PENDING and PROCESSING (status endpoint): estimated seconds until the "
        "job is done, from this deployment's speed on recent jobs; null until a job was "
        "measured.",
    )
    deduplicated_from: str | None = Field(
        None, description="DEDUP=true: the finished job whose transcript this job reuses."
    )
    # --- outputs (issue 9)
    language_probability: float | None = Field(
        None, description="The detected language's probability (language=auto only)"
    )
    requested_model: str | None = Field(
        None,
        description="The model name the client asked for, when WHISPER_MODEL_ALIASES "
        "mapped it to `model`",
    )
    chunks_total: int = Field(
        0,
        description="Chunks the audio is cut into (an estimate "
        "until the job ends), as the original's status had it",
    )
    chunks_completed: int = Field(0, description="Chunks transcribed so far")
    task: str = Field("transcribe", description="transcribe or translate (into English)")
    word_timestamps: bool = False
    initial_prompt: str | None = None
    hotwords: str | None = None
    beam_size: int | None = Field(None, description="null: the server's WHISPER_BEAM_SIZE")
    vad_filter: bool = True
    temperature: float = 0.0

    # operations (issue 11)
    webhook: WebhookStatus | None = None
    retry_of: str | None = None

    @classmethod
    def of(
        cls, job: Job, *, queue_position: int | None = None, eta_seconds: float | None = None
    ) -> JobStatusResponse:
        webhook = webhooks.status_view(job)
        return cls(
            job_id=job.id,
            webhook=None if webhook is None else WebhookStatus.model_validate(webhook),
            retry_of=job.retry_of,
            queue_position=queue_position,
            eta_seconds=eta_seconds,
            **{
                name: getattr(job, name)
                for name in (
                    "status",
                    "filename",
                    "language",
                    "model",
                    "priority",
                    "progress",
                    "error_message",
                    "attempts",
                    "worker_id",
                    "duration_seconds",
                    "processing_time_seconds",
                    "detected_language",
                    "created_at",
                    "started_at",
                    "completed_at",
                    "updated_at",
                    "deduplicated_from",
                    "language_probability",
                    "requested_model",
                    "chunks_total",
                    "chunks_completed",
                    "task",
                    "word_timestamps",
                    "initial_prompt",
                    "hotwords",
                    "beam_size",
                    "vad_filter",
                    "temperature",
                )
            },
        )


class SegmentOut(BaseModel):
    start: float
    end: float
    text: str


class VerboseTranscript(BaseModel):
    """`?format=verbose_json`: OpenAI's verbose transcription (task, language, duration, text,
    segments, and words when word timestamps were asked for)."""

    model_config = ConfigDict(extra="allow")

    task: str
    language: str
    duration: float
    text: str
    segments: list[dict[str, Any]]


class JobResultResponse(BaseModel):
    job_id: str
    status: JobStatus
    filename: str
    language: str
    detected_language: str | None = Field(
        description="The language detection found, only when the job's language was auto "
        "(otherwise null: `language` is the one used)"
    )
    language_probability: float | None = None
    transcription: str | None
    segments: list[SegmentOut]
    duration_seconds: float | None
    processing_time_seconds: float | None
    created_at: datetime
    completed_at: datetime | None
    download_url: str | None
    message: str


class JobListResponse(BaseModel):
    status: str = "success"
    count: int
    jobs: list[JobStatusResponse]
    # --- dialects (issue 10): paging ---
    total: int = Field(0, description="Jobs matching the filter, over all pages.")
    offset: int = Field(0, description="Jobs skipped before this page.")
    limit: int = Field(20, description="Page size used (at most 100).")
    next_offset: int | None = Field(
        None, description="The offset of the next page; null on the last page."
    )


class CancelResponse(BaseModel):
    status: str = "success"
    job_id: str
    job_status: JobStatus
    message: str


class HealthResponse(BaseModel):
    status: str = Field(description="healthy or unhealthy")
    services: dict[str, str]
    backends: dict[str, str]
    auth: str = Field("off", description="on: API keys are required; off: the API is open")


class ErrorResponse(BaseModel):
    status: str = "error"
    detail: str


# --- the web page's links (issue 13) -----------------------------------------------------------


class JobLinksResponse(BaseModel):
    expires_at: datetime | None = Field(
        description="When these URLs stop working (null: they do not expire)"
    )
    audio: str = Field(description="The job's audio, with HTTP Range support")
    downloads: dict[str, str] = Field(description="Transcript download URL by format")
