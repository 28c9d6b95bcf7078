"""Write `.env.example`, `docs/CONFIGURATION.md` and `docs/openapi.json` from the code, so they
cannot drift from it (tests/test_docs.py fails when they are stale: run this script)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from smap_stt.config import Settings

ROOT = Path(__file__).resolve().parent.parent

GROUPS = [
    ("HTTP API", ["api_host", "api_port", "api_workers", "public_base_url"]),
    (
        "RabbitMQ (the `api` and `worker` commands)",
        [
            "rabbitmq_url",
            "rabbitmq_host",
            "rabbitmq_port",
            "rabbitmq_user",
            "rabbitmq_password",
            "rabbitmq_vhost",
            "rabbitmq_exchange_name",
            "rabbitmq_routing_key",
            "rabbitmq_queue_name",
        ],
    ),
    ("Job store", ["mongodb_url", "mongodb_database", "sqlite_path"]),
    (
        "Blob store",
        [
            "minio_endpoint",
            "minio_public_endpoint",
            "minio_access_key",
            "minio_secret_key",
            "minio_bucket",
            "minio_secure",
            "minio_region",
            "presigned_url_expiry_seconds",
            "blob_dir",
        ],
    ),
    (
        "Security and limits (docs/SECURITY.md)",
        [
            "auth",
            "url_signing_secret",
            "signed_url_seconds",
            "metrics_token",
            "cors_origins",
            "trusted_hosts",
            "rate_limit_per_minute",
            "upload_mb_per_hour",
            "max_pending_jobs_per_key",
            "max_pending_jobs",
            "upload_deadline_seconds",
            "max_concurrent_uploads",
            "max_audio_duration_seconds",
        ],
    ),
]


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        if field.description and "Default:" in field.description:
            return ""
        value: Any = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return "" if value is None else str(value)


def _groups() -> list[tuple[str, list[str]]]:
    fields = list(Settings.model_fields)
    grouped = {name for _, names in GROUPS for name in names}
    rest = [name for name in fields if name not in grouped]
    jobs = [n for n in rest if not n.startswith(("whisper_", "log_"))]
    whisper = [n for n in rest if n.startswith("whisper_")]
    logging = [n for n in rest if n.startswith("log_")]
    return [
        *GROUPS,
        ("Jobs, uploads and reliability", jobs),
        ("Whisper", whisper),
        ("Logging", logging),
    ]


def env_example() -> str:
    lines = [
        "# smap-stt settings: every option with its default. Copy to .env and edit.",
        "# Backends follow from what is set: MONGODB_URL → MongoDB (else SQLite),",
        "# MINIO_ENDPOINT → S3 (else local files); `serve` uses an in-process queue,",
        "# `api` and `worker` use RabbitMQ.",
        "",
    ]
    for title, names in _groups():
        lines.append(f"# --- {title}")
        for name in names:
            field = Settings.model_fields[name]
            lines.append(f"# {field.description or ''}".rstrip())
            lines.append(f"{name.upper()}={_default(field)}")
        lines.append("")
    return "\n".join(lines)


def configuration_md() -> str:
    lines = [
        "# Configuration",
        "",
        "Every option is read from the environment or from a `.env` file in the working",
        "directory (environment wins). `.env.example` lists them all with their defaults.",
        "List settings take comma-separated values (`RETRY_DELAYS=5,30,120`) or JSON",
        "(`[5, 30, 120]`). Relative paths are relative to the working directory (see",
        "[DEPLOYMENT.md](DEPLOYMENT.md) for running under systemd).",
        "This page is generated from `src/smap_stt/config.py` by `scripts/gen_docs.py`.",
        "",
        "## Which backend is used",
        "",
        "| part | embedded default | production | chosen by |",
        "|---|---|---|---|",
        "| job store | SQLite at `SQLITE_PATH` | MongoDB 6+ | `MONGODB_URL` set |",
        "| blob store | files under `BLOB_DIR` | S3 / MinIO / SeaweedFS | `MINIO_ENDPOINT` set |",
        "| job queue | in-process (`smap-stt serve`) | RabbitMQ 3.10+ | `smap-stt api` / "
        "`smap-stt worker` |",
        "",
    ]
    for title, names in _groups():
        lines += [f"## {title}", "", "| variable | default | meaning |", "|---|---|---|"]
        for name in names:
            field = Settings.model_fields[name]
            default = _default(field)
            lines.append(
                f"| `{name.upper()}` | `{default}` | {field.description or ''} |"
                if default
                else f"| `{name.upper()}` | | {field.description or ''} |"
            )
        lines.append("")
    return "\n".join(lines)


def openapi() -> str:
    from smap_stt.api.app import create_app
    from smap_stt.backends import make_backends

    settings = Settings()
    app = create_app(settings, make_backends(settings, embedded=True))
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"


def outputs() -> dict[Path, str]:
    return {
        ROOT / ".env.example": env_example(),
        ROOT / "docs" / "CONFIGURATION.md": configuration_md(),
        ROOT / "docs" / "openapi.json": openapi(),
    }


if __name__ == "__main__":
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
