# pseudoserve: the two commands a new user needs are `make demo` and `make test`.
# Everything installs into .venv; torch==2.13.0 goes first because it is the small CPU build
# (an unpinned torch would pull a multi-GB CUDA build).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup test test-fast demo bench protos docs prometheus lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The Prometheus scrape test needs Debian's prometheus; install it when missing (root or sudo).
prometheus:
	@command -v prometheus >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null || \
	  echo "prometheus could not be installed: the scrape test will be skipped"; }

# Two pytest processes: tests/triton drives real server processes with tritonclient, whose
# `inference.*` protobuf symbols cannot share a process with our own generated stubs.
test: setup prometheus
	$(BIN)/python -m pytest tests --ignore=tests/triton $(PYTEST_ARGS)
	$(BIN)/python -m pytest tests/triton $(PYTEST_ARGS)

# Everything but the slow multi-process end-to-end tests.
test-fast: setup
	$(BIN)/python -m pytest tests --ignore=tests/triton -m 'not slow' $(PYTEST_ARGS)
	$(BIN)/python -m pytest tests/triton -m 'not slow' $(PYTEST_ARGS)

demo: setup
	$(BIN)/pseudoserve demo

bench: setup
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/capture.py
	$(BIN)/python bench/ssl_digits.py

protos: setup
	PYTHON=$(BIN)/python protos/regenerate.sh

docs: setup
	$(BIN)/python -m pseudoserve.settings_doc docs/operations.md

lint: setup
	$(BIN)/ruff check pseudoserve service trainer tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
