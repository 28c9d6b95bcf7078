"""The shallow tree of errors smap-stt raises; drivers' own errors never leak past a backend."""

from __future__ import annotations


class SttError(Exception):
    """Base of every error smap-stt raises on purpose."""


class BackendUnavailable(SttError):
    """A backend (database, storage, broker) did not answer; worth retrying later."""

    def __init__(self, backend: str, detail: str) -> None:
        super().__init__(f"{backend} is unavailable: {detail}")
        self.backend = backend


class QueueUnavailable(BackendUnavailable):
    """The message broker did not accept a message."""

    def __init__(self, detail: str) -> None:
        super().__init__("rabbitmq", detail)


class JobNotFound(SttError):
    """No job has that id."""


class BlobNotFound(SttError):
    """No stored object has that key."""


class JobConflict(SttError):
    """The job exists but its state does not allow the request (cancel a finished job, delete
    an active one, download a transcript not made yet, insert an id twice)."""


class InvalidRequest(SttError):
    """The client asked for something invalid; `status_code` says how (400, 413, 415, 422...),
    `param` which upload field it was, when one was (OpenAI's errors name it)."""

    def __init__(self, message: str, status_code: int = 422, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.param = param


class DuplicateIdempotencyKey(SttError):
    """Another job already holds this Idempotency-Key (the store's unique index said so)."""


class AudioError(SttError):
    """The file is not audio that can be decoded, or holds (almost) no sound."""


class AudioTooShort(AudioError):
    """The file decodes, but to (almost) no sound."""


class AudioRejected(AudioError):
    """The file is audio, but not one we take: too long, or streams no recording has (422)."""


class ModelNotFound(SttError):
    """The requested Whisper model is not installed and cannot be fetched."""


class ModelCorrupt(SttError):
    """A model's files failed verification."""


class JobCancelled(SttError):
    """The job was cancelled, timed out or taken over while it ran; stop working on it."""


# --- issue 15 (deploy): settings that conflict with what exists; the process must not start.
class ConfigurationError(SttError):
    """A setting cannot be used as given (a log file that cannot be written, a queue that
    exists with other arguments); the message says what to change."""
