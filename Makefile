# `make run` and `make test` each set up their own venv on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned: the CPU build of 2.13.0 (see README); a looser pin lets pip fetch CUDA.
TORCH ?= torch==2.13.0

.PHONY: setup run test test-fast lint bench clean

$(BIN)/ragtune: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/ragtune

# The main job until the API exists: ingest the project's own docs/ and answer a search.
run: setup
	$(BIN)/ragtune ingest docs --collection docs --prune
	$(BIN)/ragtune search "what happens when I ingest the same files twice?" --collection docs --top-k 3

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

test-fast: lint
	$(BIN)/pytest -m "not slow"

bench: setup
	$(BIN)/python -m bench.ingest

clean:
	rm -rf $(VENV) .ragtune .mypy_cache .ruff_cache .pytest_cache
