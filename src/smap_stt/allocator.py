"""The C allocator of a long-running `smap-stt` process, chosen before anything is allocated.

CTranslate2 allocates and frees working buffers of a few MB many times a second while it
decodes. glibc's malloc either keeps them in a heap that fragments, so a worker's peak memory
grows with the length of the file, or (with a low mmap threshold) maps and faults each one
afresh, which costs ~30 % more CPU. tcmalloc's page heap reuses them without either cost
(issue 14, docs/PERFORMANCE.md, `serve` on an AVX2 machine: a 10 minute clip in 21–24 s
instead of 26–32 s, and a 1 hour file peaking 2–129 MB above it, against 118–195 MB on glibc;
on an AVX-512 machine +0 to +139 MB over nine runs, the 10 minute peak itself varying by
~140 MB). An allocator can only be chosen when a process starts, so the process starts
itself again, once, with tcmalloc preloaded.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from typing import Literal

from smap_stt.errors import ConfigurationError

__all__ = ["Allocator", "choose", "in_use", "release_free_memory"]

Allocator = Literal["auto", "tcmalloc", "glibc"]

# Debian/Ubuntu: libtcmalloc-minimal4 (the allocator alone); gperftools' full library also does.
_NAMES = ("tcmalloc_minimal", "tcmalloc")
# Set in the started-again process: it never starts itself a third time.
_MARK = "SMAP_STT_ALLOCATOR_CHOSEN"
INSTALL_HINT = (
    "install it (Debian/Ubuntu: apt-get install libtcmalloc-minimal4; Fedora: "
    "gperftools-libs) or set ALLOCATOR=glibc"
)


def in_use() -> str:
    """'tcmalloc' if this process runs on it, else 'glibc' (what the worker's log says)."""
    with (
        contextlib.suppress(OSError),
        open("/proc/self/maps", encoding="utf-8", errors="replace") as maps,
    ):
        if any("libtcmalloc" in line for line in maps):
            return "tcmalloc"
    return "glibc"


def release_free_memory() -> None:
    """Give the pages the allocator holds free back to the system.

    Loading a model reads its float16 weights and converts them to int8; the buffers freed
    on the way stay with the allocator, and tcmalloc keeps them for reuse: ~190 MB of a
    worker's resident memory for the two copies of `base`, never used again (issue 14:
    a worker idled at 496 MB, 304 MB after this). Called once a model is loaded; the pages
    decoding then takes are its own working set, reused from job to job."""
    with contextlib.suppress(OSError, AttributeError):
        if in_use() == "tcmalloc":
            ctypes.CDLL(None).MallocExtension_ReleaseFreeMemory()
        else:
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def find_tcmalloc() -> str | None:
    """The name the dynamic loader knows tcmalloc by, if it is installed."""
    for name in _NAMES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def choose(allocator: Allocator) -> str | None:
    """Make this process run on `allocator` (Linux only; elsewhere the system's is kept).

    With tcmalloc wanted and found but not loaded, the process is replaced by itself with
    tcmalloc preloaded (same pid, same arguments) and this call does not return. Returns a
    sentence for the log when `auto` found no tcmalloc; raises ConfigurationError when
    `tcmalloc` was asked for and is not installed. With glibc, its arenas and mmap threshold
    are tuned. An allocator the user preloaded (jemalloc, mimalloc...) is left alone.
    """
    if not sys.platform.startswith("linux") or in_use() == "tcmalloc":
        return None
    started_again = _MARK in os.environ
    if "malloc" in os.environ.get("LD_PRELOAD", "") and not started_again:
        return None  # the user's own choice
    if allocator != "glibc" and not started_again:
        library = find_tcmalloc()
        if library is not None:
            env = dict(os.environ)
            env[_MARK] = library
            env["LD_PRELOAD"] = " ".join(filter(None, [library, env.get("LD_PRELOAD")]))
            # tcmalloc reports every allocation over 1 GB on stderr; a 4-hour file's audio is
            # read a chunk at a time, so such a line would only be noise in the service's log.
            env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
        if allocator == "tcmalloc":
            raise ConfigurationError(
                f"ALLOCATOR=tcmalloc, but tcmalloc is not installed: {INSTALL_HINT}"
            )
    _tune_glibc()
    if allocator == "auto":
        return f"tcmalloc is not installed, so decoding uses glibc's malloc: {INSTALL_HINT}"
    return None


def _tune_glibc(arenas: int = 2, mmap_threshold: int = 32 << 20) -> None:
    """Keep glibc's malloc in bounds without slowing decoding, where tcmalloc is not used.

    - glibc gives each thread its own malloc arena; with a dozen decoding threads, freed audio
      buffers stay spread over them (measured: a 1 hour clip peaked 133 MB above a 10 minute
      one; with 2 arenas, 83 MB). Same as MALLOC_ARENA_MAX=2, which wins when set.
    - The mmap threshold is fixed at 32 MB, glibc's own ceiling, without its climb from
      128 kB (issue 14, docs/PERFORMANCE.md, the 581 s and 3600 s clips in `serve`): left to
      climb, the 1 hour file peaked 166 MB above the 10 minute one; fixed at 32 MB, 110 MB,
      as fast. Fixed at 1 MB it was 51 MB, but a fresh mapping for each of CTranslate2's
      working buffers cost 30 % more CPU in page faults (40.1 s against 25.3 s for the
      10 minute clip). Same as MALLOC_MMAP_THRESHOLD_, which wins when set.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        if "MALLOC_ARENA_MAX" not in os.environ:
            libc.mallopt(-8, arenas)  # -8: M_ARENA_MAX
        if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
            libc.mallopt(-3, mmap_threshold)  # -3: M_MMAP_THRESHOLD
