"""`smap-stt models` lists the models in the blob store too (pushed with `smap-stt models
push`), marked as such, so a newcomer sees every name a job may ask for. Real commands, local
blob store in a temporary directory (no network)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from smap_stt.config import Settings


def _run(cwd: Path, *args: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    done = subprocess.run(
        [sys.executable, "-m", "smap_stt.cli", "models", *args],
        cwd=cwd,
        env={**clean, "BLOB_DIR": str(cwd / "blobs"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _fake_model(models_dir: Path, name: str) -> None:
    directory = models_dir / name
    directory.mkdir(parents=True)
    for file in ("model.bin", "config.json", "tokenizer.json", "vocabulary.json"):
        (directory / file).write_text(f"{name} {file}")


def test_models_pushed_to_the_blob_store_are_listed_and_marked(tmp_path: Path) -> None:
    here, elsewhere = tmp_path / "models", tmp_path / "other-machine-models"
    _fake_model(here, "tuned")
    _fake_model(here, "local-only")
    _run(tmp_path, "push", "tuned", WHISPER_MODELS_DIR=str(here))

    listed = _run(tmp_path, WHISPER_MODELS_DIR=str(elsewhere)).splitlines()
    assert listed[0] == f"models in {elsewhere} and in the local blob store:"
    assert "  tuned (in the local blob store; a worker fetches it on first use)" in listed
    assert not any("local-only" in line for line in listed)

    listed = _run(tmp_path, WHISPER_MODELS_DIR=str(here)).splitlines()
    assert "  tuned (also in the local blob store)" in listed
    assert "  local-only" in listed


def test_listing_creates_no_blob_directory(tmp_path: Path) -> None:
    listed = _run(tmp_path, WHISPER_MODELS_DIR=str(tmp_path / "models"))
    assert "base" in listed
    assert not (tmp_path / "blobs").exists()
