"""Module-scoped services and a webhook receiver for the operations tests."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import _delete_topology
from tests.procs import Service, base_env, free_port

SECRET = "test-webhook-secret"


@pytest.fixture(scope="module")
def module_service(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[Callable[..., Service]]:
    made: list[Service] = []

    def make(**env: object) -> Service:
        data_dir = tmp_path_factory.mktemp("svc")
        port = free_port()
        svc = Service(base_env(data_dir, API_PORT=port, **env), data_dir, port)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.stop_all()
        asyncio.run(
            _delete_topology(svc.env["RABBITMQ_EXCHANGE_NAME"], svc.env["RABBITMQ_QUEUE_NAME"])
        )


def scrape(url: str) -> dict[str, float]:
    """`name{labels}` → value, from a Prometheus text exposition."""
    values: dict[str, float] = {}
    for line in httpx.get(url, timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def total(values: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    found = 0.0
    for key, value in values.items():
        if key == name or key.startswith(name + "{"):
            have = dict(re.findall(r'(\w+)="([^"]*)"', key))
            if all(have.get(k) == v for k, v in labels.items()):
                found += value
    return found


def exported_names(url: str) -> set[str]:
    """Every metric name an endpoint exports, with or without samples yet."""
    names: set[str] = set()
    for line in httpx.get(url, timeout=10).text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            parts = line.split()
            names.add(parts[2])
            if line.startswith("# TYPE ") and parts[3] == "histogram":
                names.update(parts[2] + suffix for suffix in ("_bucket", "_sum", "_count"))
            if line.startswith("# TYPE ") and parts[3] == "counter":
                names.add(parts[2] if parts[2].endswith("_total") else parts[2] + "_total")
        elif line:
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@dataclass
class Hit:
    at: float
    headers: dict[str, str]
    body: bytes

    def verified(self) -> bool:
        timestamp = self.headers["x-smap-timestamp"]
        expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + self.body, hashlib.sha256)
        return hmac.compare_digest(
            self.headers["x-smap-signature"], "sha256=" + expected.hexdigest()
        )

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook receiver on loopback that answers with the scripted status codes (then 200);
    `hang` seconds: wait that long before answering."""

    port: int
    answers: list[int] = field(default_factory=list)
    hang: float = 0.0
    hits: list[Hit] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?token=s3cret"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.hits.append(
                    Hit(time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body)
                )
                if receiver.hang:
                    time.sleep(receiver.hang)
                code = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def wait_hits(self, count: int, timeout: float = 60) -> list[Hit]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.hits) >= count:
                return list(self.hits)
            time.sleep(0.1)
        raise AssertionError(f"{len(self.hits)} webhook(s) arrived, expected {count}")


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(port: int | None = None, **options: Any) -> Receiver:
        made.append(Receiver(port or free_port(), **options))
        return made[-1]

    yield make
    for item in made:
        item.stop()
