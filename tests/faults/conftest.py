from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest


def _eval(expression: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "eval", expression], check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


@pytest.fixture
def consumer_timeout() -> Iterator[int]:
    """Lower the broker's consumer timeout to 3 s for one test, then put it back."""
    before = _eval("application:get_env(rabbit, consumer_timeout).")
    _eval("application:set_env(rabbit, consumer_timeout, 3000).")
    try:
        yield 3000
    finally:
        if before.startswith("{ok,"):
            _eval(f"application:set_env(rabbit, consumer_timeout, {before[4:-1]}).")
        else:
            _eval("application:unset_env(rabbit, consumer_timeout).")
