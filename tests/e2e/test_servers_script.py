"""`python tests/servers.py DIR`, as docs/DEPLOYMENT.md shows it: runs both storage servers,
stops them on Ctrl-C or SIGTERM, and takes them with it when it is killed."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.procs import ROOT

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def script(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[psutil.Process]]]:
    popen = subprocess.Popen(
        [sys.executable, "tests/servers.py", str(tmp_path / "servers")],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    children: list[psutil.Process] = []
    try:
        assert popen.stdout is not None
        lines = [popen.stdout.readline() for _ in range(2)]
        assert lines[0].startswith("MONGODB_URL=mongodb://127.0.0.1:"), "".join(lines)
        assert lines[1].startswith("MINIO_ENDPOINT=127.0.0.1:"), lines
        children = psutil.Process(popen.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert "secantusd" in names and "weed" in names, names
        yield popen, children
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def _alive(processes: list[psutil.Process], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(" ".join(process.cmdline()))
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_stop_signal_stops_both_servers(
    script: tuple[subprocess.Popen[str], list[psutil.Process]], signum: signal.Signals
) -> None:
    popen, children = script
    popen.send_signal(signum)
    assert popen.wait(60) == 0
    assert _alive(children, timeout=5) == []


def test_killed_script_takes_its_servers_with_it(
    script: tuple[subprocess.Popen[str], list[psutil.Process]],
) -> None:
    popen, children = script
    popen.kill()
    popen.wait(10)
    assert _alive(children, timeout=30) == []
