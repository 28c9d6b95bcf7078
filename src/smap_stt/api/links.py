"""The URLs a browser fetches without sending a key header: the `<audio src>` of a job and
its download links. Built in this one function so that signing them (issue 12: expiry and an
HMAC in the query) is a change here and in the auth layer only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from smap_stt.config import Settings
from smap_stt.keys import sign_url

__all__ = ["DOWNLOAD_FORMATS", "JobLinks", "job_links"]

DOWNLOAD_FORMATS = ("txt", "srt", "vtt", "tsv", "json")


@dataclass(frozen=True)
class JobLinks:
    """Relative URLs, so they work behind any proxy or host name the page was loaded from.
    `expires_at`: when signed URLs stop working (None: they never do)."""

    expires_at: datetime | None
    audio: str
    downloads: dict[str, str]


def job_links(settings: Settings, job_id: str, *, secret: bytes) -> JobLinks:
    """The links, signed with `secret` for SIGNED_URL_SECONDS (issue 12): the auth layer
    accepts the signature instead of a key on exactly these GET routes."""
    base = f"/api/v1/tasks/{job_id}"
    lifetime = settings.signed_url_seconds
    audio, expires = sign_url(secret, f"{base}/audio", lifetime=lifetime)
    downloads = {
        fmt: sign_url(secret, f"{base}/download?format={fmt}", lifetime=lifetime)[0]
        for fmt in DOWNLOAD_FORMATS
    }
    return JobLinks(
        expires_at=datetime.fromtimestamp(expires, UTC), audio=audio, downloads=downloads
    )
