"""Recovery sweeps run under a lease: processes sharing a job store never run the same sweep
at the same time, and a sweep whose holder stopped is taken over."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from pathlib import Path

import pytest

from smap_stt import recovery
from smap_stt.backends import Backends
from smap_stt.blobs.local import LocalBlobStore
from smap_stt.config import Settings
from smap_stt.queue.embedded import EmbeddedQueue
from smap_stt.store.sqlite import SqliteJobStore


def _backends(tmp_path: Path) -> Backends:
    return Backends(
        SqliteJobStore(tmp_path / "jobs.sqlite3"),
        LocalBlobStore(tmp_path / "blobs"),
        EmbeddedQueue(),
    )


async def test_one_process_at_a_time_runs_a_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(outbox_interval=0.05)
    runs: list[tuple[str, float, float]] = []

    async def sweep(_: Settings, backends: Backends) -> None:
        began = asyncio.get_running_loop().time()
        await asyncio.sleep(0.02)
        runs.append((names[id(backends)], began, asyncio.get_running_loop().time()))

    monkeypatch.setattr(recovery, "SWEEPS", [recovery.Sweep("test", sweep)])
    processes = [_backends(tmp_path) for _ in range(3)]
    names = {id(backends): f"p{n}" for n, backends in enumerate(processes)}
    for backends in processes:
        await backends.open()
    tasks = [
        asyncio.create_task(recovery.run_sweeps(settings, backends, holder=names[id(backends)]))
        for backends in processes
    ]
    await asyncio.sleep(0.6)
    first = {name for name, _, _ in runs}
    assert len(first) == 1 and len(runs) >= 5  # one holder, renewing its lease every pass

    holder = next(iter(first))
    stopped = next(n for n, backends in enumerate(processes) if names[id(backends)] == holder)
    tasks[stopped].cancel()  # a clean stop releases the lease: another process takes over
    with contextlib.suppress(asyncio.CancelledError):
        await tasks[stopped]
    before = len(runs)
    await asyncio.sleep(0.6)
    later = {name for name, _, _ in runs[before:]}
    assert len(later) == 1 and holder not in later

    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for backends in processes:
        await backends.close()
    ordered = sorted(runs, key=lambda run: run[1])
    assert all(a[2] <= b[1] for a, b in itertools.pairwise(ordered))  # no overlap
