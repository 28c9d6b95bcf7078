"""`make clean` removes build output only; `make reset-data` is the explicit way to delete the
jobs and files of the embedded backends and of `make stack`. Runs the real Makefile in a
scratch copy of the tree's layout."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

KEPT_BY_CLEAN = [".venv/bin/python", "data/jobs.sqlite3", "data/blobs/a", ".stack/mongo/x"]
BUILD_OUTPUT = [
    "build/lib/x",
    "dist/x.whl",
    "src/smap_stt.egg-info/PKG-INFO",
    "src/smap_stt/__pycache__/x.pyc",
    ".pytest_cache/x",
]
DATA = ["data/jobs.sqlite3", "data/blobs/a", ".stack/mongo/x", ".test-data/a.wav"]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    if shutil.which("make") is None:
        pytest.fail("make is not installed")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    for name in {*KEPT_BY_CLEAN, *BUILD_OUTPUT, *DATA, "models/base/model.bin"}:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    for folder in ("tests", "bench", "scripts"):
        (tmp_path / folder).mkdir(exist_ok=True)
    return tmp_path


def _make(tree: Path, target: str) -> None:
    subprocess.run(["make", "-s", target], cwd=tree, check=True, timeout=60, capture_output=True)


def test_clean_removes_build_output_only(tree: Path) -> None:
    _make(tree, "clean")
    for name in BUILD_OUTPUT:
        assert not (tree / name).exists(), name
    for name in [*KEPT_BY_CLEAN, "models/base/model.bin"]:
        assert (tree / name).exists(), f"make clean deleted {name}"


def test_reset_data_removes_data_and_stack_only(tree: Path) -> None:
    _make(tree, "reset-data")
    for name in DATA:
        assert not (tree / name).exists(), name
    for name in (".venv/bin/python", "models/base/model.bin", "src/smap_stt.egg-info/PKG-INFO"):
        assert (tree / name).exists(), f"make reset-data deleted {name}"
