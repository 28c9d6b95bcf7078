"""The whole distributed stack on one machine, as one command (`make stack`).

What the original system needed four terminals for: RabbitMQ (left alone if it already runs),
SeaweedFS for S3 and SecantusDB for MongoDB on loopback (data under `STACK_DIR`, default
`.stack/`), the API (`API_WORKERS` processes, default 2) and `WORKERS` worker processes
(default 2) pointed at them. Prints where everything is; on Ctrl-C or SIGTERM stops what it
started, workers first and gracefully (a second Ctrl-C stops the rest at once), and exits 0.

Environment besides the usual settings (see docs/CONFIGURATION.md): `STACK_DIR`, `WORKERS`,
`STACK_MONGO_PORT` (default 27017 if free), `STACK_S3_PORT` (default 8333 if free). The stack
sets MONGODB_URL and MINIO_* itself; anything else set in the environment or `.env` is passed
on to the API and the workers as it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
READY_LINE = "smap-stt stack is up"
S3_ACCESS_KEY = "smap-stt"
S3_SECRET_KEY = "smap-stt-secret"
RABBITMQ_PORT = 5672


class StackError(RuntimeError):
    """Something the stack needs did not start."""


class Stop(Exception):
    """SIGINT or SIGTERM arrived."""


def say(text: str) -> None:
    print(text, flush=True)


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As servers bind: a port whose last connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _pick_port(variable: str, preferred: int) -> int | None:
    """The port named in the environment, else `preferred` if free, else None (any free)."""
    if os.environ.get(variable):
        return int(os.environ[variable])
    return preferred if _port_free(preferred) else None


_PARENT = os.getpid()


def _metrics_port(n: int) -> int:
    """Worker n's WORKER_METRICS_PORT: 9100 + n when free, else any free port."""
    if _port_free(9100 + n):
        return 9100 + n
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _management_ui() -> str:
    """Where RabbitMQ's management UI is, or how to turn it on (a broker that was already
    running is left as it is)."""
    with contextlib.suppress(httpx.HTTPError):
        if httpx.get("http://127.0.0.1:15672/", timeout=3).status_code < 500:
            return "http://127.0.0.1:15672  (user guest, password guest on a default broker)"
    return (
        "not enabled; turn it on with `rabbitmq-plugins enable rabbitmq_management`, "
        "then http://127.0.0.1:15672"
    )


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the stack itself dies without cleaning up, even by SIGKILL
    (Linux). The storage servers get the same from tests/servers.py."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != _PARENT:  # the stack died before the prctl took effect
        os._exit(1)


@dataclass
class Child:
    """A `smap-stt` command run by the stack, its output in a log file."""

    name: str
    command: str
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # A process group of its own: a Ctrl-C in the terminal reaches the stack alone,
            # which then stops the children in order.
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "smap_stt.cli", self.command],
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=_die_with_parent,
            )

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid_text(self) -> str:
        return str(self.popen.pid) if self.popen is not None else "-"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        if self.running:
            assert self.popen is not None
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signum)

    def wait(self, timeout: float) -> bool:
        """Whether it exited within `timeout` seconds."""
        if self.popen is None:
            return True
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            # The whole group: uvicorn's worker processes too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


class Stack:
    def __init__(self) -> None:
        from smap_stt.config import Settings

        self.settings = Settings()
        self.dir = Path(os.environ.get("STACK_DIR") or ROOT / ".stack").resolve()
        self.logs = self.dir / "logs"
        self.workers_count = int(os.environ.get("WORKERS") or 2)
        given = self.settings.model_fields_set
        self.api_workers = self.settings.api_workers if "api_workers" in given else 2
        self.children: list[Child] = []
        self.servers: list[Any] = []  # tests.servers.ServerProcess
        self.started_rabbitmq = False
        self.hurry = False

    # --- start ------------------------------------------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._rabbitmq()
        env = self._servers()
        api = self._child("api", "api", {**env, "API_WORKERS": str(self.api_workers)})
        workers = [
            self._child(
                f"worker-{n}", "worker", {**env, "WORKER_METRICS_PORT": str(_metrics_port(n))}
            )
            for n in range(1, self.workers_count + 1)
        ]
        self._wait_api(api)
        for worker in workers:
            self._wait_log(worker, "consuming from", timeout=300)
        self._print_summary(env, time.monotonic() - started)

    def _rabbitmq(self) -> None:
        if _port_open(RABBITMQ_PORT):
            say(f"RabbitMQ: already running on 127.0.0.1:{RABBITMQ_PORT} (left alone)")
        else:
            say("RabbitMQ: not running; starting it (scripts/ensure-rabbitmq.sh)")
            # The script enables the management plugin on a broker it starts.
            subprocess.run(["bash", str(ROOT / "scripts" / "ensure-rabbitmq.sh")], check=True)
            self.started_rabbitmq = True
        self.management = _management_ui()

    def _servers(self) -> dict[str, str]:
        from tests.servers import start_mongo, start_s3

        say(f"SecantusDB (MongoDB protocol) and SeaweedFS (S3): starting, data in {self.dir}")
        mongo = start_mongo(self.dir / "mongo", _pick_port("STACK_MONGO_PORT", 27017))
        self.servers.append(mongo)
        s3 = start_s3(
            self.dir / "s3",
            _pick_port("STACK_S3_PORT", 8333),
            access_key=S3_ACCESS_KEY,
            secret_key=S3_SECRET_KEY,
        )
        self.servers.append(s3)
        self.mongo, self.s3 = mongo, s3

        env = dict(os.environ)
        env.update(
            {
                "MONGODB_URL": mongo.url,
                "MINIO_ENDPOINT": s3.endpoint,
                "MINIO_ACCESS_KEY": s3.access_key,
                "MINIO_SECRET_KEY": s3.secret_key,
                "MINIO_SECURE": "false",
                "MINIO_REGION": s3.region,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.setdefault("TEMP_DIR", str(self.dir / "tmp"))
        # The workers share the machine's cores: unless told otherwise, one job per core
        # across all of them, and as many threads per job as that leaves.
        cores = os.cpu_count() or 1
        if "max_concurrent_jobs" not in self.settings.model_fields_set:
            env["MAX_CONCURRENT_JOBS"] = str(max(1, cores // self.workers_count))
        if "whisper_cpu_threads" not in self.settings.model_fields_set:
            jobs = int(env.get("MAX_CONCURRENT_JOBS") or self.settings.max_concurrent_jobs)
            env["WHISPER_CPU_THREADS"] = str(max(1, cores // (self.workers_count * jobs)))
        return env

    def _child(self, name: str, command: str, env: dict[str, str]) -> Child:
        child = Child(name, command, env, self.logs / f"{name}.log")
        self.children.append(child)
        child.start()
        return child

    def _wait_api(self, api: Child) -> None:
        url = f"{self.api_url}/api/v1/tasks/health"
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=10).status_code == 200:
                    return
            if not api.running:
                raise StackError(f"the API exited; end of {api.log_path}:\n{api.tail()}")
            if time.monotonic() > deadline:
                raise StackError(f"{url} is not healthy after 120 s; see {api.log_path}")
            time.sleep(0.2)

    def _wait_log(self, child: Child, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in child.log():
            if not child.running:
                raise StackError(f"{child.name} exited; end of {child.log_path}:\n{child.tail()}")
            if time.monotonic() > deadline:
                raise StackError(
                    f"{child.name} did not start within {timeout:.0f} s; see {child.log_path}"
                )
            time.sleep(0.2)

    @property
    def api_url(self) -> str:
        host = self.settings.api_host
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        return f"http://{shown}:{self.settings.api_port}"

    def _print_summary(self, env: dict[str, str], seconds: float) -> None:
        s = self.settings
        workers = [c for c in self.children if c.command == "worker"]
        api = next(c for c in self.children if c.command == "api")
        amqp = f"amqp://{s.rabbitmq_user}@{s.rabbitmq_host}:{s.rabbitmq_port}{s.rabbitmq_vhost}"
        lines = [
            "",
            f"{READY_LINE} ({seconds:.1f} s). Ctrl-C stops it.",
            "",
            f"  API          {self.api_url}   ({self.api_workers} processes, pid {api.pid_text})",
            f"  docs         {self.api_url}/docs",
            f"  health       {self.api_url}/api/v1/tasks/health",
            f"  workers      {len(workers)} processes (pids "
            f"{', '.join(w.pid_text for w in workers)}), "
            f"{env.get('MAX_CONCURRENT_JOBS')} job(s) each, "
            f"{env.get('WHISPER_CPU_THREADS', 'auto')} thread(s) per job",
            f"  RabbitMQ     {amqp}  queue {s.rabbitmq_queue_name}"
            f"{'' if self.started_rabbitmq else '  (already running; left alone)'}",
            f"  RabbitMQ UI  {self.management}",
            f"  metrics      {self.api_url}/metrics (API); workers: "
            + ", ".join(
                f"http://127.0.0.1:{w.env['WORKER_METRICS_PORT']}/metrics" for w in workers
            ),
            f"  MongoDB      {self.mongo.url}  database {s.mongodb_database}   (SecantusDB)",
            f"  S3           {self.s3.url}  bucket {s.minio_bucket}   (SeaweedFS)",
            f"               access key {self.s3.access_key}  secret key {self.s3.secret_key}",
            f"  data         {self.dir}",
            "  logs",
            *(f"    {c.name:<11}{c.log_path}" for c in self.children),
            f"    {'mongodb':<11}{self.mongo.log_path}",
            f"    {'s3':<11}{self.s3.log_path}",
            "",
            "Try it:",
            f"  curl -X POST {self.api_url}/api/v1/tasks/upload -F file=@talk.mp3 -F language=en",
            f"  curl {self.api_url}/api/v1/tasks/<job_id>/status",
            f"  curl {self.api_url}/api/v1/tasks/<job_id>/result",
            "",
        ]
        say("\n".join(lines))

    # --- run and stop -----------------------------------------------------------------------

    def watch(self) -> int:
        """Until a signal (0) or until a process dies on its own (1)."""
        while True:
            for child in self.children:
                if not child.running:
                    say(
                        f"{child.name} exited unexpectedly; end of {child.log_path}:\n"
                        f"{child.tail()}"
                    )
                    return 1
            for server in self.servers:
                if not server.running:
                    say(f"{server.name} exited unexpectedly; see {server.log_path}")
                    return 1
            time.sleep(1)

    def stop(self) -> None:
        """Workers first (they finish or hand back their jobs), then the API, then the
        servers, then RabbitMQ if this script started it."""
        grace = self.settings.shutdown_grace_seconds + 30
        workers = [c for c in self.children if c.command == "worker"]
        others = [c for c in self.children if c.command != "worker"]
        for group, timeout in ((workers, grace), (others, 30.0)):
            for child in group:
                child.signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for child in group:
                while not child.wait(0.2):
                    if self.hurry or time.monotonic() > deadline:
                        say(f"{child.name} did not stop in time: killed")
                        child.kill()
                        break
                if child.popen is not None:
                    say(f"stopped {child.name} (exit code {child.popen.returncode})")
        for server in reversed(self.servers):
            if self.hurry:
                server.kill()
            else:
                server.stop()
            say(f"stopped {server.name}")
        if self.started_rabbitmq:
            subprocess.run(["rabbitmqctl", "shutdown"], check=False, capture_output=True)
            say("stopped RabbitMQ (this script had started it)")


def _raise_stop(signum: int, _: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def _on_signals(handler: Callable[[int, FrameType | None], None]) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)


def _stop_with_parent() -> None:
    """`make stack` runs this script: if make itself is killed (even by SIGKILL), stop as on
    Ctrl-C instead of leaving the stack running as an orphan (Linux)."""
    parent = os.getppid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the prctl took effect
        raise Stop("the process that started the stack is gone")


def main() -> int:
    sys.path.insert(0, str(ROOT))  # tests/servers.py starts the storage servers
    _on_signals(_raise_stop)
    _stop_with_parent()
    stack = Stack()
    code = 0
    try:
        stack.start()
        code = stack.watch()
    except Stop as received:
        say(f"\n{received}: stopping (again to stop at once)")
    except (StackError, subprocess.CalledProcessError, RuntimeError) as exc:
        say(f"stack: {exc}")
        code = 1
    finally:

        def hurry(_signum: int, _frame: FrameType | None) -> None:
            stack.hurry = True

        _on_signals(hurry)
        stack.stop()
    say("stack stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
