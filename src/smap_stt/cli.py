"""The `smap-stt` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smap_stt import allocator
from smap_stt.config import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI
from smap_stt.logs import setup_logging


def _run_uvicorn(app: FastAPI, settings: Settings) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises the stop signal once it has shut down gracefully, so the process
        would die by it; a clean stop exits 0, as supervisors expect."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                self._captured_signals.clear()

    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
    )
    Server(config).run()


def _clean_temp(settings: Settings) -> None:
    """Spool and work files of processes that no longer run (issue 11)."""
    from smap_stt.retention import clean_stale_temp

    clean_stale_temp(settings.temp_dir)


def _serve(settings: Settings, _: argparse.Namespace) -> None:
    _clean_temp(settings)
    from smap_stt.api.app import create_app
    from smap_stt.backends import make_backends
    from smap_stt.stt.engine import Engine, EngineOptions
    from smap_stt.worker.runner import Worker

    backends = make_backends(settings, embedded=True)
    worker = Worker(settings, backends, Engine(EngineOptions.from_settings(settings)))
    _run_uvicorn(create_app(settings, backends, worker=worker), settings)
    _exit_without_waiting_for_decoders()


def _check_queue(settings: Settings) -> None:
    """Before uvicorn starts: a work queue declared with another TTL stops the API with one
    line (in the lifespan it would be a traceback). A broker that is down is no reason not to
    start: uploads wait in the outbox."""
    from smap_stt.backends import make_queue

    async def check() -> None:
        queue = make_queue(settings, embedded=False)
        try:
            await queue.open()
        finally:
            await queue.close()

    asyncio.run(check())


def _api(settings: Settings, _: argparse.Namespace) -> None:
    _clean_temp(settings)
    import uvicorn

    _check_queue(settings)
    if settings.api_workers == 1:
        from smap_stt.api.app import create_app_from_env

        _run_uvicorn(create_app_from_env(), settings)
        return
    from smap_stt import metrics

    # Set before uvicorn starts its worker processes, which inherit it: their metrics then go
    # to files there and every scrape adds up all of them (prometheus-client multiprocess mode).
    path = metrics.enable_multiprocess(settings.temp_dir)
    try:
        uvicorn.run(
            "smap_stt.api.app:create_app_from_env",
            factory=True,
            host=settings.api_host,
            port=settings.api_port,
            workers=settings.api_workers,
            log_config=None,
        )
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _worker(settings: Settings, _: argparse.Namespace) -> None:
    _clean_temp(settings)
    from smap_stt.backends import make_backends
    from smap_stt.stt.engine import Engine, EngineOptions
    from smap_stt.worker.runner import run_worker

    if settings.worker_metrics_port:
        from smap_stt import metrics

        metrics.start_worker_server(settings.worker_metrics_host, settings.worker_metrics_port)
    asyncio.run(
        run_worker(
            settings,
            make_backends(settings, embedded=False),
            Engine(EngineOptions.from_settings(settings)),
        )
    )
    _exit_without_waiting_for_decoders()


def _exit_without_waiting_for_decoders() -> None:
    """After a clean stop every job is settled and every backend closed; but the decode thread
    of a job handed back at shutdown runs on until its next progress check (under load, a whole
    window: tens of seconds), and the interpreter would wait for it before exiting. Nothing it
    does can reach anyone any more, so exit now."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _transcribe(settings: Settings, args: argparse.Namespace) -> None:
    from smap_stt.stt.engine import Engine, EngineOptions
    from smap_stt.stt.languages import normalize_language

    engine = Engine(EngineOptions.from_settings(settings))
    # Like an upload that names no language: DEFAULT_LANGUAGE (issue 15).
    language = normalize_language(args.language or settings.default_language)
    model = args.model or settings.whisper_model
    started = time.monotonic()
    engine.load(model)
    loaded = time.monotonic()
    transcript = engine.transcribe(Path(args.file), model=model, language=language)
    done = time.monotonic()
    if args.json:
        document = transcript.to_dict()
        document["timings"] = {
            "load_seconds": round(loaded - started, 3),
            "transcribe_seconds": round(done - loaded, 3),
        }
        print(json.dumps(document, ensure_ascii=False, indent=2))
    else:
        print(transcript.text)


def _models(settings: Settings, args: argparse.Namespace) -> None:
    from smap_stt.stt.local_models import BUNDLED, ensure_bundled_model, installed_models

    if args.action == "push":
        asyncio.run(_push(settings, args.name or settings.whisper_model))
        return
    if args.action == "install":
        path = ensure_bundled_model(settings.whisper_models_dir)
        print(f"installed {BUNDLED} at {path}")
        return
    installed = installed_models(settings.whisper_models_dir)
    remote, store, problem = asyncio.run(_remote_models(settings))
    print(f"models in {settings.whisper_models_dir} and in the {store} blob store:")
    for name in sorted({*installed, *remote, BUNDLED}):
        notes = ["default"] if name == settings.whisper_model else []
        if name not in installed and name == BUNDLED:
            notes.append("bundled; assembled on first use or by `smap-stt models install`")
        if name in remote:
            notes.append(
                f"also in the {store} blob store"
                if name in installed
                else f"in the {store} blob store; a worker fetches it on first use"
            )
        described = "; ".join(notes)
        print(f"  {name} ({described})" if notes else f"  {name}")
    if problem:
        print(f"  (models in the {store} blob store not listed: {problem})")


async def _remote_models(settings: Settings) -> tuple[list[str], str, str]:
    """Models pushed to the blob store (`smap-stt models push`), its name, and why they could
    not be listed (empty when they could)."""
    from smap_stt.backends import make_blobs
    from smap_stt.errors import BackendUnavailable
    from smap_stt.stt import bucket_models

    blobs = make_blobs(settings)
    if not settings.minio_endpoint and not settings.blob_dir.is_dir():
        return [], blobs.name, ""  # nothing pushed; listing must not create BLOB_DIR
    try:
        await blobs.open()
        return await bucket_models.remote_models(blobs), blobs.name, ""
    except BackendUnavailable as exc:
        return [], blobs.name, str(exc)
    finally:
        await blobs.close()


async def _push(settings: Settings, name: str) -> None:
    from smap_stt.backends import make_blobs
    from smap_stt.stt import bucket_models

    blobs = make_blobs(settings)
    await blobs.open()
    try:
        size = await bucket_models.push(blobs, settings.whisper_models_dir, name)
    finally:
        await blobs.close()
    print(f"pushed {name} ({size / 1e6:.1f} MB) to the {blobs.name} blob store")


# --- operations (issue 11): queue administration, webhooks, cleanup ---------------------------


def _ops_backends(settings: Settings, embedded: bool) -> Any:
    from smap_stt.backends import make_backends

    return make_backends(settings, embedded=embedded)


def _queue(settings: Settings, args: argparse.Namespace) -> None:
    from smap_stt import admin

    embedded = bool(args.embedded)
    backends = _ops_backends(settings, embedded)
    action = args.action
    if action == "stats":
        view = asyncio.run(
            admin.with_backends(backends, lambda b: admin.overview(b, embedded=embedded))
        )
        stats, oldest = view.stats, view.oldest_pending
        source = "job store (embedded queue of `serve`)" if embedded else "RabbitMQ"
        print(f"queues ({source}):")
        print(f"  work   {stats.work:>8}  waiting to be processed")
        if not embedded:
            print(f"  chunks {stats.chunks:>8}  chunks of long files, waiting for any worker")
        print(f"  retry  {stats.retry:>8}  waiting for a delayed retry")
        print(f"  dead   {stats.dead:>8}  {'FAILED jobs' if embedded else 'dead letters'}")
        consumers = "not known here (see /metrics)" if stats.consumers is None else stats.consumers
        print(f"consumers: {consumers}")
        if oldest is None:
            print("oldest waiting job: none")
        else:
            print(
                f"oldest waiting job: {oldest.id} ({admin.age_text(oldest)} old, {oldest.filename})"
            )
    elif action == "dead":
        letters = asyncio.run(admin.with_backends(backends, admin.dead_letters))
        if not letters:
            print("no dead letters")
        for letter in letters:
            print(f"{letter.job_id}  {letter.failed_at or '-':<25}  {letter.reason}")
    elif action == "requeue-dead":
        if not args.job_ids and not args.all:
            sys.exit("smap-stt: name the jobs to requeue (JOB_ID ...) or pass --all")
        ids = None if args.all else list(args.job_ids)
        results = asyncio.run(
            admin.with_backends(backends, lambda b: admin.requeue_dead(b, ids, embedded=embedded))
        )
        if not results:
            print("no dead letters to requeue")
        for old, new in results:
            print(f"{old} -> {new}")
    elif action == "purge":
        if not args.yes:
            sys.exit(
                "smap-stt: purge marks every waiting job FAILED; run it again with --yes to do it"
            )
        count = asyncio.run(admin.with_backends(backends, admin.purge))
        print(f"purged {count} job(s): marked FAILED ({admin.PURGE_REASON})")


def _webhooks(settings: Settings, args: argparse.Namespace) -> None:
    from smap_stt import admin, webhooks

    backends = _ops_backends(settings, True)
    outcome = asyncio.run(
        admin.with_backends(backends, lambda b: webhooks.redeliver(settings, b.store, args.job_id))
    )
    print(f"job {args.job_id}: webhook {outcome}")
    if outcome not in ("delivered",):
        print("  (see `webhook.attempts` in the job's status; retries follow WEBHOOK_RETRY_DELAYS)")


def _cleanup(settings: Settings, args: argparse.Namespace) -> None:
    from smap_stt import admin, retention

    backends = _ops_backends(settings, True)
    report = asyncio.run(
        admin.with_backends(
            backends, lambda b: retention.apply_retention(settings, b, dry_run=args.dry_run)
        )
    )
    verb = "would delete" if args.dry_run else "deleted"
    if settings.retention_days <= 0 and not any(
        settings.retention_for(status) for status in ("COMPLETED", "FAILED", "CANCELLED")
    ):
        print("RETENTION_DAYS is 0: jobs are kept forever")
    for status, count in sorted(report.deleted.items()):
        print(f"{verb} {count} {status} job(s)")
    if not report.deleted:
        print(f"{verb} no jobs")
    if not settings.keep_audio:
        print(f"{verb} the audio of {report.audio_deleted} final job(s) (KEEP_AUDIO=false)")
    if not args.dry_run:
        removed = retention.clean_stale_temp(settings.temp_dir)
        print(
            f"removed {removed} stale entr{'y' if removed == 1 else 'ies'} from {settings.temp_dir}"
        )


# --- issue 12 (security): API keys -----------------------------------------------------------


def _keys(settings: Settings, args: argparse.Namespace) -> None:
    asyncio.run(_keys_command(settings, args))


async def _keys_command(settings: Settings, args: argparse.Namespace) -> None:
    from smap_stt.backends import make_store
    from smap_stt.errors import InvalidRequest
    from smap_stt.jobs import utcnow
    from smap_stt.keys import new_key

    store = make_store(settings)
    await store.open()
    try:
        if args.action == "create":
            if not args.name:
                raise InvalidRequest("give the key a name: smap-stt keys create NAME")
            if args.max_priority is not None and not 0 <= args.max_priority <= 10:
                raise InvalidRequest("--max-priority must be from 0 to 10")
            key, record = new_key(args.name, admin=args.admin, max_priority=args.max_priority)
            await store.insert_key(record)
            kind = "admin key" if record.admin else "key"
            print(
                f"created {kind} {record.id} ({record.name}, max priority "
                f"{record.max_priority}); the key, shown this once (store it now):",
                file=sys.stderr,
            )
            print(key)  # alone on stdout: KEY=$(smap-stt keys create NAME)
        elif args.action == "revoke":
            if not args.name:
                raise InvalidRequest("say which key: smap-stt keys revoke ID")
            revoked = await store.revoke_key(args.name, utcnow())
            if revoked is None:
                raise InvalidRequest(f"no key with id {args.name!r} (see smap-stt keys list)")
            print(f"revoked key {revoked.id} ({revoked.name})")
        else:
            keys = await store.list_keys()
            if not keys:
                print("no API keys: the API is open (AUTH=auto); create one to lock it")
            for record in keys:
                state = (
                    f"revoked {record.revoked_at:%Y-%m-%d %H:%M}" if record.revoked_at else "active"
                )
                role = "admin" if record.admin else f"max priority {record.max_priority}"
                created = f"{record.created_at:%Y-%m-%d}"
                print(f"{record.id}  {record.name}  {role}  {state}  created {created}")
    finally:
        await store.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smap-stt", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "serve", help="API + worker in one process on the embedded backends"
    ).set_defaults(run=_serve)
    commands.add_parser("api", help="the HTTP API alone (queue: RabbitMQ)").set_defaults(run=_api)
    commands.add_parser(
        "worker", help="a transcription worker consuming from RabbitMQ"
    ).set_defaults(run=_worker)
    transcribe = commands.add_parser("transcribe", help="transcribe one file and print the text")
    transcribe.add_argument("file")
    transcribe.add_argument(
        "--language",
        default=None,
        help="code, name or 'auto' to detect (default: DEFAULT_LANGUAGE, as for uploads)",
    )
    transcribe.add_argument("--model", default="", help="model name (default: WHISPER_MODEL)")
    transcribe.add_argument("--json", action="store_true", help="segments and timings as JSON")
    transcribe.set_defaults(run=_transcribe)
    models = commands.add_parser(
        "models", help="list models, install the bundled one, or push one to the blob store"
    )
    models.add_argument("action", nargs="?", choices=["list", "install", "push"], default="list")
    models.add_argument(
        "name", nargs="?", default="", help="model to push (default: WHISPER_MODEL)"
    )
    models.set_defaults(run=_models)
    queue = commands.add_parser(
        "queue", help="queue administration: stats, dead, requeue-dead, purge"
    )
    queue.add_argument("action", choices=["stats", "dead", "requeue-dead", "purge"])
    queue.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="requeue-dead: these jobs")
    queue.add_argument("--all", action="store_true", help="requeue-dead: every dead letter")
    queue.add_argument("--yes", action="store_true", help="purge: yes, really")
    queue.add_argument(
        "--embedded",
        action="store_true",
        help="the queue of `smap-stt serve` (through the job store) instead of RabbitMQ",
    )
    queue.set_defaults(run=_queue)
    hooks = commands.add_parser("webhooks", help="webhooks: redeliver JOB_ID")
    hooks.add_argument("action", choices=["redeliver"])
    hooks.add_argument("job_id", metavar="JOB_ID")
    hooks.set_defaults(run=_webhooks)
    cleanup = commands.add_parser(
        "cleanup", help="apply RETENTION_DAYS and KEEP_AUDIO now; remove stale temp files"
    )
    cleanup.add_argument("--dry-run", action="store_true", help="only say what would go")
    cleanup.set_defaults(run=_cleanup)
    keys = commands.add_parser(
        "keys", help="create, list or revoke API keys (AUTH=auto requires them once one exists)"
    )
    keys.add_argument("action", choices=["create", "list", "revoke"])
    keys.add_argument("name", nargs="?", default="", help="name of a new key, or id to revoke")
    keys.add_argument("--admin", action="store_true", help="sees and manages every job")
    keys.add_argument(
        "--max-priority", type=int, default=None, help="highest priority it may ask (default 5)"
    )
    keys.set_defaults(run=_keys)
    from smap_stt import client  # HTTP only: imports nothing of the server

    client.add_commands(commands)
    return parser


def _log_allocator(note: str | None) -> None:
    import logging

    log = logging.getLogger("smap_stt.allocator")
    if note:
        log.warning(note)
    else:
        log.info("Memory allocator: %s", allocator.in_use())


def _settings_or_exit() -> Settings:
    """Settings, or one line per bad value and exit code 2 (a configuration error, as a
    service manager should see it), never a traceback."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        lines = [
            f"smap-stt: invalid setting {str(e['loc'][0]).upper()}: {e['msg']}"
            for e in exc.errors()
        ]
        print("\n".join(lines), file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    from smap_stt.errors import ConfigurationError, SttError

    args = build_parser().parse_args(argv)
    if hasattr(args, "client"):  # submit, wait, result: a client of a running server
        from smap_stt import client

        sys.exit(client.run(args))
    settings = _settings_or_exit()
    try:
        # Before anything is allocated; may start this process again on tcmalloc. Only a
        # process of its own (`argv` None): an in-process call must never be replaced.
        decodes = argv is None and args.command in ("serve", "worker", "transcribe")
        allocator_note = allocator.choose(settings.allocator if decodes else "glibc")
        # The one-shot commands print their results on stdout (`transcribe --json` is piped),
        # so their logs go to stderr.
        setup_logging(
            settings,
            stream=sys.stderr
            if args.command in ("transcribe", "models", "queue", "webhooks", "cleanup", "keys")
            else sys.stdout,
        )
        if decodes:
            _log_allocator(allocator_note)
        args.run(settings, args)
    except ConfigurationError as exc:
        print(f"smap-stt: {exc}", file=sys.stderr)
        sys.exit(2)
    except SttError as exc:
        sys.exit(f"smap-stt: {exc}")


if __name__ == "__main__":
    main()
