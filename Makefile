# pai-patch: `make recipe=<model> [size=<size>] [key=value ...] <stage>`
# Every Python target runs inside .venv, which `setup` creates on first use with pinned versions.

SHELL := /bin/bash
PYTHON_BOOT ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
recipe ?= qwen2_5
STAGES := data convert pretrain sft export eval generate pipeline serve rehearse
# Every `key=value` given on the command line (recipe=, size=, lr=, ...) goes to the recipe as an override.
OVERRIDES := $(MAKEOVERRIDES)
PYTEST := $(PY) -m pytest -q -p no:cacheprovider

.PHONY: help setup test test-slow test-all test-faults lint $(STAGES) image image-push bench bench-data bench-convert bench-full-size bench-gpu clean doctor

help: ## list targets and recipes
	@echo "usage: make recipe=<recipe> [size=<size>] [key=value ...] <stage>"
	@echo
	@echo "stages: $(STAGES)"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | sort | awk -F'\t' '{printf "  %-14s %s\n", $$1, $$2}'
	@echo
	@echo "recipes and sizes (tiny is the CPU default):"
	@for d in recipes/*/; do printf "  %-12s tiny %s\n" "$$(basename $$d)" "$$(awk '/^sizes:/{f=1;next} /^[^ ]/{f=0} f&&/^  [A-Za-z0-9.]+:/{sub(/:.*/,"");sub(/^ +/,"");printf "%s ",$$0}' $$d/recipe.yaml)"; done

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c requirements.lock -e ".[test,eval,deepspeed]" 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import megatron.core, transformers, pai_patch" 
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install pinned dependencies

lint: $(STAMP) ## pyflakes-level checks (unused imports, undefined names) with ruff
	$(VENV)/bin/ruff check -q pai_patch tests bench

test: lint ## lint, then the fast tests (unit + small end-to-end)
	$(PYTEST) -m "not slow"

test-slow: $(STAMP) ## slow end-to-end tests only (multi-process, full pipeline)
	$(PYTEST) -m "slow" tests --ignore=tests/faults --durations=15

test-all: $(STAMP) ## the whole suite, as CI runs it
	$(PYTEST) tests

test-faults: $(STAMP) ## kill -9 / disk-full / corrupt-input fault suite
	$(PYTEST) tests/faults -s

$(STAGES): $(STAMP)
	$(PY) -m pai_patch stage $@ $(OVERRIDES)

doctor: $(STAMP) ## what this environment has and what each switch will use
	$(PY) -m pai_patch doctor

image: ## build the FA3-enabled training image (docker/Dockerfile)
	$(MAKE) -s -C docker build

image-push: ## push the image: make image-push REGISTRY=...
	$(MAKE) -s -C docker push REGISTRY=$(REGISTRY)

bench: bench-data bench-convert ## all CPU benchmarks

bench-data: $(STAMP) ## preprocessing throughput vs Megatron-LM's per-document loop
	$(PY) bench/data.py

bench-convert: $(STAMP) ## conversion speed and memory vs the I/O floor
	$(PY) bench/convert.py

bench-full-size: $(STAMP) ## Qwen2.5-0.5B at its published shape: convert, train 3 iterations, export, verify (CPU)
	$(PY) -m bench.full_size

bench-gpu: $(STAMP) ## tokens/s, TFLOP/s and MFU on one GPU
	$(PY) bench/gpu.py

.PHONY: gpu-check
gpu-check: ## one-shot GPU session: doctor, bench-gpu, GPU tests, RESULTS section (no .venv needed)
	bash bench/device_check.sh

.PHONY: golden
golden: $(STAMP) ## retrain each family's tiny size and rewrite tests/golden/*.json (review the diff)
	$(PY) -m pai_patch.reproduce.golden --update

clean: ## remove outputs (not the venv)
	rm -rf output bench/_work .pytest_cache
