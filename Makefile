# scf-risk: `make run` runs the main job on embedded defaults; `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SCF := $(VENV)/bin/scf-risk
DEMO := data/demo
PANEL := data/demo-panel.parquet

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast lint fmt typecheck bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

install: $(VENV)/.installed ## create .venv and install the pinned stack

run: install ## the main job: demo data -> features -> train -> promote -> serve on 127.0.0.1:8000
	@bash scripts/run-demo.sh

test: install ## the whole test suite (slow load/fault/fuzz tests included, bounded)
	$(PY) -m pytest -q -n auto --dist loadfile tests

test-fast: install ## the suite without the slow tests
	$(PY) -m pytest -q -n auto --dist loadfile -m "not slow" tests

lint: install ## ruff lint + format check, mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: install ## format the code
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install ## benchmarks: medians of several runs, ratios against peers; report in bench-out/
	$(PY) -m bench

clean: ## remove generated data, models and caches (keeps .venv)
	rm -rf data/demo data/*.parquet bench-out .pytest_cache .mypy_cache .ruff_cache
	find models -mindepth 1 ! -name README.md -exec rm -rf {} +
