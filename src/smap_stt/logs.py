"""Logging: plain lines to stdout (and LOG_FILE), each carrying the job id it concerns."""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from pathlib import Path
from typing import TextIO

from smap_stt.config import Settings
from smap_stt.errors import ConfigurationError

current_job: contextvars.ContextVar[str] = contextvars.ContextVar("current_job", default="")

FORMAT = "%(asctime)s %(levelname)s %(name)s%(job)s %(message)s"


class _JobFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        job = current_job.get()
        record.job = f" [job {job}]" if job else ""
        return True


class _RedactFilter(logging.Filter):
    """Access lines name the URL asked for: a signed link's signature (and a token a client put
    in a query) would let whoever reads the log use it until it expires."""

    _SECRET = re.compile(r"((?:signature|token|api_key|key)=)[^&\s]+", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            record.args = tuple(
                self._SECRET.sub(r"\1…", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


def _file_handler(path: Path) -> logging.FileHandler:
    """Under a service manager the log directory often does not exist yet: create it. A path
    that cannot be written is one clear error, not a traceback."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return logging.FileHandler(path)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigurationError(f"LOG_FILE {path} cannot be written: {reason}") from exc


def setup_logging(settings: Settings, *, stream: TextIO = sys.stdout) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(stream)]
    if settings.log_file:
        handlers.append(_file_handler(Path(settings.log_file)))
    for handler in handlers:
        handler.addFilter(_JobFilter())
        handler.addFilter(_RedactFilter())
        handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers = handlers
    root.setLevel(settings.log_level)
    for noisy in (
        "aiormq",
        "aio_pika",
        "pymongo",
        "botocore",
        "boto3",
        "s3transfer",
        "faster_whisper",
        "httpx",
        "urllib3",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
