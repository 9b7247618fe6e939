# customer-upsert: `make help` lists the targets.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.DEFAULT_GOAL := help
.PHONY: help install run test test-loaded lint bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-8s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## create .venv here and install the package with its test extras

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: install ## run Redis, simulator, API, worker and Flower; submit examples/seed-batch.json; Ctrl-C stops
	$(BIN)/customer-upsert dev --submit examples/seed-batch.json

test: install ## run the whole test suite (starts its own Redis, simulator and workers)
	$(BIN)/pytest

test-loaded: install ## the whole suite beside two busy loops, as on a shared CI machine (finds timing-dependent tests)
	$(BIN)/pytest --busy-loops 2

lint: install ## ruff and mypy (api/, worker/, cli/)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install ## print throughput, Redis-cost, scheduling, intake-memory, million-profile, operating-condition, leader and learned-rate figures (docs/performance.md)
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/redis_cost.py
	$(BIN)/python bench/scheduling.py
	$(BIN)/python bench/intake_memory.py
	$(BIN)/python bench/million.py
	$(BIN)/python bench/conditions.py
	$(BIN)/python bench/leader.py
	$(BIN)/python bench/learned_rates.py
