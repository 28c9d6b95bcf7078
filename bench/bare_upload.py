"""The limit for this stack: a bare FastAPI endpoint that only streams an upload to disk, and
the floor any job service on it pays on top (issue 14, item 5).

`app` is bench (d)'s reference. `floor` streams the same way and then does the
least an upload must do before it can answer with a job id that is never lost, none of it
smap-stt's code: the bytes hashed as they arrive (sha256, what idempotency and dedup compare), one
row in SQLite (WAL, synchronous=NORMAL, as the embedded store) and one persistent message
published to RabbitMQ with publisher confirms (aio-pika, as the queue). No multipart
parsing, no probe, no validation: a lower bound for the API, not a rival to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import aio_pika
from fastapi import FastAPI, Request

SPOOL = tempfile.mkdtemp(prefix="bare-upload-")
QUEUE = f"bench-floor-{uuid.uuid4().hex[:8]}"
_state: dict[str, object] = {}


@contextlib.asynccontextmanager
async def _lifespan(_: FastAPI) -> AsyncIterator[None]:
    url = os.environ.get("RABBITMQ_URL") or "amqp://guest:guest@127.0.0.1:5672/"
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel(publisher_confirms=True)
    # x-expires: the broker drops the queue if this process dies before deleting it.
    arguments = {"x-max-priority": 10, "x-expires": 60_000}
    queue = await channel.declare_queue(QUEUE, durable=True, arguments=arguments)
    # One thread owns the connection and runs single statements in autocommit, as the
    # embedded store does (store/sqlite.py).
    db = sqlite3.connect(
        os.path.join(SPOOL, "jobs.sqlite3"), check_same_thread=False, isolation_level=None
    )
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, sha256 TEXT, size INTEGER, doc TEXT)")
    _state.update(channel=channel, db=db, sqlite=ThreadPoolExecutor(max_workers=1))
    try:
        yield
    finally:
        await queue.delete(if_unused=False, if_empty=False)
        await connection.close()
        db.close()


app = FastAPI()
floor = FastAPI(lifespan=_lifespan)


@app.post("/upload", status_code=201)
async def upload(request: Request) -> dict[str, str]:
    path = os.path.join(SPOOL, uuid.uuid4().hex)
    with open(path, "wb") as spool:  # noqa: ASYNC230 - the baseline is deliberately naive
        async for chunk in request.stream():
            spool.write(chunk)
    os.unlink(path)
    return {"status": "success"}


def _insert(job_id: str, digest: str, size: int) -> None:
    db = _state["db"]
    assert isinstance(db, sqlite3.Connection)
    db.execute(
        "INSERT INTO jobs VALUES (?, ?, ?, ?)",
        (job_id, digest, size, json.dumps({"status": "PENDING", "size": size})),
    )


@floor.post("/upload", status_code=201)
async def upload_queued(request: Request) -> dict[str, str]:
    job_id = uuid.uuid4().hex
    path = os.path.join(SPOOL, job_id)
    digest = hashlib.sha256()
    size = 0
    with open(path, "wb") as spool:  # noqa: ASYNC230 - as naive as /upload
        async for chunk in request.stream():
            digest.update(chunk)
            spool.write(chunk)
            size += len(chunk)
    os.unlink(path)
    sqlite = _state["sqlite"]
    assert isinstance(sqlite, ThreadPoolExecutor)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(sqlite, _insert, job_id, digest.hexdigest(), size)
    channel = _state["channel"]
    assert isinstance(channel, aio_pika.abc.AbstractChannel)
    message = aio_pika.Message(
        json.dumps({"job_id": job_id}).encode(),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=job_id,
    )
    await channel.default_exchange.publish(message, routing_key=QUEUE)
    return {"status": "success", "id": job_id}
