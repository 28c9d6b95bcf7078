from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import pytest

from smap_stt.stt.local_models import ensure_bundled_model
from tests.procs import ROOT, Service, base_env, free_port
from tests.speech import cached_speech, cached_speech_paragraphs, paragraphs

pytest_plugins = ["tests.servers_plugin"]

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    ensure_bundled_model(ROOT / "models")
    return ROOT / "models"


async def _delete_topology(exchange: str, queue: str) -> None:
    await delete_topology(AMQP_URL, exchange, queue)


async def delete_topology(url: str, exchange: str, queue: str) -> None:
    """Delete the queues and exchanges smap-stt declares for these names."""
    connection = await aio_pika.connect(url)
    async with connection:
        names = [queue, f"{queue}.chunks", f"{queue}.dead", f"{queue}.dead-events"]
        for lane in (queue, f"{queue}.chunks"):
            names += [f"{lane}.retry.{delay}s" for delay in (1, 2, 5, 30, 120)]
        for name in names:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
        for name in (exchange, f"{exchange}.dlx"):
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.exchange_delete(name)


@pytest.fixture
def service(tmp_path: Path, models_dir: Path) -> Iterator[Callable[..., Service]]:
    """Make a `Service` (its own data dir, port and RabbitMQ names); everything it started is
    stopped, and its queues deleted, at the end of the test."""
    made: list[Service] = []

    def make(**env: object) -> Service:
        data_dir = tmp_path / f"svc{len(made)}"
        port = free_port()
        svc = Service(base_env(data_dir, API_PORT=port, **env), data_dir, port)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.stop_all()
        asyncio.run(
            delete_topology(
                AMQP_URL, svc.env["RABBITMQ_EXCHANGE_NAME"], svc.env["RABBITMQ_QUEUE_NAME"]
            )
        )


@dataclass(frozen=True)
class Clip:
    path: Path
    text: str


@pytest.fixture(scope="session")
def english() -> list[str]:
    return paragraphs("english")


@pytest.fixture(scope="session")
def tiny_clip() -> Clip:
    """A few seconds of speech: for tests that need many jobs."""
    text = "The quick brown fox jumps over the lazy dog."
    return Clip(cached_speech(text), text)


@pytest.fixture(scope="session")
def short_clip(english: list[str]) -> Clip:
    """About 18 s of English speech."""
    return Clip(cached_speech(english[0]), english[0])


@pytest.fixture(scope="session")
def long_clip(english: list[str]) -> Clip:
    """About 75 s of English speech: long enough to see progress move and to interrupt."""
    texts = [*english, *paragraphs("long")[:1]]
    return Clip(cached_speech_paragraphs(texts), " ".join(texts))
