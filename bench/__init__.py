"""Benchmarks: `make bench` or `python -m bench.run [a b c d e f] [--quick]`."""
