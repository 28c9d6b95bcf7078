"""The URLs a browser fetches without sending a key header: the `<audio src>` of a job and
its download links. Built in this one function so that signing them (issue 12: expiry and an
HMAC in the query) is a change here and in the auth layer only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from smap_stt.config import Settings

__all__ = ["DOWNLOAD_FORMATS", "JobLinks", "job_links"]

DOWNLOAD_FORMATS = ("txt", "srt", "vtt", "tsv", "json")


@dataclass(frozen=True)
class JobLinks:
    """Relative URLs, so they work behind any proxy or host name the page was loaded from.
    `expires_at`: when signed URLs stop working (None: they never do)."""

    expires_at: datetime | None
    audio: str
    downloads: dict[str, str]


def job_links(settings: Settings, job_id: str) -> JobLinks:
    """`settings` is unused until the URLs are signed with the server's secret."""
    base = f"/api/v1/tasks/{job_id}"
    return JobLinks(
        expires_at=None,
        audio=f"{base}/audio",
        downloads={fmt: f"{base}/download?format={fmt}" for fmt in DOWNLOAD_FORMATS},
    )
