"""The limit for this stack: a bare FastAPI endpoint that only streams an upload to disk."""

from __future__ import annotations

import os
import tempfile
import uuid

from fastapi import FastAPI, Request

app = FastAPI()
SPOOL = tempfile.mkdtemp(prefix="bare-upload-")


@app.post("/upload", status_code=201)
async def upload(request: Request) -> dict[str, str]:
    path = os.path.join(SPOOL, uuid.uuid4().hex)
    with open(path, "wb") as spool:  # noqa: ASYNC230 - the baseline is deliberately naive
        async for chunk in request.stream():
            spool.write(chunk)
    os.unlink(path)
    return {"status": "success"}
