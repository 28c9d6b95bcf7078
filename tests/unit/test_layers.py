"""The API process imports no worker, engine or model code: it starts fast and stays small.
Checked in a fresh interpreter, where `sys.modules` shows everything an import pulled in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
print(json.dumps(sorted(sys.modules)))
"""


def test_creating_the_api_imports_no_worker_engine_or_numpy(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tmp_path)],
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
