# The two commands: `make demo` runs the pipeline on a local stack, `make test` runs the tests.
# Both install what they need (Debian packages, .venv, Kafka jars) and are safe to run again.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PGLITE := infra/pglite

.PHONY: demo test lint typecheck unit integration setup bench-setup system-deps system-deps-test kafka-jars clean

demo: setup
	$(BIN)/fleetpulse demo

test: setup system-deps-test $(PGLITE)/node_modules/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -m "not integration"

integration: setup system-deps-test $(PGLITE)/node_modules/.installed
	$(BIN)/pytest -m integration

setup: system-deps $(VENV)/.installed kafka-jars

system-deps:
	@infra/scripts/system-deps.sh

system-deps-test:
	@infra/scripts/system-deps.sh --test

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

bench-setup: setup $(VENV)/.bench-installed

$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $@

kafka-jars: $(VENV)/.installed
	$(BIN)/fleetpulse stack install

$(PGLITE)/node_modules/.installed: $(PGLITE)/package.json $(PGLITE)/package-lock.json
	cd $(PGLITE) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

clean:
	-$(BIN)/fleetpulse stack down
	rm -rf $(VENV) .fleetpulse $(PGLITE)/node_modules
