"""How `smap-stt` starts under a service manager: a LOG_FILE in a directory that does not exist
yet is created; one that cannot be written, or a bad setting, is one clear line and exit code 2
(a configuration error), never a traceback. Runs the real command in a temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from smap_stt.config import Settings


def _run(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    return subprocess.run(
        [sys.executable, "-m", "smap_stt.cli", "models"],
        cwd=cwd,
        env={**clean, "WHISPER_MODELS_DIR": str(cwd / "models"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_log_file_in_a_missing_directory_is_created(tmp_path: Path) -> None:
    log_file = tmp_path / "var" / "log" / "smap-stt" / "stt.log"
    done = _run(tmp_path, LOG_FILE=str(log_file), LOG_LEVEL="DEBUG")
    assert done.returncode == 0, done.stderr
    assert log_file.exists()


def test_log_file_that_cannot_be_written_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    done = _run(tmp_path, LOG_FILE=str(tmp_path / "a-file" / "stt.log"))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("smap-stt: LOG_FILE ") and "cannot be written" in lines[0]


@pytest.mark.parametrize(("name", "value"), [("API_PORT", "eighty"), ("RETRY_DELAYS", "5,soon")])
def test_a_bad_setting_is_one_line_and_exit_2(tmp_path: Path, name: str, value: str) -> None:
    done = _run(tmp_path, **{name: value})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        line for line in done.stderr.strip().splitlines() if line.startswith("smap-stt: ")
    ]
    assert f"invalid setting {name}:" in done.stderr
