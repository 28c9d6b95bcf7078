"""The unit layer's network guard: no server, no network, not even loopback. Every socket
connect, in the test's process or in a Python process it starts, fails the test, even when the
code under test catches the error (a queue that logs "broker down" and carries on)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

GUARD = Path(__file__).parent / "netguard"


class NetworkUsed(ConnectionRefusedError):
    """Raised instead of connecting; a subclass of what a refused connection raises, so code
    under test takes its ordinary error path."""


@pytest.fixture(autouse=True)
def no_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[str]]:
    """The attempts so far; a test that means to connect (the guard's own test) clears it."""
    attempts: list[str] = []

    def refuse(self: socket.socket, address: Any) -> Any:
        attempts.append(f"connect to {address!r}")
        raise NetworkUsed(f"the unit test layer uses no network (connect to {address!r})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    log = tmp_path_factory.mktemp("netguard") / "attempts.log"
    monkeypatch.setenv("SMAP_NETGUARD_LOG", str(log))
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", f"{GUARD}{os.pathsep}{path}" if path else str(GUARD))
    yield attempts
    if log.exists():
        attempts += log.read_text().splitlines()
    if attempts:
        pytest.fail("the unit layer must not use the network: " + "; ".join(attempts))
