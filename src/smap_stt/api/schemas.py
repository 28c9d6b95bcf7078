"""Response bodies, as the original system's clients expect them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

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
    detected_language: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime

    @classmethod
    def of(cls, job: Job) -> JobStatusResponse:
        return cls(
            job_id=job.id,
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
                )
            },
        )


class SegmentOut(BaseModel):
    start: float
    end: float
    text: str


class JobResultResponse(BaseModel):
    job_id: str
    status: JobStatus
    filename: str
    language: str
    detected_language: str | None
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


class CancelResponse(BaseModel):
    status: str = "success"
    job_id: str
    job_status: JobStatus
    message: str


class HealthResponse(BaseModel):
    status: str = Field(description="healthy or unhealthy")
    services: dict[str, str]
    backends: dict[str, str]


class ErrorResponse(BaseModel):
    status: str = "error"
    detail: str
