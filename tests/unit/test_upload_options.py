"""Upload options and model aliases: what is accepted, and 422s that say what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from smap_stt.api.app import create_app
from smap_stt.backends import make_backends
from smap_stt.config import Settings
from smap_stt.errors import InvalidRequest
from smap_stt.service import parse_options


def test_defaults_are_whispers() -> None:
    assert parse_options({}) == {
        "task": "transcribe",
        "word_timestamps": False,
        "initial_prompt": None,
        "hotwords": None,
        "beam_size": None,
        "vad_filter": True,
        "temperature": 0.0,
    }


def test_every_option_is_read() -> None:
    fields = {
        "task": "Translate",
        "word_timestamps": "true",
        "initial_prompt": "  Nguyễn Thị Minh Khai street.  ",
        "hotwords": "Saoirse",
        "beam_size": "3",
        "vad_filter": "0",
        "temperature": "0.4",
    }
    assert parse_options(fields) == {
        "task": "translate",
        "word_timestamps": True,
        "initial_prompt": "Nguyễn Thị Minh Khai street.",
        "hotwords": "Saoirse",
        "beam_size": 3,
        "vad_filter": False,
        "temperature": 0.4,
    }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"task": "summarize"}, "'transcribe' or 'translate'"),
        ({"beam_size": "0"}, "from 1 to 10"),
        ({"beam_size": "11"}, "from 1 to 10"),
        ({"beam_size": "٣"}, "from 1 to 10"),
        ({"temperature": "1.5"}, "from 0 to 1"),
        ({"temperature": "nan"}, "from 0 to 1"),
        ({"temperature": "-0.1"}, "from 0 to 1"),
        ({"word_timestamps": "maybe"}, "true or false"),
        ({"vad_filter": "2"}, "true or false"),
        ({"initial_prompt": "x" * 1001}, "at most 1000"),
    ],
)
def test_bad_options_say_what_is_allowed(fields: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as caught:
        parse_options(fields)
    assert caught.value.status_code == 422


def test_model_aliases_parse_from_the_comma_form() -> None:
    settings = Settings(whisper_model_aliases=" medium=base, large = base ,")
    assert settings.model_aliases == {"medium": "base", "large": "base"}
    assert Settings().model_aliases == {}
    with pytest.raises(ValidationError, match="not name=model"):
        Settings(whisper_model_aliases="medium")


def test_model_aliases_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHISPER_MODEL_ALIASES", "medium=base")
    assert Settings().model_aliases == {"medium": "base"}


async def _upload(tmp_path: Path, **fields: Any) -> httpx.Response:
    settings = Settings(
        sqlite_path=tmp_path / "jobs.sqlite3",
        blob_dir=tmp_path / "blobs",
        temp_dir=tmp_path / "tmp",
        whisper_models_dir=tmp_path / "models",
    )
    backends = make_backends(settings, embedded=True)
    await backends.open()
    try:
        transport = httpx.ASGITransport(app=create_app(settings, backends))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.post(
                "/api/v1/tasks/upload",
                files={"file": ("a.wav", b"not audio")},
                data={"language": "en", "model": "base", **fields},
            )
    finally:
        await backends.close()


async def test_the_upload_refuses_a_bad_option_before_looking_at_the_file(
    tmp_path: Path,
) -> None:
    response = await _upload(tmp_path, task="summarize")
    assert response.status_code == 422
    assert "'transcribe' or 'translate'" in response.json()["detail"]
    response = await _upload(tmp_path, beam_size="42")
    assert response.status_code == 422 and "beam_size" in response.json()["detail"]
