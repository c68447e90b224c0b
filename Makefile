# circuitlab: the two commands of the README, and a few helpers.
#   make handbook   run every notebook with papermill on the shipped models (executed copies in build/)
#   make test       run the whole test suite, including every notebook with smoke=True

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

.PHONY: handbook test lint venv clean

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
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks notebooks

clean:
	rm -rf build
