# smap-stt: `make run` starts the service on its embedded defaults; `make test` runs everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-stamp
DEV := $(VENV)/.dev-stamp

.PHONY: install install-runtime models tcmalloc run api worker stack test unit lint typecheck bench system-deps rabbitmq clean reset-data screenshots

# What running the service needs (`make run`, `api`, `worker`, `stack`, `models`).
$(RUNTIME): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "smap-stt needs Python 3.11 or newer (found $$($(PYTHON) --version))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $(RUNTIME)

# Plus what testing and checking need: test servers, schemathesis, playwright, type stubs.
$(DEV): $(RUNTIME)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(DEV)

install-runtime: $(RUNTIME)

install: $(DEV)

models: install-runtime
	$(BIN)/smap-stt models install

# tcmalloc: the C allocator the decoding processes switch to when it is installed
# (ALLOCATOR=auto): long files decode faster in flat memory (docs/PERFORMANCE.md). Best effort:
# without apt-get or root, they use glibc's malloc and say so in their log.
tcmalloc:
	@$(PYTHON) -c 'import ctypes.util as u, sys; sys.exit(not u.find_library("tcmalloc_minimal"))' || \
		{ command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq && \
			apt-get install -y -qq libtcmalloc-minimal4; } || \
		echo "tcmalloc is not installed (Debian: apt-get install libtcmalloc-minimal4): decoding uses glibc's malloc"

run: models tcmalloc
	$(BIN)/smap-stt serve

api: models
	$(BIN)/smap-stt api

worker: models tcmalloc
	$(BIN)/smap-stt worker

stack: models tcmalloc rabbitmq
	$(BIN)/python scripts/stack.py

# espeak-ng makes the speech the tests transcribe; chromium is the browser the page's tests
# drive (through playwright, never `playwright install`).
system-deps:
	@command -v espeak-ng >/dev/null || { apt-get update -qq && apt-get install -y -qq espeak-ng; }
	@test -x /usr/bin/chromium || { apt-get update -qq && apt-get install -y -qq chromium; }
	@# tcmalloc: required here (tests/e2e/test_cli.py checks the decoding commands run on it);
	@# `make run` only tries (the `tcmalloc` target below).
	@$(PYTHON) -c 'import ctypes.util as u, sys; sys.exit(not u.find_library("tcmalloc_minimal"))' || \
		{ apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4; }
	@# promtool (Debian's prometheus package) checks deploy/prometheus/alerts.yml.
	@test -x /usr/bin/promtool || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

rabbitmq:
	@bash scripts/ensure-rabbitmq.sh

lint: install
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

typecheck: install
	$(BIN)/mypy

# CI=true: a test server that cannot start fails the run instead of skipping its tests.
test: install models system-deps rabbitmq lint typecheck
	CI=true $(BIN)/pytest

# The fast layer: pure logic and in-process API tests, no server, no network, no inference.
unit: install
	$(BIN)/pytest -q tests/unit

bench: install models system-deps rabbitmq
	$(BIN)/python -m bench.run

# docs/screenshots/*.png for the README: a fresh `serve` with a few jobs, photographed.
screenshots: install models system-deps rabbitmq
	$(BIN)/python scripts/screenshots.py

# Build output only: caches and package metadata. The venv, models and data stay.
clean:
	rm -rf build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
	find src tests bench scripts -name __pycache__ -type d -prune -exec rm -rf {} +

# Deletes every job, upload and transcript of the embedded backends (data/) and of `make stack`
# (.stack/), and the test and bench caches.
reset-data:
	rm -rf data .stack .test-data .bench-data
