from __future__ import annotations

import hashlib
import multiprocessing
import time
from pathlib import Path

import pytest

from smap_stt.errors import ModelCorrupt, ModelNotFound
from smap_stt.stt import local_models
from smap_stt.stt.local_models import (
    BUNDLED,
    available_models,
    ensure_bundled_model,
    installed_models,
    resolve_model,
)

SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _fake_model(directory: Path, *, tokenizer: bool = True) -> None:
    directory.mkdir(parents=True)
    for name in ("model.bin", "config.json") + (("tokenizer.json",) if tokenizer else ()):
        (directory / name).write_text("{}")


def test_bundled_model_is_assembled_verified_and_idempotent(tmp_path: Path) -> None:
    target = ensure_bundled_model(tmp_path)

    assert target == tmp_path / BUNDLED
    assert (target / "model.bin").stat().st_size == 145_217_607
    assert _sha256(target / "model.bin") == SHA256
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        assert (target / name).is_file()
    assert installed_models(tmp_path) == [BUNDLED]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".base-")] == []

    mtime = (target / "model.bin").stat().st_mtime_ns
    started = time.perf_counter()
    assert ensure_bundled_model(tmp_path) == target
    assert resolve_model(tmp_path, BUNDLED) == str(target)
    assert time.perf_counter() - started < 0.1  # a marker check, no rehash
    assert (target / "model.bin").stat().st_mtime_ns == mtime


def _assemble(models_dir: str) -> str:
    return str(ensure_bundled_model(Path(models_dir)))


def test_concurrent_assembly_is_safe(tmp_path: Path) -> None:
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        paths = pool.map(_assemble, [str(tmp_path)] * 3)
    assert set(paths) == {str(tmp_path / BUNDLED)}
    assert _sha256(tmp_path / BUNDLED / "model.bin") == SHA256
    assert sorted(p.name for p in tmp_path.iterdir()) == [".base.lock", BUNDLED]


def test_an_unverified_base_directory_is_replaced(tmp_path: Path) -> None:
    _fake_model(tmp_path / BUNDLED)  # e.g. left over from a crashed copy
    target = ensure_bundled_model(tmp_path)
    assert (target / "model.bin").stat().st_size == 145_217_607


def test_wrong_hash_raises_and_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_models, "_BUNDLED_SHA256", "0" * 64)
    with pytest.raises(ModelCorrupt, match="sha256"):
        ensure_bundled_model(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".base.lock"]


def test_installed_models_lists_only_complete_directories(tmp_path: Path) -> None:
    _fake_model(tmp_path / "large-v3")
    _fake_model(tmp_path / "no-tokenizer", tokenizer=False)  # would make faster-whisper go online
    _fake_model(tmp_path / ".base-build-123")  # an assembly in progress
    (tmp_path / "notes.txt").write_text("not a model")

    assert installed_models(tmp_path) == ["large-v3"]
    assert available_models(tmp_path) == [BUNDLED, "large-v3"]
    assert installed_models(tmp_path / "missing") == []


def test_resolve_model_finds_dropped_in_directories(tmp_path: Path) -> None:
    _fake_model(tmp_path / "vi-finetune")
    assert resolve_model(tmp_path, "vi-finetune") == str(tmp_path / "vi-finetune")


@pytest.mark.parametrize("name", ["medium", "no-tokenizer", "../base", "/etc", ".base-build-1", ""])
def test_unknown_model_raises_listing_the_available_ones(tmp_path: Path, name: str) -> None:
    _fake_model(tmp_path / "large-v3")
    _fake_model(tmp_path / "no-tokenizer", tokenizer=False)
    with pytest.raises(ModelNotFound) as caught:
        resolve_model(tmp_path, name)
    assert "base, large-v3" in str(caught.value)


def test_download_is_only_by_request(tmp_path: Path) -> None:
    assert resolve_model(tmp_path, "Systran/faster-whisper-tiny", allow_download=True) == (
        "Systran/faster-whisper-tiny"
    )
    with pytest.raises(ModelNotFound):
        resolve_model(tmp_path, "tiny")


def test_the_truncated_small_packages_are_never_offered(tmp_path: Path) -> None:
    assert "small" not in available_models(tmp_path)
    with pytest.raises(ModelNotFound):
        resolve_model(tmp_path, "small")


def test_a_recent_listing_answers_without_scanning_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14: the API asks on every upload; only a name listed within LISTING_SECONDS is
    taken on trust, anything else (a model added since) means scanning again."""
    _fake_model(tmp_path / "large-v3")
    assert not local_models.recently_available(tmp_path, "large-v3")  # never listed
    assert "large-v3" in available_models(tmp_path)
    assert local_models.recently_available(tmp_path, "large-v3")
    assert not local_models.recently_available(tmp_path, "medium")
    assert not local_models.recently_available(tmp_path / "other", "large-v3")
    listed_at, names = local_models._listings[tmp_path]
    stale = listed_at - local_models.LISTING_SECONDS - 1
    monkeypatch.setitem(local_models._listings, tmp_path, (stale, names))
    assert not local_models.recently_available(tmp_path, "large-v3")
