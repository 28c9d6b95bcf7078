"""`?format=` on /result and /download, in process (httpx.ASGITransport, SQLite, local files)."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import srt
import webvtt

from smap_stt.api.app import create_app
from smap_stt.api.routes.tasks import FormatName
from smap_stt.backends import Backends, make_backends
from smap_stt.config import Settings
from smap_stt.formats import FORMATS
from smap_stt.jobs import Job, JobStatus

DOCUMENT: dict[str, Any] = {
    "job_id": "done",
    "filename": "bài giảng.mp3",
    "model": "base",
    "task": "transcribe",
    "language": "vi",
    "language_probability": 0.93,
    "duration_seconds": 4.0,
    "text": "Xin chào các bạn. Hôm nay trời đẹp.",
    "segments": [
        {
            "id": 0,
            "start": 0.0,
            "end": 1.6,
            "text": "Xin chào các bạn.",
            "avg_logprob": -0.3,
            "no_speech_prob": 0.01,
            "words": [
                {"start": 0.0, "end": 0.4, "word": " Xin", "probability": 0.9},
                {"start": 0.4, "end": 0.8, "word": " chào", "probability": 0.8},
                {"start": 0.8, "end": 1.2, "word": " các", "probability": 0.9},
                {"start": 1.2, "end": 1.6, "word": " bạn.", "probability": 0.7},
            ],
        },
        {
            "id": 1,
            "start": 2.0,
            "end": 4.0,
            "text": "Hôm nay trời đẹp.",
            "avg_logprob": -0.4,
            "no_speech_prob": 0.02,
            "words": [
                {"start": 2.0, "end": 2.5, "word": " Hôm", "probability": 0.9},
                {"start": 2.5, "end": 3.0, "word": " nay", "probability": 0.9},
                {"start": 3.0, "end": 3.5, "word": " trời", "probability": 0.9},
                {"start": 3.5, "end": 4.0, "word": " đẹp.", "probability": 0.9},
            ],
        },
    ],
}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        sqlite_path=tmp_path / "jobs.sqlite3", blob_dir=tmp_path / "blobs", temp_dir=tmp_path
    )
    backends = make_backends(settings, embedded=True)
    await backends.open()
    await _job(backends, "done", JobStatus.COMPLETED, result_key="results/done.json")
    await backends.blobs.put_bytes("results/done.json", json.dumps(DOCUMENT).encode())
    await _job(backends, "waiting", JobStatus.PENDING)
    transport = httpx.ASGITransport(app=create_app(settings, backends))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http
    await backends.close()


async def _job(backends: Backends, job_id: str, status: JobStatus, **fields: Any) -> None:
    job = Job(
        id=job_id,
        filename="bài giảng.mp3",
        language="vi",
        model="base",
        audio_key=f"uploads/{job_id}.mp3",
        status=status,
        transcription=DOCUMENT["text"] if status is JobStatus.COMPLETED else None,
        **fields,
    )
    await backends.store.create(job)


def test_the_routes_offer_exactly_the_formats_module_list() -> None:
    assert FormatName.__args__ == FORMATS  # type: ignore[attr-defined]


@pytest.mark.parametrize("route", ["result", "download"])
async def test_srt_is_a_named_subtitle_file(client: httpx.AsyncClient, route: str) -> None:
    response = await client.get(f"/api/v1/tasks/done/{route}", params={"format": "srt"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-subrip")
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("inline;" if route == "result" else "attachment;")
    assert "filename*=UTF-8''b%C3%A0i%20gi%E1%BA%A3ng.srt" in disposition
    cues = list(srt.parse(response.text))
    assert [cue.content for cue in cues] == ["Xin chào các bạn.", "Hôm nay trời đẹp."]
    assert cues[1].start.total_seconds() == 2.0


async def test_vtt_with_line_options_splits_at_words(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/api/v1/tasks/done/download",
        params={"format": "vtt", "max_line_width": 10, "max_line_count": 1},
    )
    assert response.headers["content-type"].startswith("text/vtt")
    captions = webvtt.from_buffer(io.StringIO(response.text)).captions
    assert [c.text for c in captions] == ["Xin chào", "các bạn.", "Hôm nay", "trời đẹp."]
    assert [c.start for c in captions][:2] == ["00:00:00.000", "00:00:00.800"]


async def test_txt_tsv_and_verbose_json(client: httpx.AsyncClient) -> None:
    txt = await client.get("/api/v1/tasks/done/result", params={"format": "txt"})
    assert txt.text == "Xin chào các bạn.\nHôm nay trời đẹp.\n"
    tsv = await client.get("/api/v1/tasks/done/result", params={"format": "tsv"})
    assert tsv.text.splitlines()[1] == "0\t1600\tXin chào các bạn."
    verbose = (await client.get("/api/v1/tasks/done/result?format=verbose_json")).json()
    assert verbose["language"] == "vietnamese" and verbose["duration"] == 4.0
    assert [w["word"] for w in verbose["words"]][:2] == ["Xin", "chào"]


async def test_json_stays_the_seeds_shape(client: httpx.AsyncClient) -> None:
    body = (await client.get("/api/v1/tasks/done/result")).json()
    assert body["transcription"] == DOCUMENT["text"]
    assert body["segments"][0] == {"start": 0.0, "end": 1.6, "text": "Xin chào các bạn."}
    download = await client.get("/api/v1/tasks/done/download")
    assert download.json() == DOCUMENT
    assert "bài giảng.json" not in download.headers["content-disposition"]  # RFC 5987 form
    assert (
        "filename*=UTF-8''b%C3%A0i%20gi%E1%BA%A3ng.json" in download.headers["content-disposition"]
    )


async def test_before_completion_json_answers_and_other_formats_get_409(
    client: httpx.AsyncClient,
) -> None:
    seed = await client.get("/api/v1/tasks/waiting/result")
    assert seed.status_code == 200 and seed.json()["transcription"] is None
    for fmt in ("srt", "vtt", "txt", "tsv", "verbose_json"):
        response = await client.get("/api/v1/tasks/waiting/result", params={"format": fmt})
        assert response.status_code == 409
        assert "PENDING" in response.json()["detail"]
    download = await client.get("/api/v1/tasks/waiting/download", params={"format": "srt"})
    assert download.status_code == 409 and "PENDING" in download.json()["detail"]


async def test_an_unknown_format_gets_422_listing_the_valid_ones(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/v1/tasks/done/result", params={"format": "docx"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert all(f"'{fmt}'" in detail for fmt in FORMATS)
    bad_width = await client.get("/api/v1/tasks/done/result?format=srt&max_line_width=0")
    assert bad_width.status_code == 422 and "max_line_width" in bad_width.json()["detail"]
