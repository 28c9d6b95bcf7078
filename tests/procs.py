"""Run smap-stt's real commands (`serve`, `api`, `worker`) as processes for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
SMAP_STT = [sys.executable, "-m", "smap_stt.cli"]
FINAL = {"COMPLETED", "FAILED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def base_env(data_dir: Path, **overrides: Any) -> dict[str, str]:
    """Environment for a service under test: its own data dirs and its own RabbitMQ names, so
    tests never see each other's messages."""
    tag = uuid.uuid4().hex[:8]
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RABBITMQ_", "MONGODB_", "MINIO_", "API_", "WHISPER_"))
    }
    env.update(
        {
            "SQLITE_PATH": str(data_dir / "jobs.sqlite3"),
            "BLOB_DIR": str(data_dir / "blobs"),
            "TEMP_DIR": str(data_dir / "tmp"),
            "WHISPER_MODELS_DIR": str(ROOT / "models"),
            "RABBITMQ_EXCHANGE_NAME": f"test-{tag}",
            "RABBITMQ_QUEUE_NAME": f"test-{tag}",
            "DEFAULT_LANGUAGE": "en",
            "LOG_LEVEL": "INFO",
            "MAX_CONCURRENT_JOBS": "1",
            "SHUTDOWN_GRACE_SECONDS": "30",
            "RETRY_DELAYS": "1",
            "OUTBOX_INTERVAL": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({key: str(value) for key, value in overrides.items()})
    return env


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [*SMAP_STT, *self.args], env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.popen is not None and self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited early:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no {text!r} in its log:\n{self.log()[-3000:]}")

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 60) -> int:
        if self.popen is None:
            return 0
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"{self.name} did not stop within {timeout} s") from None

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait()


@dataclass
class Service:
    """A running smap-stt (one `serve`, or one `api` plus workers) and a client for it."""

    env: dict[str, str]
    data_dir: Path
    port: int
    procs: list[Proc] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def start(self, command: str, *, name: str | None = None, **env: Any) -> Proc:
        proc_env = {**self.env, **{key: str(value) for key, value in env.items()}}
        name = name or f"{command}{len(self.procs)}"
        proc = Proc(name, [command], proc_env, self.data_dir / "logs" / f"{name}.log").start()
        self.procs.append(proc)
        if command in ("serve", "api"):
            wait_http(f"{self.url}/docs", proc)
        if command in ("serve", "worker"):
            proc.wait_for_log("consuming from", timeout=120)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(AssertionError):
                proc.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log()[-4000:]}" for p in self.procs)

    def cli(self, *args: str) -> str:
        """Run `smap-stt ARGS` with this service's settings; its output (it must succeed)."""
        result = subprocess.run(
            [*SMAP_STT, *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout


ServiceFactory = Callable[..., Service]
"""The `service` fixture: makes a Service from settings (environment variables)."""


def wait_http(url: str, proc: Proc | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            if proc is not None and proc.popen is not None and proc.popen.poll() is not None:
                raise AssertionError(f"{proc.name} exited:\n{proc.log()[-3000:]}") from None
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def upload(client: httpx.Client, path: Path, **fields: Any) -> str:
    with path.open("rb") as audio:
        response = client.post(
            "/api/v1/tasks/upload",
            files={"file": (path.name, audio)},
            data={key: str(value) for key, value in fields.items()},
        )
    assert response.status_code == 201, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def wait_final(client: httpx.Client, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status: dict[str, Any] = client.get(f"/api/v1/tasks/{job_id}/status").json()
        if status["status"] in FINAL:
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not final within {timeout} s: {status}")


def wait_running(
    client: httpx.Client, job_id: str, *, above: float = -1, timeout: float = 120
) -> dict[str, Any]:
    """Wait until the job is PROCESSING with progress above `above` (-1: just running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status: dict[str, Any] = client.get(f"/api/v1/tasks/{job_id}/status").json()
        if status["status"] == "PROCESSING" and status["progress"] > above:
            return status
        assert status["status"] in ("PENDING", "PROCESSING"), status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never ran past {above} %")


def completions(*procs: Proc) -> Counter[str]:
    """How many times each job was logged as completed, across the given processes."""
    seen: Counter[str] = Counter()
    for proc in procs:
        seen.update(re.findall(r"\[job ([0-9a-f-]{36})\] completed:", proc.log()))
    return seen


def cpu_after(
    process: psutil.Process, *, idle: float = 0.05, timeout: float = 180
) -> tuple[float, float]:
    """Wait until `process` is idle (under `idle` cores over half a second); the wall seconds
    that took and the CPU seconds it used meanwhile. CPU seconds are what a loaded machine
    cannot blur: the work left behind has to run sooner or later."""
    started, used = time.monotonic(), sum(process.cpu_times()[:2])
    while True:
        before = sum(process.cpu_times()[:2])
        time.sleep(0.5)
        if sum(process.cpu_times()[:2]) - before < idle * 0.5:
            return time.monotonic() - started - 0.5, sum(process.cpu_times()[:2]) - used
        assert time.monotonic() - started < timeout, "the decoding threads never stopped"
