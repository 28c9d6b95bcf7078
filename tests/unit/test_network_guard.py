"""The guard itself: a connect fails, here and in a child process, and is reported."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.conftest import NetworkUsed


def test_a_loopback_connect_is_refused_and_recorded(no_network: list[str]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with pytest.raises(NetworkUsed):
            socket.create_connection(listener.getsockname(), timeout=1)
    assert no_network and "127.0.0.1" in no_network[0]
    no_network.clear()  # expected here; any other test with an attempt fails


def test_a_child_process_connect_is_recorded(no_network: list[str]) -> None:
    program = "import socket; socket.create_connection(('127.0.0.1', 9), timeout=1)"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode != 0 and "uses no network" in done.stderr
    log = Path(os.environ["SMAP_NETGUARD_LOG"])
    assert "('127.0.0.1', 9)" in log.read_text()
    log.unlink()  # expected here
