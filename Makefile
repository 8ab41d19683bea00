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

# The fault tests run on a 3-broker stack of their own, beside the rest (mostly waiting on
# brokers and databases, they leave a core free): their log is printed when both are done.
FAULTS_LOG := .fleetpulse/test-faults.log

test: setup system-deps-test $(PGLITE)/node_modules/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	@mkdir -p .fleetpulse
	@$(BIN)/pytest -p no:cacheprovider tests/faults > $(FAULTS_LOG) 2>&1 & faults=$$!; \
	$(BIN)/pytest --ignore=tests/faults; rest=$$?; \
	wait $$faults; status=$$?; \
	echo "==================== tests/faults (run beside the rest) ===================="; \
	cat $(FAULTS_LOG); \
	test $$rest -eq 0 && test $$status -eq 0

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

# The benchmarks' extras: py-spy, the peer agents (Debian), and Quix Streams in a virtualenv
# of its own (it pins an older confluent-kafka than ours).
QUIX_VENV := benchmarks/quix/.venv

bench-setup: setup $(VENV)/.bench-installed $(QUIX_VENV)/.installed
	@infra/scripts/system-deps.sh --bench

$(QUIX_VENV)/.installed: benchmarks/quix/requirements.txt
	test -x $(QUIX_VENV)/bin/python || $(PYTHON) -m venv $(QUIX_VENV)
	$(QUIX_VENV)/bin/python -m pip install -q -r benchmarks/quix/requirements.txt
	touch $@

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
