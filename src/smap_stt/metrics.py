"""Every Prometheus metric smap-stt exports, in one place.

Names follow Prometheus' conventions (`smap_stt_` prefix, base units, `_total` on counters) and
labels stay low-cardinality: a status, a model name, a queue, a reason class, never a job id or
a filename. What each process exports:
- the API (`GET /metrics`): uploads, accepted jobs, cancellations, refused uploads, and the
  queue gauges read from the broker (or the job store) at scrape time;
- a worker (its own port, WORKER_METRICS_PORT): finished jobs, processing time, real-time
  factor, audio seconds, jobs in flight and free slots, retries, dead letters, model loads;
- whichever process runs a sweep: webhook deliveries, retention deletions;
- `serve`: all of it on the API's `/metrics`.

With API_WORKERS > 1, `smap-stt api` runs prometheus-client's multiprocess mode (see
`enable_multiprocess`): every process writes its values to files in PROMETHEUS_MULTIPROC_DIR and
a scrape adds them up, so no count is lost whichever process answers.

Imports nothing heavy: the API process loads this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from smap_stt.backends import Backends

log = logging.getLogger(__name__)

__all__ = ["CONTENT_TYPE_LATEST", "failure_reason", "render"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SCRAPE_TIMEOUT = 2.0
"""Seconds a scrape may wait for the broker and the job store before it reports without them."""

# --- the API --------------------------------------------------------------------------------

JOBS_ACCEPTED = Counter(
    "smap_stt_jobs_accepted_total", "Uploads that became a queued job.", ["model"]
)
UPLOAD_BYTES = Counter(
    "smap_stt_upload_bytes_total", "Bytes of audio received in accepted uploads."
)
UPLOADS_REFUSED = Counter(
    "smap_stt_uploads_refused_total",
    "Uploads answered with an error, by HTTP status code.",
    ["status_code"],
)

# --- workers --------------------------------------------------------------------------------

JOBS_FINISHED = Counter(
    "smap_stt_jobs_finished_total",
    "Jobs that reached a final state, by status and model (CANCELLED is counted by the API "
    "process that cancelled it).",
    ["status", "model"],
)
JOBS_FAILED = Counter(
    "smap_stt_jobs_failed_total", "Jobs that ended FAILED, by reason class.", ["reason"]
)
PROCESSING_SECONDS = Histogram(
    "smap_stt_job_processing_seconds",
    "Wall-clock seconds of a successful attempt, from claim to stored transcript.",
    ["model"],
    buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
REAL_TIME_FACTOR = Histogram(
    "smap_stt_job_real_time_factor",
    "Processing seconds per second of audio (lower is faster; 1 = real time).",
    ["model"],
    buckets=(0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5),
)
AUDIO_SECONDS = Counter(
    "smap_stt_audio_seconds_total", "Seconds of audio transcribed by finished jobs.", ["model"]
)
JOBS_IN_FLIGHT = Gauge(
    "smap_stt_jobs_in_flight", "Attempts running in this worker.", multiprocess_mode="livesum"
)
WORKER_SLOTS = Gauge(
    "smap_stt_worker_slots",
    "Jobs this worker runs at once (MAX_CONCURRENT_JOBS).",
    multiprocess_mode="livesum",
)
CHUNKS = Counter(
    "smap_stt_chunks_total",
    "Chunks of files split across workers that this worker handled, by outcome "
    "(transcribed, dropped: the job had ended or the chunk was already in, stopped: the job "
    "ended meanwhile).",
    ["outcome"],
)
CHUNK_SECONDS = Histogram(
    "smap_stt_chunk_seconds",
    "Seconds a worker spent transcribing one chunk of a file split across workers.",
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)
RETRIES = Counter(
    "smap_stt_job_retries_total", "Attempts scheduled for a retry, by reason class.", ["reason"]
)
DEAD_LETTERS = Counter(
    "smap_stt_dead_letters_total", "Messages given up for good, by reason class.", ["reason"]
)
MODEL_LOAD_SECONDS = Histogram(
    "smap_stt_model_load_seconds",
    "Seconds to load a Whisper model into a worker.",
    ["model"],
    buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)

# --- sweeps ---------------------------------------------------------------------------------

WEBHOOK_DELIVERIES = Counter(
    "smap_stt_webhook_deliveries_total",
    "Webhook attempts by outcome: delivered, retry (will try again), gave_up, gone (410), "
    "refused (the address is not allowed).",
    ["outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "smap_stt_webhook_duration_seconds",
    "Seconds a webhook attempt took, answered or not.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RETENTION_DELETED = Counter(
    "smap_stt_retention_deleted_total",
    "Final jobs deleted by the retention sweep, by status.",
    ["status"],
)
AUDIO_DELETED = Counter(
    "smap_stt_audio_deleted_total", "Audio files deleted once their job was final (KEEP_AUDIO)."
)

# --- read at scrape time --------------------------------------------------------------------

QUEUE_NAMES = ("work", "chunks", "retry", "dead")
SCRAPE_METRICS = {
    "smap_stt_queue_messages": "Messages waiting per queue: work (jobs), chunks (chunks of "
    "files split across workers), retry (delayed retries of both), dead.",
    "smap_stt_queue_consumers": "Consumers attached to the work queue.",
    "smap_stt_queue_oldest_pending_seconds": "Age of the oldest PENDING job (0: none).",
    "smap_stt_queue_up": "1 if the queue and the job store answered this scrape, else 0.",
}

_REASONS = (
    ("timeout", re.compile(r"timeout|JOB_TIMEOUT", re.I)),
    ("expired", re.compile(r"expired", re.I)),
    ("purged", re.compile(r"purged", re.I)),
    ("gave_up", re.compile(r"gave up after", re.I)),
    ("unknown_job", re.compile(r"unknown job", re.I)),
    ("malformed", re.compile(r"malformed", re.I)),
    ("model", re.compile(r"model", re.I)),
    ("storage", re.compile(r"unavailable|stored file|missing", re.I)),
    ("unexpected", re.compile(r"unexpected", re.I)),
    ("audio", re.compile(r"audio|decod|sound|file|format|stream", re.I)),
)


def failure_reason(text: str | None) -> str:
    """A reason class for a failure message, so labels stay few: timeout, audio, model, ..."""
    for name, pattern in _REASONS:
        if text and pattern.search(text):
            return name
    return "other"


@contextlib.contextmanager
def count_refusals() -> Iterator[None]:
    """Around an upload: count a refusal by the HTTP status it will be answered with."""
    from smap_stt.errors import BackendUnavailable, InvalidRequest

    try:
        yield
    except InvalidRequest as exc:
        UPLOADS_REFUSED.labels(status_code=str(exc.status_code)).inc()
        raise
    except BackendUnavailable:
        UPLOADS_REFUSED.labels(status_code="503").inc()
        raise


def observe_accepted(model: str, size_bytes: int) -> None:
    JOBS_ACCEPTED.labels(model=model).inc()
    UPLOAD_BYTES.inc(size_bytes)


def observe_failed(model: str, reason: str) -> None:
    """A job ended FAILED (counted by the process that failed it)."""
    JOBS_FINISHED.labels(status="FAILED", model=model).inc()
    JOBS_FAILED.labels(reason=failure_reason(reason)).inc()


def observe_finished(model: str, status: str, audio_seconds: float | None, elapsed: float) -> None:
    """A worker finished a job: count it and, when it completed, its time and speed."""
    JOBS_FINISHED.labels(status=status, model=model).inc()
    if status != "COMPLETED":
        return
    PROCESSING_SECONDS.labels(model=model).observe(elapsed)
    if audio_seconds:
        AUDIO_SECONDS.labels(model=model).inc(audio_seconds)
        REAL_TIME_FACTOR.labels(model=model).observe(elapsed / audio_seconds)


# --- scrape-time queue figures --------------------------------------------------------------


@dataclass(frozen=True)
class QueueFigures:
    messages: dict[str, int]
    consumers: int | None
    oldest_pending_seconds: float


class _Figures(Collector):
    def __init__(self, figures: QueueFigures | None) -> None:
        self._figures = figures

    def collect(self) -> Iterable[Metric]:
        figures = self._figures
        up = GaugeMetricFamily("smap_stt_queue_up", SCRAPE_METRICS["smap_stt_queue_up"])
        up.add_metric([], 0 if figures is None else 1)
        yield up
        messages = GaugeMetricFamily(
            "smap_stt_queue_messages", SCRAPE_METRICS["smap_stt_queue_messages"], labels=["queue"]
        )
        consumers = GaugeMetricFamily(
            "smap_stt_queue_consumers", SCRAPE_METRICS["smap_stt_queue_consumers"]
        )
        oldest = GaugeMetricFamily(
            "smap_stt_queue_oldest_pending_seconds",
            SCRAPE_METRICS["smap_stt_queue_oldest_pending_seconds"],
        )
        if figures is not None:
            for name in QUEUE_NAMES:
                messages.add_metric([name], figures.messages.get(name, 0))
            if figures.consumers is not None:
                consumers.add_metric([], figures.consumers)
            oldest.add_metric([], figures.oldest_pending_seconds)
        yield from (messages, consumers, oldest)


async def queue_figures(backends: Backends) -> QueueFigures | None:
    """Queue depths and consumers from the queue, backlog age from the job store; None when
    they do not answer within SCRAPE_TIMEOUT (a scrape must never hang on a broker)."""
    from smap_stt.jobs import JobStatus, utcnow

    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT):
            stats = await backends.queue.stats(backends.store)
            oldest = await backends.store.list_oldest(status=JobStatus.PENDING, limit=1)
    except Exception as exc:
        log.info("metrics scrape without queue figures: %s", exc)
        return None
    age = (utcnow() - oldest[0].created_at).total_seconds() if oldest else 0.0
    return QueueFigures(
        messages={
            "work": stats.work,
            "chunks": stats.chunks,
            "retry": stats.retry,
            "dead": stats.dead,
        },
        consumers=stats.consumers,
        oldest_pending_seconds=max(0.0, age),
    )


# --- exposition -----------------------------------------------------------------------------


def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def enable_multiprocess(temp_dir: Path) -> Path:
    """Before uvicorn forks its API workers: a fresh PROMETHEUS_MULTIPROC_DIR for them to
    inherit. Must run before anything imports prometheus_client in the workers (they start
    from scratch, so it does); the directory is named after this process, so the startup
    cleanup can tell a dead run's directory from a live one."""
    path = Path(temp_dir).resolve() / f"metrics-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def _mark_dead_processes(path: Path) -> None:
    """uvicorn has no child-exit hook, so at each scrape: drop the live gauges of API worker
    processes that are gone (counters and histograms of dead processes stay and still count)."""
    from prometheus_client import multiprocess

    for file in path.glob("gauge_live*_*.db"):
        pid_text = file.stem.rsplit("_", 1)[-1]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            multiprocess.mark_process_dead(int(pid_text), str(path))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_registry() -> CollectorRegistry:
    path = multiprocess_dir()
    if path is None or not path.is_dir():
        return REGISTRY
    from prometheus_client import multiprocess

    _mark_dead_processes(path)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(path))  # type: ignore[no-untyped-call]
    return registry


async def render(backends: Backends | None) -> bytes:
    """The text exposition for `GET /metrics`: this process's (or, in multiprocess mode, every
    API process's) metrics, plus the queue figures when `backends` is given."""
    parts = [await asyncio.to_thread(generate_latest, _process_registry())]
    if backends is not None:
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(_Figures(await queue_figures(backends)))
        parts.append(generate_latest(scrape))
    return b"".join(parts)


def start_worker_server(host: str, port: int) -> None:
    """A worker's own `/metrics` (prometheus-client's HTTP server, on a daemon thread)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host)
    log.info("worker metrics on http://%s:%d/metrics", host, port)


class InFlight:
    """Counts an attempt in JOBS_IN_FLIGHT while it runs."""

    def __enter__(self) -> InFlight:
        JOBS_IN_FLIGHT.inc()
        return self

    def __exit__(self, *_: object) -> None:
        JOBS_IN_FLIGHT.dec()
