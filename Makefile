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

.PHONY: help install demo pipeline test lint format ui serve bench clean
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	test -d .dvc || (dvc init -q && dvc config core.analytics false)
	touch $@

install: $(VENV)/.installed ## create .venv and install (CPU torch unless one is installed already)

demo: install ## the main job: the full pipeline on the default data (dvc repro)
	dvc repro
	@echo; dvc metrics show; echo; cat reports/registered.json; echo

pipeline: install ## dvc repro
	dvc repro

test: install ## run the tests
	$(PY) -m pytest -q

lint: install ## ruff
	ruff check . && ruff format --check .

format: install ## ruff format + fixes
	ruff format . && ruff check --fix .

clean: ## remove generated data, stores and reports (keeps .venv)
	rm -rf data/raw data/validated data/prepared data/quarantine artifacts reports mlflow.db mlartifacts .prefect dvc.lock
