"""The command-line client: `smap-stt submit | wait | result` against a running smap-stt.

It speaks only HTTP (httpx) and draws with rich; it imports nothing of the server (no engine,
no store, no settings), so it runs on any machine with the package installed. Progress and
messages go to stderr, job ids and written paths to stdout, so scripts can read them.

Exit status: 0 all went well; 1 a file was refused or a job did not complete (each is named);
2 the server could not be reached or answered something unexpected.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

__all__ = ["add_commands", "run"]

FORMATS = ("json", "verbose_json", "txt", "srt", "vtt", "tsv")
FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
DEFAULT_SERVER = "http://127.0.0.1:8000"
_EXTENSIONS = {"verbose_json": "json"}


class ClientError(Exception):
    """Something the user must hear about in one line (exit status 2)."""


@dataclass
class _Job:
    job_id: str
    name: str  # what the user knows it by: the file, or the server's filename
    task: TaskID | None = None
    status: dict[str, Any] = field(default_factory=dict)


def add_commands(commands: Any) -> None:
    """Add submit, wait and result to the `smap-stt` argument parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        default=os.environ.get("SMAP_STT_SERVER", DEFAULT_SERVER),
        help=f"the smap-stt API (default: SMAP_STT_SERVER or {DEFAULT_SERVER})",
    )
    common.add_argument(
        "--api-key",
        default=os.environ.get("SMAP_STT_API_KEY", ""),
        help="sent as 'Authorization: Bearer KEY' (default: SMAP_STT_API_KEY)",
    )
    outputs = argparse.ArgumentParser(add_help=False)
    outputs.add_argument("--format", choices=FORMATS, default=None, help="transcript format")
    outputs.add_argument("--out", type=Path, default=None, help="write DIR/<stem>.<format>")
    outputs.add_argument(
        "--interval", type=float, default=1.0, help="seconds between status polls (default 1)"
    )

    submit = commands.add_parser(
        "submit", parents=[common, outputs], help="upload files as jobs (client)"
    )
    submit.add_argument("files", nargs="+", type=Path, metavar="FILE")
    submit.add_argument("--language", default=None, help="code, name or 'auto'")
    submit.add_argument("--model", default=None, help="model name (default: the server's)")
    submit.add_argument("--priority", type=int, default=None, help="0-10 (default 5)")
    submit.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other upload field, e.g. --option word_timestamps=true --option task=translate",
    )
    submit.add_argument(
        "--wait", action="store_true", help="wait for the jobs and write their transcripts"
    )
    submit.set_defaults(client=_submit)

    wait = commands.add_parser(
        "wait", parents=[common, outputs], help="wait for jobs submitted earlier (client)"
    )
    wait.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    wait.set_defaults(client=_wait)

    result = commands.add_parser(
        "result", parents=[common], help="print or save a job's transcript (client)"
    )
    result.add_argument("job_id", metavar="JOB_ID")
    result.add_argument("--format", choices=FORMATS, default="txt", help="default txt")
    result.add_argument("--out", type=Path, default=None, help="write DIR/<stem>.<format>")
    result.set_defaults(client=_result)


def run(args: argparse.Namespace) -> int:
    """Run a client command; its exit status. Never raises for network or server trouble."""
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        with _http(args) as http:
            status: int = args.client(http, args, console)
            return status
    except ClientError as exc:
        console.print(f"smap-stt: {exc}", markup=False)
        return 2
    except KeyboardInterrupt:
        console.print("smap-stt: interrupted; the jobs keep running on the server", markup=False)
        return 130


def _http(args: argparse.Namespace) -> httpx.Client:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.Client(
        base_url=args.server.rstrip("/"),
        headers=headers,
        timeout=httpx.Timeout(60.0, connect=10.0),
    )


def _request(http: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request; every way it can fail without an answer becomes one clear line."""
    try:
        return http.request(method, url, **kwargs)
    except httpx.ConnectError:
        raise ClientError(f"cannot reach the server at {http.base_url} (is it running?)") from None
    except httpx.TimeoutException:
        raise ClientError(f"the server at {http.base_url} did not answer in time") from None
    except httpx.TransportError as exc:
        raise ClientError(f"the connection to {http.base_url} failed: {exc}") from None


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    detail = body.get("detail") if isinstance(body, dict) else None
    return f"{detail} (HTTP {response.status_code})" if detail else f"HTTP {response.status_code}"


def _fail_on_auth(response: httpx.Response) -> None:
    if response.status_code in (401, 403):
        raise ClientError(f"the server refused the request: {_detail(response)}; check --api-key")


# --- submit --------------------------------------------------------------------------------


class _Reading:
    """A file whose reads advance a progress bar (httpx streams the multipart body from it)."""

    def __init__(self, handle: IO[bytes], progress: Progress, task: TaskID) -> None:
        self._handle, self._progress, self._task = handle, progress, task

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._progress.advance(self._task, len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self._handle.seek(offset, whence)
        if offset == 0 and whence == 0:
            self._progress.update(self._task, completed=0)
        return position

    def tell(self) -> int:
        return self._handle.tell()

    def fileno(self) -> int:
        return self._handle.fileno()


def _fields(args: argparse.Namespace) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name in ("language", "model", "priority"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = str(value)
    for option in args.option:
        name, sep, value = option.partition("=")
        if not sep or not name:
            raise ClientError(f"--option {option!r} is not NAME=VALUE")
        fields[name.strip()] = value
    return fields


def _submit(http: httpx.Client, args: argparse.Namespace, console: Console) -> int:
    fields = _fields(args)
    jobs: list[_Job] = []
    refused: list[str] = []
    with _upload_progress(console) as progress:
        for path in args.files:
            problem = _local_problem(path)
            if problem:
                refused.append(f"{path}: {problem}")
                console.print(f"smap-stt: {path} refused: {problem}", markup=False)
                continue
            task = progress.add_task(path.name, total=path.stat().st_size)
            with path.open("rb") as handle:
                response = _request(
                    http,
                    "POST",
                    "/api/v1/tasks/upload",
                    files={"file": (path.name, _Reading(handle, progress, task))},
                    data=fields,
                )
            _fail_on_auth(response)
            if response.status_code != 201:
                refused.append(f"{path}: {_detail(response)}")
                progress.update(task, description=f"{path.name} (refused)")
                console.print(f"smap-stt: {path} refused: {_detail(response)}", markup=False)
                continue
            job_id = str(response.json()["job_id"])
            jobs.append(_Job(job_id, path.name))
            print(f"{job_id}\t{path}", flush=True)
    failed: list[str] = []
    if args.wait and jobs:
        failed = _follow(http, jobs, args, console)
    return 1 if refused or failed else 0


def _local_problem(path: Path) -> str:
    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a regular file"
    if path.stat().st_size == 0:
        return "the file is empty"
    return ""


def _upload_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]upload[/] {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


# --- wait ----------------------------------------------------------------------------------


def _wait(http: httpx.Client, args: argparse.Namespace, console: Console) -> int:
    jobs = [_Job(job_id, job_id) for job_id in args.job_ids]
    return 1 if _follow(http, jobs, args, console) else 0


def _follow(
    http: httpx.Client, jobs: Sequence[_Job], args: argparse.Namespace, console: Console
) -> list[str]:
    """Poll every job until it is final, one bar each; write the transcripts asked for.
    Returns a line for each job that did not complete."""
    failed: list[str] = []
    pending = list(jobs)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[state]}"),
        console=console,
    ) as progress:
        for job in jobs:
            job.task = progress.add_task(job.name, total=100, state="")
        while pending:
            for job in list(pending):
                response = _request(http, "GET", f"/api/v1/tasks/{quote(job.job_id)}/status")
                _fail_on_auth(response)
                if response.status_code == 404:
                    failed.append(f"job {job.job_id}: no such job")
                    _show(progress, job, "not found")
                    pending.remove(job)
                    continue
                if response.status_code != 200:
                    raise ClientError(f"status of job {job.job_id}: {_detail(response)}")
                job.status = response.json()
                if job.name == job.job_id and job.status.get("filename"):
                    job.name = f"{job.status['filename']} ({job.job_id[:8]})"
                _show(progress, job, _state(job.status))
                if job.status.get("status") in FINAL:
                    pending.remove(job)
                    line = _finished(http, job, args, console)
                    if line:
                        failed.append(line)
            if pending:
                time.sleep(max(0.1, args.interval))
    for line in failed:
        console.print(f"smap-stt: {line}", markup=False)
    return failed


def _state(status: dict[str, Any]) -> str:
    state = str(status.get("status", "?"))
    if state == "PENDING" and status.get("queue_position") is not None:
        state += f", #{status['queue_position']} in the queue"
    if status.get("chunks_total"):
        state += f", chunk {status.get('chunks_completed', 0)}/{status['chunks_total']}"
    eta = status.get("eta_seconds")
    if state.startswith(("PENDING", "PROCESSING")) and isinstance(eta, int | float):
        state += f", about {_duration(float(eta))} left"
    return state


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def _show(progress: Progress, job: _Job, state: str) -> None:
    assert job.task is not None
    percent = float(job.status.get("progress") or 0.0)
    progress.update(job.task, description=job.name, completed=percent, state=state)


def _finished(
    http: httpx.Client, job: _Job, args: argparse.Namespace, console: Console
) -> str | None:
    status = job.status
    if status.get("status") != "COMPLETED":
        reason = status.get("error_message") or status.get("status", "").lower()
        return f"job {job.job_id} ({job.name}) {status.get('status')}: {reason}"
    if args.format is None and args.out is None:
        return None
    fmt = args.format or "txt"
    try:
        written = _save(http, job.job_id, fmt, args.out or Path("."), status.get("filename"))
    except _NotReady as exc:
        return f"job {job.job_id} ({job.name}): no {fmt} transcript: {exc}"
    print(str(written), flush=True)
    return None


# --- result --------------------------------------------------------------------------------


def _result(http: httpx.Client, args: argparse.Namespace, console: Console) -> int:
    if args.out is not None:
        status = _request(http, "GET", f"/api/v1/tasks/{quote(args.job_id)}/status")
        _fail_on_auth(status)
        if status.status_code != 200:
            console.print(f"smap-stt: job {args.job_id}: {_detail(status)}", markup=False)
            return 1
        try:
            written = _save(http, args.job_id, args.format, args.out, status.json()["filename"])
        except _NotReady as exc:
            console.print(f"smap-stt: job {args.job_id}: {exc}", markup=False)
            return 1
        print(str(written))
        return 0
    try:
        body = _download(http, args.job_id, args.format)
    except _NotReady as exc:
        console.print(f"smap-stt: job {args.job_id}: {exc}", markup=False)
        return 1
    sys.stdout.buffer.write(body)
    sys.stdout.flush()
    return 0


class _NotReady(Exception):
    """The server has no transcript to give (job unknown, not COMPLETED)."""


def _download(http: httpx.Client, job_id: str, fmt: str) -> bytes:
    response = _request(
        http, "GET", f"/api/v1/tasks/{quote(job_id)}/download", params={"format": fmt}
    )
    _fail_on_auth(response)
    if response.status_code in (404, 409, 422):
        raise _NotReady(_detail(response))
    if response.status_code != 200:
        raise ClientError(f"download of job {job_id}: {_detail(response)}")
    return response.content


def _save(http: httpx.Client, job_id: str, fmt: str, out: Path, filename: object) -> Path:
    body = _download(http, job_id, fmt)
    stem = Path(str(filename or job_id)).stem or job_id
    target = out / f"{stem}.{_EXTENSIONS.get(fmt, fmt)}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
    except OSError as exc:
        raise ClientError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target
