"""The allocator choice's decisions that need no second process (the re-start itself is
tested for real in tests/e2e/test_cli.py; giving memory back on tcmalloc in
tests/stt/test_engine.py)."""

from __future__ import annotations

import pytest

from smap_stt import allocator
from smap_stt.errors import ConfigurationError


@pytest.fixture
def no_tcmalloc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("SMAP_STT_ALLOCATOR_CHOSEN", raising=False)


@pytest.mark.usefixtures("no_tcmalloc")
def test_asking_for_a_missing_tcmalloc_says_how_to_install_it() -> None:
    with pytest.raises(ConfigurationError, match="apt-get install libtcmalloc-minimal4"):
        allocator.choose("tcmalloc")


@pytest.mark.usefixtures("no_tcmalloc")
def test_auto_without_tcmalloc_keeps_glibc_and_says_so() -> None:
    note = allocator.choose("auto")
    assert note is not None and "glibc" in note and "libtcmalloc-minimal4" in note
    assert allocator.choose("glibc") is None


def test_an_allocator_the_user_preloaded_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    monkeypatch.delenv("SMAP_STT_ALLOCATOR_CHOSEN", raising=False)

    def fail() -> str:
        raise AssertionError("looked for tcmalloc despite the user's own allocator")

    monkeypatch.setattr(allocator, "find_tcmalloc", fail)
    assert allocator.choose("tcmalloc") is None


def test_releasing_on_glibc_is_harmless() -> None:
    allocator.release_free_memory()  # malloc_trim; this test process runs on glibc
