"""`smap-stt transcribe` picks the language as an upload does: DEFAULT_LANGUAGE unless
`--language` says otherwise (`auto` to detect). Real command, real model, a tiny clip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from smap_stt.config import Settings
from tests.conftest import Clip


def _run(clip: Path, models_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    done = subprocess.run(
        [sys.executable, "-m", "smap_stt.cli", "transcribe", str(clip), "--json", *args],
        env={**clean, "WHISPER_MODELS_DIR": str(models_dir), **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return done


def _transcribe(clip: Path, models_dir: Path, *args: str, **env: str) -> dict[str, object]:
    document: dict[str, object] = json.loads(_run(clip, models_dir, *args, **env).stdout)
    return document


def test_transcribe_defaults_to_default_language(tiny_clip: Clip, models_dir: Path) -> None:
    # English speech: detection would say "en"; DEFAULT_LANGUAGE=de must be used as it is.
    assert _transcribe(tiny_clip.path, models_dir, DEFAULT_LANGUAGE="de")["language"] == "de"


def test_decoding_runs_on_tcmalloc_unless_told_otherwise(tiny_clip: Clip, models_dir: Path) -> None:
    # `make test` installs tcmalloc; ALLOCATOR=auto starts the command again on it (same
    # arguments, same output), ALLOCATOR=glibc keeps glibc's malloc.
    seen = {}
    for choice in ("auto", "tcmalloc", "glibc"):
        done = _run(tiny_clip.path, models_dir, ALLOCATOR=choice, LOG_LEVEL="INFO")
        seen[choice] = json.loads(done.stdout)["text"]
        expected = "glibc" if choice == "glibc" else "tcmalloc"
        assert f"Memory allocator: {expected}" in done.stderr, done.stderr
    assert seen["auto"] == seen["tcmalloc"] == seen["glibc"] != ""
