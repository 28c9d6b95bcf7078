"""Retention: what smap-stt deletes by itself, so a deployment does not grow without bound.

- RETENTION_DAYS (and RETENTION_<STATUS>_DAYS): final jobs older than that are deleted with
  their audio, transcript and checkpoints, in bounded batches (`apply_retention`, a periodic
  sweep and `smap-stt cleanup`);
- KEEP_AUDIO=false: a job's audio is deleted once the job is final, the transcript stays
  (`delete_final_audio`, a sweep);
- at startup, spool and work files in TEMP_DIR that a process which no longer runs left behind
  (`clean_stale_temp`). Every process names what it writes there after its pid
  (`uploads-<pid>/`, `work-<pid>/`, `metrics-<pid>/`), so a live process's files are never
  touched, even when API and workers share the directory.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from smap_stt import metrics
from smap_stt.errors import InvalidRequest, JobNotFound
from smap_stt.jobs import FINAL_STATES, JobStatus, utcnow

if TYPE_CHECKING:
    from smap_stt.backends import Backends
    from smap_stt.config import Settings

log = logging.getLogger(__name__)

__all__ = [
    "RetentionReport",
    "apply_retention",
    "clean_stale_temp",
    "delete_final_audio",
    "process_dir",
]

BATCH = 100
MAX_BATCHES = 20
"""Per status and pass: a backlog of old jobs is worked off over several passes, so one pass
never holds the database for long."""
STALE_TEMP_SECONDS = 24 * 3600


@dataclass
class RetentionReport:
    deleted: dict[str, int] = field(default_factory=dict)
    audio_deleted: int = 0

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


async def apply_retention(
    settings: Settings, backends: Backends, *, dry_run: bool = False
) -> RetentionReport:
    """Delete (or, `dry_run`, count) the final jobs past their retention period."""
    from smap_stt import service
    from smap_stt.keys import OPEN  # retention acts for the operator: every owner's jobs

    report = RetentionReport()
    for status in sorted(FINAL_STATES):
        days = settings.retention_for(status.value)
        if days <= 0:
            continue
        cutoff = utcnow() - timedelta(days=days)
        count = 0
        if dry_run:
            jobs = await backends.store.finished_before(
                status=status, before=cutoff, limit=BATCH * MAX_BATCHES
            )
            count = len(jobs)
        else:
            for _ in range(MAX_BATCHES):
                jobs = await backends.store.finished_before(
                    status=status, before=cutoff, limit=BATCH
                )
                for job in jobs:
                    try:
                        await service.delete_job(backends, job.id, principal=OPEN)
                    except (JobNotFound, InvalidRequest):
                        continue  # deleted meanwhile by someone else
                    count += 1
                if len(jobs) < BATCH:
                    break
            if count:
                metrics.RETENTION_DELETED.labels(status=status.value).inc(count)
        if count:
            report.deleted[status.value] = count
            log.info(
                "retention: %s %d %s job(s) finished more than %g day(s) ago",
                "would delete" if dry_run else "deleted",
                count,
                status.value,
                days,
            )
    if not settings.keep_audio:
        report.audio_deleted = await delete_final_audio(settings, backends, dry_run=dry_run)
    return report


async def retention_sweep(settings: Settings, backends: Backends) -> None:
    await apply_retention(settings, backends)


async def delete_final_audio(
    settings: Settings, backends: Backends, *, dry_run: bool = False
) -> int:
    """KEEP_AUDIO=false: delete the audio of final jobs (one batch); returns how many."""
    if settings.keep_audio:
        return 0
    jobs = await backends.store.audio_kept(limit=BATCH)
    if dry_run:
        return len(jobs)
    deleted = 0
    for job in jobs:
        await backends.blobs.delete(job.audio_key)
        if await backends.store.update_final(job.id, {"audio_deleted_at": utcnow()}):
            deleted += 1
    if deleted:
        metrics.AUDIO_DELETED.inc(deleted)
        log.info("deleted the audio of %d final job(s) (KEEP_AUDIO=false)", deleted)
    return deleted


async def audio_sweep(settings: Settings, backends: Backends) -> None:
    await delete_final_audio(settings, backends)


# --- TEMP_DIR -------------------------------------------------------------------------------


def process_dir(temp_dir: Path, kind: str) -> Path:
    """This process's own directory for `kind` (uploads, work) under TEMP_DIR."""
    return Path(temp_dir) / f"{kind}-{os.getpid()}"


_OWNED = re.compile(r"(uploads|work|metrics)-([0-9]+)")


def _owner_pid(name: str) -> int | None:
    match = _OWNED.fullmatch(name)
    return int(match.group(2)) if match else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def clean_stale_temp(temp_dir: Path) -> int:
    """At startup: remove what dead processes left in TEMP_DIR (entries named `<kind>-<pid>`
    whose pid no longer runs) and anything else there older than a day. Returns how many
    entries were removed."""
    root = Path(temp_dir)
    if not root.is_dir():
        return 0
    removed = 0
    now = time.time()
    for entry in root.iterdir():
        pid = _owner_pid(entry.name)
        try:
            if pid is not None:
                stale = not _alive(pid)
            else:
                stale = now - entry.stat().st_mtime > STALE_TEMP_SECONDS and not _has_live_owner(
                    entry
                )
        except OSError:
            continue
        if not stale:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    if removed:
        log.info("removed %d stale entr%s from %s", removed, "y" if removed == 1 else "ies", root)
    return removed


def _has_live_owner(entry: Path) -> bool:
    """A shared directory from before per-process names (`uploads/`): keep it while anything
    in it is recent (a live process may be writing there)."""
    if not entry.is_dir():
        return False
    cutoff = time.time() - STALE_TEMP_SECONDS
    for path in entry.rglob("*"):
        try:
            if path.stat().st_mtime > cutoff:
                return True
        except OSError:
            continue
    return False


def status_for(name: str) -> JobStatus:
    return JobStatus(name.upper())
