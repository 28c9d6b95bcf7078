"""Issue 10 on the task API, against real processes: Idempotency-Key under real concurrency
(two API processes, five simultaneous uploads), DEDUP, queue position falling as the jobs
ahead finish, and paging through more than 100 jobs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from smap_stt.jobs import Job, JobStatus, new_job_id, utcnow
from smap_stt.store.sqlite import SqliteJobStore
from tests.conftest import Clip
from tests.procs import Service, upload, wait_final
from tests.speech import cached_speech

ServiceFactory = Callable[..., Service]


def _post(url: str, path: Path, key: str | None, name: str = "clip.wav") -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    with path.open("rb") as audio:
        return httpx.post(
            f"{url}/api/v1/tasks/upload",
            files={"file": (name, audio)},
            data={"language": "en"},
            headers=headers,
            timeout=60,
        )


def test_idempotency_key_makes_one_job_under_concurrency(
    service: ServiceFactory, tiny_clip: Clip
) -> None:
    svc = service(API_WORKERS=2)  # two processes race on the store's unique index
    svc.start("api")  # no worker: the jobs stay PENDING, which is all this test needs
    with ThreadPoolExecutor(5) as pool:
        replies = list(pool.map(lambda _: _post(svc.url, tiny_clip.path, "order-17"), range(5)))
    assert sorted(r.status_code for r in replies) == [200, 200, 200, 200, 201], [
        r.text for r in replies
    ]
    job_ids = {r.json()["job_id"] for r in replies}
    assert len(job_ids) == 1
    with svc.client() as client:
        listed = client.get("/api/v1/tasks").json()
        assert listed["total"] == 1 and listed["jobs"][0]["job_id"] in job_ids

        again = _post(svc.url, tiny_clip.path, "order-17")
        assert again.status_code == 200 and again.json()["job_id"] in job_ids
        assert "already created" in again.json()["message"]

        other = cached_speech("A different file under the same key.")
        conflict = _post(svc.url, other, "order-17")
        assert conflict.status_code == 409
        assert "another file" in conflict.json()["detail"]
        assert next(iter(job_ids)) in conflict.json()["detail"]

        fresh = _post(svc.url, other, "order-18")
        assert fresh.status_code == 201 and fresh.json()["job_id"] not in job_ids
        unkeyed = [_post(svc.url, tiny_clip.path, None) for _ in range(2)]
        assert [r.status_code for r in unkeyed] == [201, 201]
        assert unkeyed[0].json()["job_id"] != unkeyed[1].json()["job_id"]
        assert client.get("/api/v1/tasks").json()["total"] == 4

        bad = client.post(
            "/api/v1/tasks/upload",
            files={"file": ("a.wav", tiny_clip.path.read_bytes())},
            headers={"Idempotency-Key": "k" * 300},
        )
        assert bad.status_code == 422 and "Idempotency-Key" in bad.json()["detail"]


def test_queue_position_falls_as_jobs_ahead_finish(
    service: ServiceFactory, tiny_clip: Clip
) -> None:
    svc = service()
    svc.start("api")
    with svc.client() as client:
        ids = [upload(client, tiny_clip.path, language="en") for _ in range(3)]
        urgent = upload(client, tiny_clip.path, language="en", priority=9)
        last = ids[-1]

        def standing(job_id: str) -> dict[str, Any]:
            status: dict[str, Any] = client.get(f"/api/v1/tasks/{job_id}/status").json()
            return status

        assert [standing(job_id)["queue_position"] for job_id in ids] == [1, 2, 3]
        assert standing(urgent)["queue_position"] == 0
        # Nothing measured on this deployment yet: no estimate rather than a made-up one.
        assert standing(last)["eta_seconds"] is None

        svc.start("worker")
        seen: list[int] = []
        etas: list[object] = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            status = standing(last)
            if status["status"] != "PENDING":
                assert status["queue_position"] is None
                break
            if not seen or seen[-1] != status["queue_position"]:
                seen.append(status["queue_position"])
                etas.append(status["eta_seconds"])
            time.sleep(0.05)
        # (the worker may have taken the urgent job before the first look: 3 or 2 first)
        assert seen[0] in (2, 3) and seen[-1] == 0 and len(seen) >= 2, seen
        assert seen == sorted(seen, reverse=True), seen
        # Once a job has finished, the estimate exists and is positive.
        assert any(isinstance(eta, float) and eta > 0 for eta in etas[1:]), etas
        final = wait_final(client, last)
        assert final["status"] == "COMPLETED"
        assert final["queue_position"] is None and final["eta_seconds"] is None


def test_paging_through_more_than_100_jobs(service: ServiceFactory, tiny_clip: Clip) -> None:
    svc = service()
    svc.start("api")
    start = utcnow() - timedelta(hours=1)

    async def fill() -> None:  # created in the store directly: the API lists what it finds
        store = SqliteJobStore(Path(svc.env["SQLITE_PATH"]))
        await store.open()
        try:
            for index in range(130):
                job = Job(
                    id=new_job_id(),
                    filename=f"f{index:03d}.wav",
                    language="en",
                    model="base",
                    audio_key="uploads/x.wav",
                    created_at=start + timedelta(seconds=index),
                    status=JobStatus.FAILED if index % 10 == 0 else JobStatus.PENDING,
                )
                await store.create(job)
        finally:
            await store.close()

    asyncio.run(fill())
    with svc.client() as client:
        upload(client, tiny_clip.path)  # and one through the API: the newest
        seen: list[str] = []
        offset: int | None = 0
        while offset is not None:
            page = client.get("/api/v1/tasks", params={"limit": 100, "offset": offset}).json()
            assert page["total"] == 131 and page["limit"] == 100
            seen += [job["filename"] for job in page["jobs"]]
            offset = page["next_offset"]
        assert len(seen) == 131 == len(set(seen))
        assert seen[0] == tiny_clip.path.name
        assert seen[1:] == [f"f{index:03d}.wav" for index in reversed(range(130))]
        clamped = client.get("/api/v1/tasks", params={"limit": 500}).json()  # issue 9: clamped
        assert (clamped["limit"], clamped["count"], clamped["next_offset"]) == (100, 100, 100)

        failed = client.get("/api/v1/tasks", params={"status": "FAILED", "offset": 10}).json()
        assert failed["total"] == 13 and failed["count"] == 3 and failed["next_offset"] is None
        assert [job["filename"] for job in failed["jobs"]] == ["f020.wav", "f010.wav", "f000.wav"]
        beyond = client.get("/api/v1/tasks", params={"offset": 500}).json()
        assert beyond["count"] == 0 and beyond["total"] == 131
        assert client.get("/api/v1/tasks", params={"offset": -1}).status_code == 422


@pytest.mark.timeout(240)
def test_dedup_completes_an_identical_upload_at_once(
    service: ServiceFactory, tiny_clip: Clip
) -> None:
    svc = service(DEDUP="true")
    svc.start("serve")
    with svc.client() as client:
        first = upload(client, tiny_clip.path, language="en")
        assert wait_final(client, first)["status"] == "COMPLETED"
        original = client.get(f"/api/v1/tasks/{first}/result").json()

        response = client.post(
            "/api/v1/tasks/upload",
            files={"file": ("copy.wav", tiny_clip.path.read_bytes())},
            data={"language": "en"},
        )
        assert response.status_code == 201
        assert "completed at once" in response.json()["message"]
        second = response.json()["job_id"]
        status = client.get(f"/api/v1/tasks/{second}/status").json()
        assert status["status"] == "COMPLETED" and status["deduplicated_from"] == first
        result = client.get(f"/api/v1/tasks/{second}/result").json()
        assert result["transcription"] == original["transcription"]
        assert result["filename"] == "copy.wav"
        assert client.get(f"/api/v1/tasks/{second}/download").json()["job_id"] == second

        # Other options (another language) are another transcript: transcribed again.
        third = upload(client, tiny_clip.path, language="de")
        assert client.get(f"/api/v1/tasks/{third}/status").json()["deduplicated_from"] is None
        # Each job owns its files: deleting the first leaves the copy whole.
        assert client.delete(f"/api/v1/tasks/{first}").status_code == 200
        assert client.get(f"/api/v1/tasks/{second}/download").status_code == 200
        assert wait_final(client, third)["status"] == "COMPLETED"
    log = svc.procs[0].log()
    assert log.count("completed:") == 2  # the first and the third were transcribed, not the copy
