# circuitlab: the two commands of the README, and a few helpers.
#   make handbook   run every notebook with papermill on the shipped models (executed copies in build/)
#   make test       run the whole test suite, including every notebook with smoke=True (one worker per core)
#   make test-fast  the tests not marked slow (skips the notebooks and the longest runs)
#   make lint       ruff's lint rules and its formatter, as checks (nothing is rewritten)
#   make typecheck  mypy over src/ (configured in pyproject.toml)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Nothing may reach the network at run time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export WANDB_MODE := disabled
export MPLBACKEND := Agg

.PHONY: handbook test test-fast lint typecheck venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (circuitlab)" > /dev/null
	touch $(STAMP)

handbook: $(STAMP)
	$(BIN)/python -m circuitlab.handbook --output-dir build/handbook

test: $(STAMP)
	$(BIN)/pytest -n auto --durations=10

test-fast: $(STAMP)
	$(BIN)/pytest -n auto -m "not slow"

LINTED := src tests benchmarks notebooks

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

typecheck: $(STAMP)
	$(BIN)/mypy src

clean:
	rm -rf build
