# partnerhub — the two commands a newcomer needs are `make up` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)

.PHONY: up test test-fast bench lint fuzz install system-deps clean demo

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

## make up: the whole platform on embedded defaults (SQLite under var/, Tansu broker), Ctrl-C stops it
up: install
	$(BIN)/partnerhub up

## make test: install what the tests need, then run them all
test: install system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not e2e" $(PYTEST_ARGS)

## system packages some tests drive (headless Chromium, docker-compose for config validation)
system-deps:
	@scripts/system-deps.sh

demo: install
	$(BIN)/partnerhub demo

bench: install
	$(BIN)/python -m bench.run

lint: install
	$(BIN)/ruff check events services tests bench
	$(BIN)/ruff format --check events services || true
	$(BIN)/mypy

fuzz: install
	PARTNERHUB_FUZZ_EXAMPLES=500 $(BIN)/python -m pytest tests/hardening -m fuzz $(PYTEST_ARGS)

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
