"""Fixtures for the speech-to-text tests: generated clips (cached in .test-data/) and a real
engine on the bundled model (`models_dir` comes from the top-level conftest), shared by the
whole session because loading costs ~1 s."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from smap_stt.config import Settings
from smap_stt.stt.engine import Engine, EngineOptions
from tests.speech import (
    cached_silence,
    cached_speech,
    cached_speech_paragraphs,
    paragraphs,
)


@dataclass
class Clip:
    text: str
    path: Path


def make_settings(models_dir: Path, **overrides: object) -> Settings:
    values: dict[str, Any] = {
        "whisper_models_dir": models_dir,
        "max_concurrent_jobs": 1,
        "whisper_chunk_seconds": 120,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture(scope="session")
def engine(models_dir: Path) -> Iterator[Engine]:
    yield Engine(EngineOptions.from_settings(make_settings(models_dir)))


@pytest.fixture(scope="session")
def english_clips() -> list[Clip]:
    """The three ~20 s paragraphs of fixtures/english.txt, as wav, mp3 and ogg."""
    texts = paragraphs("english")
    formats = ("wav", "mp3", "ogg")
    return [
        Clip(text, cached_speech(text, fmt=fmt)) for text, fmt in zip(texts, formats, strict=True)
    ]


@pytest.fixture(scope="session")
def speech_75s() -> Clip:
    """About 75 s of speech: four paragraphs of fixtures/long.txt with pauses between them."""
    texts = paragraphs("long")[:4]
    return Clip(" ".join(texts), cached_speech_paragraphs(texts, fmt="mp3"))


@pytest.fixture(scope="session")
def silence_clip() -> Path:
    return cached_silence(20.0, fmt="wav")
