"""What every benchmark shares: the machine's description, a running service, RSS sampling,
timing helpers and the table printer."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import threading
import time
import wave
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import psutil
from tests.procs import ROOT, Service, base_env, free_port

DATA = ROOT / ".bench-data"


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import ctranslate2
    import faster_whisper

    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Python "
        f"{platform.python_version()}, faster-whisper {faster_whisper.__version__}, "
        f"ctranslate2 {ctranslate2.__version__}; model base, int8, beam 5, VAD on"
    )


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]], command: str) -> str:
    lines = [
        f"### {title}",
        "",
        f"`{command}` — {machine()}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    DATA.mkdir(exist_ok=True)
    with (DATA / "results.md").open("a") as results:
        results.write(f"<!-- {time.strftime('%Y-%m-%d %H:%M:%S')} -->\n{text}\n")
    return text


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


class PeakRss:
    """Samples the resident memory of a process and its children every 50 ms."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                total = self._process.memory_info().rss
                for child in self._process.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        total += child.memory_info().rss
                self.peak = max(self.peak, total)
            self._stop.wait(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


@contextlib.contextmanager
def running(*commands: str, workers: int = 0, **env: object) -> Iterator[Service]:
    """A service on its own data dir and queue names: `serve`, or `api` plus `workers`."""
    data_dir = DATA / f"run-{os.getpid()}-{time.monotonic_ns()}"
    port = free_port()
    service = Service(base_env(data_dir, API_PORT=port, LOG_LEVEL="WARNING", **env), data_dir, port)
    try:
        for command in commands:
            service.start(command, **({"LOG_LEVEL": "INFO"} if command != "api" else {}))
        for index in range(workers):
            service.start("worker", name=f"worker{index}", LOG_LEVEL="INFO")
        yield service
    finally:
        service.stop_all()
        import asyncio

        from tests.conftest import _delete_topology

        asyncio.run(
            _delete_topology(
                service.env["RABBITMQ_EXCHANGE_NAME"], service.env["RABBITMQ_QUEUE_NAME"]
            )
        )
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)


def write_wav(
    path: Path, seconds: float, *, source: np.ndarray | None = None, rate: int = 16000
) -> Path:
    """A 16-bit mono WAV of `seconds`, written in pieces (never whole in memory): `source`
    (int16 samples at `rate`) repeated, or faint noise."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    piece = source if source is not None else (rng.normal(0, 200, rate * 10)).astype(np.int16)
    total = int(seconds * rate)
    tmp = path.with_suffix(".part")
    with wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        written = 0
        while written < total:
            block = piece[: total - written]
            out.writeframes(block.tobytes())
            written += len(block)
    tmp.rename(path)
    return path
