# `make help` lists the targets. Everything runs inside .venv, created on first use.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_UI_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export GIT_PYTHON_REFRESH ?= quiet
TORCH ?= torch==2.13.0

.PHONY: help install demo pipeline replay replay-refs tune test test-fast lint format ui live stack serve flow history rollback bench bench-train bench-dvc bench-flow bench-serving bench-drift bench-ablation bench-registry clean
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

# torch through pip (its CPU build, or the one installed already); the rest through uv, ~3x faster than pip
# here (40 s vs 122 s with bytecode compiled, bench/README.md), falling back to pip where uv fails.
# INSTALLER=pip: pip only (e.g. an index configured for pip alone).
INSTALLER ?= uv
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(filter uv,$(INSTALLER)),$(PY) -m pip install -q -c constraints.txt uv || true,)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(if $(filter uv,$(INSTALLER)),$(VENV)/bin/uv pip install -q --python $(PY) --compile-bytecode -c constraints.txt -e ".[dev]" || ,)$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	test -d .dvc || (dvc init -q && dvc config core.analytics false)
	touch $@

install: $(VENV)/.installed ## create .venv and install (CPU torch unless one is installed already)

demo: install ## the main job: the pipeline, then 2013 replayed: the default policy (drift) vs never, 1 seed
	dvc repro
	@echo; dvc metrics show; echo
	$(PY) -m flows.replay --seeds 1 --policy never --policy drift
	@echo; echo "Replay: reports/replay/ (summary.csv, evidence.csv, windows.csv, replay.png, replay.html); runs: make ui"

replay: install ## only the replay, every policy and seed of replay.policies, replay.seeds (python -m flows.replay; QUICK=1 for a tiny one)
	$(PY) -m flows.replay $(if $(QUICK),--quick,)

replay-refs: install ## replay references after `make replay`: a retrain at every window -> cadences, hindsight oracle
	$(PY) -m flows.references $(if $(SEEDS),--seeds $(SEEDS),)

pipeline: install ## dvc repro
	dvc repro

tune: install ## hyperparameter study (rolling monthly CV, MLflow runs) -> reports/tune/best_params.yaml; TRIALS= MINUTES= ARGS=
	dvc repro prepare
	$(PY) -m tasks.tune $(if $(TRIALS),--trials $(TRIALS),) $(if $(MINUTES),--minutes $(MINUTES),) $(ARGS)

test: install ## run the tests, two files at a time (pytest-xdist), one thread each
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile --durations=15

test-fast: install ## unit tests only (no pipeline runs, no servers)
	$(PY) -m pytest -q -m "not smoke and not integration"

ui: install ## Prefect UI :4200 + MLflow UI :5000 + flow deployments ("Run" in the UI); Ctrl-C stops all
	$(PY) -m flows.ui

live: install ## the loop live in the UIs: make ui + the service + 2013 played through it; SPEED= (weeks/min, 1) START= END=; Ctrl-C stops all
	dvc repro
	$(PY) -m flows.live $(if $(SPEED),--speed $(SPEED),) $(if $(START),--start $(START),) $(if $(END),--end $(END),) $(ARGS)

stack: install ## servers on PostgreSQL: MLflow :5000, Prefect :4200, a work pool with 2 workers, 2 replicas :8000/:8001; Ctrl-C stops all
	$(PY) -m flows.stack

serve: install ## the online service on 127.0.0.1:8000, following models:/flight-delay@champion
	$(PY) -m serving

flow: install ## the training flow once on the local Prefect API, e.g. make flow ARGS="--max-epochs 3"
	$(PY) -m flows.training $(ARGS)

history: install ## champion history: promotions, refusals, rollbacks
	$(PY) -m tasks.gate history

rollback: install ## put the previous champion back live
	$(PY) -m tasks.gate rollback

bench: bench-train bench-dvc bench-flow bench-serving bench-drift ## every benchmark (numbers in reports/bench_*.json)

bench-train: install ## Lightning vs a raw PyTorch loop (after dvc repro)
	$(PY) -m bench.train_throughput

bench-dvc: install ## dvc repro from scratch and no-op
	$(PY) -m bench.dvc_repro

bench-flow: install ## training flow vs dvc repro of the same changed stages
	$(PY) -m bench.flow_overhead

bench-serving: install ## the service vs `mlflow models serve` (after dvc repro)
	$(PY) -m bench.serving --project .

bench-drift: install ## drift computation per window at 1x, 4x, 10x a month (after dvc repro)
	$(PY) -m bench.drift

bench-ablation: install ## test AUC/Brier of net and HGB per feature family (reports/ablation.csv; ~10 min)
	$(PY) -m bench.ablation

bench-registry: install ## MLflow server on PostgreSQL vs SQLite under replicas + a retrain + monitoring (needs PostgreSQL)
	$(PY) -m bench.registry_store

.PHONY: bench-ddp
bench-ddp: install ## training on 2 processes (DDP, CPU) vs 1: test AUC and time per epoch (after dvc repro; ~15 min)
	$(PY) -m bench.ddp

.PHONY: bench-loop
bench-loop: install ## drift event -> new champion in every replica, make stack vs make ui, 3 rounds each (needs PostgreSQL; 12 min on 2 busy cores)
	$(PY) -m bench.loop_latency

lint: install ## ruff
	ruff check . && ruff format --check .

format: install ## ruff format + fixes
	ruff format . && ruff check --fix .

clean: ## remove generated data, stores and reports (keeps .venv)
	rm -rf data/raw data/validated data/prepared data/quarantine data/predictions data/scored artifacts reports mlflow.db mlartifacts .prefect .runs dvc.lock
