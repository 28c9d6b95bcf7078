"""A second RabbitMQ node of the tests' own, for the destructive broker cases (restart, a lowered
consumer timeout): the shared broker on 5672 is never stopped or reconfigured.

The node has its own name, AMQP and distribution ports, data and log directories, plugins file
and Erlang cookie (HOME), so a killed test run leaves the shared broker exactly as it was; the
node's files live under the test's temporary directory and the node is stopped at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

from tests.procs import free_port


class RabbitNodeError(RuntimeError):
    pass


def _tool(name: str) -> str:
    # Debian's /usr/sbin wrappers switch to the `rabbitmq` user and its cookie; the node and
    # its CLI calls must share ours.
    direct = Path("/usr/lib/rabbitmq/bin") / name
    if direct.exists():
        return str(direct)
    found = shutil.which(name)
    if found is None:
        raise RabbitNodeError(f"{name} is not installed (make rabbitmq installs it)")
    return found


class RabbitNode:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.name = f"smaptest-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self._popen: subprocess.Popen[bytes] | None = None
        base.mkdir(parents=True, exist_ok=True)
        plugins = base / "enabled_plugins"
        plugins.write_text("[].\n")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")},
            "HOME": str(base),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_PID_FILE": str(base / "node.pid"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        }

    def start(self, timeout: float = 120) -> RabbitNode:
        log = (self.base / "server.log").open("ab")
        self._popen = subprocess.Popen(
            [_tool("rabbitmq-server")],
            env=self.env,
            cwd=self.base,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._await_startup(timeout)
            self._wait_port(timeout=30)
        except (RabbitNodeError, subprocess.TimeoutExpired) as exc:
            self.stop()
            tail = (self.base / "server.log").read_text(errors="replace")[-2000:]
            raise RabbitNodeError(f"the test RabbitMQ node did not start: {exc}\n{tail}") from exc
        return self

    def _await_startup(self, timeout: float) -> None:
        # `await_startup` waits for a booting node but fails at once while the node has not yet
        # registered with epmd, which a fresh VM's first seconds can take: ask again until then.
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                self.ctl(
                    "await_startup",
                    "--timeout",
                    str(max(1, int(remaining))),
                    timeout=remaining + 10,
                )
                return
            except RabbitNodeError:
                exited = self._popen is not None and self._popen.poll() is not None
                if exited or time.monotonic() + 1 > deadline:
                    raise
                time.sleep(1)

    def _wait_port(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RabbitNodeError(f"port {self.port} did not open")

    def ctl(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            [_tool("rabbitmqctl"), "-n", self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RabbitNodeError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout.strip()

    def logs(self) -> list[Path]:
        return sorted((self.base / "log").glob("*.log"))

    def restart_app(self, down_seconds: float = 2) -> None:
        """Stop the broker application (every connection drops) and start it again."""
        self.ctl("stop_app")
        time.sleep(down_seconds)
        self.ctl("start_app")
        self.ctl("await_startup")

    def set_consumer_timeout(self, milliseconds: int | None) -> None:
        """On this node only; None puts the default back."""
        if milliseconds is None:
            self.ctl("eval", "application:unset_env(rabbit, consumer_timeout).")
        else:
            self.ctl("eval", f"application:set_env(rabbit, consumer_timeout, {milliseconds}).")

    def stop(self) -> None:
        if self._popen is None:
            return
        with contextlib.suppress(RabbitNodeError, subprocess.TimeoutExpired):
            self.ctl("stop", timeout=60)
        try:
            self._popen.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self._popen.pid, 9)
            self._popen.wait()
        self._popen = None
