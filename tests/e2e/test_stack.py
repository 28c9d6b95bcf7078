"""`make stack` (scripts/stack.py): the whole distributed stack from one command, used as a
person would: start it, send a job, stop it with Ctrl-C (or a supervisor's SIGTERM)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import Clip, _delete_topology
from tests.procs import ROOT, upload, wait_final
from tests.servers import free_ports

pytestmark = pytest.mark.timeout(400)

READY = "smap-stt stack is up"


@dataclass
class Stack:
    popen: subprocess.Popen[bytes]
    out_path: Path
    dir: Path
    api_port: int
    s3_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def descendants(self) -> list[psutil.Process]:
        children: list[psutil.Process] = psutil.Process(self.popen.pid).children(recursive=True)
        return children


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path, models_dir: Path) -> Iterator[Stack]:
    """scripts/stack.py running on its defaults (2 API processes, 2 workers), with its own
    ports, data directory and RabbitMQ names; through `make stack` when the test's parameter
    says "make"."""
    tag = uuid.uuid4().hex[:8]
    api_port, mongo_port, s3_port = free_ports(3)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(
            (
                "RABBITMQ_",
                "MONGODB_",
                "MINIO_",
                "API_",
                "WHISPER_",
                "STACK_",
                "WORKERS",
                "MAX_CONCURRENT_JOBS",
            )
        )
    }
    env.update(
        {
            "API_PORT": str(api_port),
            "STACK_DIR": str(tmp_path / "stack"),
            "STACK_MONGO_PORT": str(mongo_port),
            "STACK_S3_PORT": str(s3_port),
            "RABBITMQ_EXCHANGE_NAME": f"test-{tag}",
            "RABBITMQ_QUEUE_NAME": f"test-{tag}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    out_path = tmp_path / "stack.out"
    with out_path.open("wb") as out:
        # A session of its own, like a shell job: Ctrl-C goes to its whole process group.
        command = ["make", "-s", "stack"] if getattr(request, "param", "") == "make" else []
        popen = subprocess.Popen(
            command or [sys.executable, "scripts/stack.py"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = Stack(popen, out_path, tmp_path / "stack", api_port, s3_port)
    seen: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        while READY not in running.output():
            assert popen.poll() is None, f"stack.py exited:\n{running.output()[-4000:]}"
            assert time.monotonic() < deadline, f"stack not up:\n{running.output()[-4000:]}"
            time.sleep(0.2)
        seen = running.descendants()
        yield running
    finally:
        if popen.poll() is None:  # the test failed before stopping it
            popen.kill()
            popen.wait()
        for process in seen:
            if process.is_running():
                process.kill()
        asyncio.run(_delete_topology(f"test-{tag}", f"test-{tag}"))


def _rabbitmq_answers() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError:
        return False
    return True


def _command_lines(processes: list[psutil.Process]) -> list[str]:
    return [" ".join(process.cmdline()) for process in processes]


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_stack_runs_jobs_and_stops_everything(
    stack: Stack, how: str, tiny_clip: Clip, short_clip: Clip
) -> None:
    output = stack.output()
    assert f"API          {stack.url}" in output
    assert f"{stack.url}/docs" in output
    assert f"S3           http://127.0.0.1:{stack.s3_port}" in output
    assert "access key smap-stt  secret key smap-stt-secret" in output
    assert "already running; left alone" in output  # our machines run RabbitMQ
    assert "curl -X POST" in output
    logs = dict(re.findall(r"^    (\S+)\s+(/\S+\.log)$", output, re.MULTILINE))
    assert set(logs) == {"api", "worker-1", "worker-2", "mongodb", "s3"}, output

    children = stack.descendants()
    commands = _command_lines(children)
    workers = [c for c in children if "smap_stt.cli worker" in " ".join(c.cmdline())]
    assert len(workers) == 2, commands
    assert sum("smap_stt.cli api" in c for c in commands) == 1, commands
    assert any("secantusd" in c for c in commands) and any("weed" in c for c in commands)

    with httpx.Client(base_url=stack.url, timeout=60) as client:
        health = client.get("/api/v1/tasks/health")
        assert health.status_code == 200, health.text
        assert health.json()["backends"] == {
            "database": "mongodb",
            "rabbitmq": "rabbitmq",
            "storage": "s3",
        }
        job_id = upload(client, tiny_clip.path, language="en")
        status = wait_final(client, job_id, timeout=120)
        assert status["status"] == "COMPLETED", status
        assert int(status["worker_id"].rsplit(":", 1)[1]) in {w.pid for w in workers}
        result = client.get(f"/api/v1/tasks/{job_id}/result").json()
        assert result["download_url"].startswith(
            f"http://127.0.0.1:{stack.s3_port}/smap-stt/results/{job_id}.json?"
        )

        # A job still running when the stop arrives is finished first (workers stop first,
        # gracefully).
        running = upload(client, short_clip.path, language="en")
        deadline = time.monotonic() + 60
        while client.get(f"/api/v1/tasks/{running}/status").json()["status"] != "PROCESSING":
            assert time.monotonic() < deadline
            time.sleep(0.05)

    started = time.monotonic()
    if how == "ctrl-c":
        os.killpg(stack.popen.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    else:
        stack.popen.send_signal(signal.SIGTERM)  # what a supervisor does
    assert stack.popen.wait(120) == 0, stack.output()[-4000:]
    stopping = time.monotonic() - started
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, _command_lines(alive)

    output = stack.output()
    assert "stack stopped" in output
    order = [line.split()[1] for line in output.splitlines() if line.startswith("stopped ")]
    assert order[:3] in (["worker-1", "worker-2", "api"], ["worker-2", "worker-1", "api"]), order
    assert "(exit code 0)" in output and "killed" not in output, output[-2000:]
    worker_logs = Path(logs["worker-1"]).read_text() + Path(logs["worker-2"]).read_text()
    assert worker_logs.count(f"[job {running}] completed:") == 1
    assert _rabbitmq_answers()  # it was running before: left alone
    print(f"stack stopped in {stopping:.1f} s after {how}")


# --- issue 15: a hard stop leaves nothing behind.
def _wait_gone(processes: list[psutil.Process], timeout: float) -> list[str]:
    """Command lines of the processes still alive after `timeout` s (a zombie is dead: its
    parent died, and no init reaps it in some containers)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
        if not alive or time.monotonic() > deadline:
            return [" ".join(p.cmdline()) for p in alive if _still_there(p)]
        time.sleep(0.2)


def _still_there(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("stack", ["script", "make"], indirect=True)
def test_a_sigkilled_stack_takes_everything_with_it(
    stack: Stack, request: pytest.FixtureRequest
) -> None:
    """scripts/stack.py killed by SIGKILL: its children asked for SIGTERM when it dies. `make
    stack` killed so: make passes nothing on, yet scripts/stack.py asked the same of make and
    stops every child it started."""
    children = stack.descendants()
    commands = _command_lines(children)
    if "make" in request.node.name:
        assert any("scripts/stack.py" in c for c in commands), commands
    assert any("secantusd" in c for c in commands) and any("weed" in c for c in commands)
    assert sum("smap_stt.cli worker" in c for c in commands) == 2, commands
    stack.popen.kill()  # SIGKILL: no handler, no cleanup
    stack.popen.wait(10)
    assert _wait_gone(children, timeout=90) == []
