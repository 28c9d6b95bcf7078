"""Loaded by every Python process a unit test starts (tests/unit/conftest.py puts this directory
on PYTHONPATH): a socket connect is refused and written to $SMAP_NETGUARD_LOG, which the test's
fixture reads, so a child process that reaches for the network fails its test too."""

from __future__ import annotations

import os
import socket
from typing import Any

_LOG = os.environ.get("SMAP_NETGUARD_LOG")


def _refuse(self: socket.socket, address: Any) -> Any:
    if _LOG:
        with open(_LOG, "a", encoding="utf-8") as log:
            log.write(f"pid {os.getpid()}: connect to {address!r}\n")
    raise ConnectionRefusedError(f"the unit test layer uses no network (connect to {address!r})")


if _LOG:
    socket.socket.connect = _refuse  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = _refuse  # type: ignore[method-assign,assignment]
