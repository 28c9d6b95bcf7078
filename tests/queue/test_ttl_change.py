"""A work queue whose message TTL no longer matches the settings (JOB_TIMEOUT or
QUEUE_MESSAGE_TTL changed after it was declared) stops the API and the workers with one clear
message instead of keeping the old TTL for ever; the original system's queue, with no TTL at
all, is still used as it is. Against the real RabbitMQ, each test with queue names of its own."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from smap_stt.backends import make_queue
from smap_stt.config import Settings
from smap_stt.errors import ConfigurationError
from tests.conftest import _delete_topology
from tests.procs import base_env

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture
async def names() -> AsyncIterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:8]
    values = {"RABBITMQ_EXCHANGE_NAME": f"ttl-{tag}", "RABBITMQ_QUEUE_NAME": f"ttl-{tag}"}
    yield values
    await _delete_topology(values["RABBITMQ_EXCHANGE_NAME"], values["RABBITMQ_QUEUE_NAME"])


def _settings(names: dict[str, str], **values: Any) -> Settings:
    return Settings(
        _env_file=None,
        rabbitmq_exchange_name=names["RABBITMQ_EXCHANGE_NAME"],
        rabbitmq_queue_name=names["RABBITMQ_QUEUE_NAME"],
        retry_delays=[1],
        **values,
    )


async def _open_and_close(settings: Settings) -> None:
    queue = make_queue(settings, embedded=False)
    try:
        await queue.open()
    finally:
        await queue.close()


async def test_a_changed_job_timeout_refuses_to_start(names: dict[str, str]) -> None:
    await _open_and_close(_settings(names, job_timeout=100))  # TTL 2400 s
    with pytest.raises(ConfigurationError) as refused:
        await _open_and_close(_settings(names, job_timeout=200))
    message = str(refused.value)
    queue = names["RABBITMQ_QUEUE_NAME"]
    assert f"queue {queue} exists with x-message-ttl 2400000 ms" in message
    assert "ask for 4800000 ms" in message and "JOB_TIMEOUT=200" in message
    assert "QUEUE_MESSAGE_TTL=2400" in message  # how to keep it
    assert f"rabbitmqctl delete_queue {queue}" in message and "DEPLOYMENT.md" in message


async def test_a_changed_queue_message_ttl_refuses_and_the_old_value_still_works(
    names: dict[str, str],
) -> None:
    await _open_and_close(_settings(names, queue_message_ttl=600))
    with pytest.raises(ConfigurationError, match="QUEUE_MESSAGE_TTL=900"):
        await _open_and_close(_settings(names, queue_message_ttl=900))
    await _open_and_close(_settings(names, queue_message_ttl=600))
    # The value the message offers keeps the queue: 24 × JOB_TIMEOUT = 600 is the same TTL.
    await _open_and_close(_settings(names, job_timeout=25, queue_message_ttl=600))


async def test_the_original_queue_without_ttl_is_used_with_a_warning(
    names: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(
            names["RABBITMQ_QUEUE_NAME"], durable=True, arguments={"x-max-priority": 10}
        )
    with caplog.at_level(logging.WARNING, logger="smap_stt.queue.rabbitmq"):
        queue = make_queue(_settings(names), embedded=False)
        try:
            await queue.open()
            await queue.ping()
        finally:
            await queue.close()
    assert "exists with other arguments" in caplog.text


@pytest.mark.parametrize("command", ["worker", "api"])
async def test_the_commands_exit_2_with_one_line(
    names: dict[str, str], tmp_path: Path, command: str
) -> None:
    await _open_and_close(_settings(names, job_timeout=100))
    env = base_env(tmp_path, **names, JOB_TIMEOUT=300, API_PORT=1)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "smap_stt.cli", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"smap-stt: queue {names['RABBITMQ_QUEUE_NAME']} exists"), last
