"""Run the benchmarks: `python -m bench.run [a b c d e f g h i j] [--quick]` (all by default).
Each prints a Markdown table; all are appended to .bench-data/results.md."""

from __future__ import annotations

import sys
from collections.abc import Callable

from bench import (
    bigupload,
    compression,
    dialects,
    fanout,
    ingest,
    long,
    overhead,
    short,
    throughput,
    verylong,
)

BENCHMARKS: dict[str, Callable[[bool], str]] = {
    "a": overhead.main,
    "b": long.main,
    "c": throughput.main,
    "d": ingest.main,
    "e": bigupload.main,
    "f": verylong.main,
    "g": compression.main,
    "h": dialects.main,
    "i": short.main,
    "j": fanout.main,
}


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    chosen = [name for name in argv if name in BENCHMARKS] or list(BENCHMARKS)
    unknown = [name for name in argv if name not in BENCHMARKS and name != "--quick"]
    if unknown:
        sys.exit(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    for name in chosen:
        BENCHMARKS[name](quick)


if __name__ == "__main__":
    main(sys.argv[1:])
