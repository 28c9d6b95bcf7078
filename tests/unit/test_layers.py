"""The API process imports no worker, engine or model code: it starts fast and stays small.
Checked in a fresh interpreter, where `sys.modules` shows everything an import pulled in."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import pytest

FORBIDDEN = (
    "faster_whisper",
    "ctranslate2",
    "numpy",
    "smap_stt.worker",
    "smap_stt.stt.engine",
)

PROGRAM = """
import json, sys
from smap_stt.api.app import create_app
from smap_stt.backends import make_backends
from smap_stt.config import Settings
settings = Settings(_env_file=None, sqlite_path=sys.argv[1] + "/jobs.sqlite3",
                    blob_dir=sys.argv[1] + "/blobs", mongodb_url="", minio_endpoint="")
create_app(settings, make_backends(settings, embedded=False))
if len(sys.argv) > 2:  # and probe an upload, as the API does for every one
    from pathlib import Path
    from smap_stt.stt.audio import probe
    assert probe(Path(sys.argv[2])).duration > 0.5
print(json.dumps(sorted(sys.modules)))
"""


def _wav(path: Path, seconds: float = 1.0) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(bytes(int(32000 * seconds)))
    return path


@pytest.mark.parametrize("probing", [False, True], ids=["start", "probe an upload"])
def test_the_api_imports_no_worker_engine_or_numpy(tmp_path: Path, probing: bool) -> None:
    extra = [str(_wav(tmp_path / "a.wav"))] if probing else []
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tmp_path), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    modules = json.loads(done.stdout)
    assert "smap_stt.api.app" in modules and "smap_stt.service" in modules
    loaded = [
        name
        for name in modules
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)
    ]
    assert loaded == []
