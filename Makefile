# `make study` and `make test` each build .venv on first use, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed before the project so that pip never resolves a bare
# `torch` on its own: on a machine without nvidia-smi that would pull a
# multi-GB CUDA build. Only torch itself is looked up on the CPU index
# (--no-deps); its dependencies come from PyPI with the project. A torch
# already importable in the venv is kept (create the venv with
# VENV_ARGS=--system-site-packages to reuse your own GPU build), and one that
# pip's find-links (PIP_FIND_LINKS) hold is installed from there first, with no
# index: offline, no retry warnings.
TORCH ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_INDEX_ARGS := $(if $(shell command -v nvidia-smi),,--extra-index-url $(TORCH_CPU_INDEX))
PIP := $(PY) -m pip --disable-pip-version-check -q

SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: study evidence test lint postgresql bench bench-batched clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --no-deps --no-index "$(TORCH)" 2>/dev/null \
		|| $(PIP) install --no-deps --retries 1 $(TORCH_INDEX_ARGS) "$(TORCH)"
	$(PIP) install -e ".[test]"
	touch $@

study: $(VENV)/.installed
	$(PY) -m tuner study $(ARGS)

# The "suited to" claims: Adam, SGD and RMSprop on a task of each kind, each with its evidence.md, then one
# evidence.md over the three (runs/evidence/). One torch thread: these tasks' steps are too small to split, and a
# second thread waiting for a busy core multiplied their CPU time by 5 (ARGS="--threads 2" overrides it).
evidence: $(VENV)/.installed
	for e in sparse drift logistic; do $(PY) -m tuner study experiments/evidence-$$e.yaml --threads 1 $(ARGS) || exit 1; done
	$(PY) -m tuner evidence experiments/evidence-sparse.yaml experiments/evidence-drift.yaml experiments/evidence-logistic.yaml

# The suite runs on the CPU, as CI does (tests/conftest.py hides a GPU); on a machine with one, its CUDA tests then.
test: $(VENV)/.installed postgresql
	$(PY) -m pytest $(PYTEST_ARGS)
	$(if $(shell command -v nvidia-smi),TUNER_TEST_CUDA=1 $(PY) -m pytest -k cuda $(PYTEST_ARGS))

# Formatting, lint and types (configured in pyproject.toml); CI fails on any finding.
lint: $(VENV)/.installed
	$(PY) -m ruff format --check --quiet .
	$(PY) -m ruff check --quiet .
	$(PY) -m mypy

# The PostgreSQL tests start a server of their own on a free loopback port
# (tests/services.py); Debian's package provides the programs. Without them
# those tests are skipped, with the reason.
postgresql:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null; } || \
	  echo "make: could not install PostgreSQL (apt-get install postgresql): its tests will be skipped" >&2

bench: $(VENV)/.installed
	$(PY) bench/overhead.py $(ARGS)

bench-batched: $(VENV)/.installed
	$(PY) bench/batched.py $(ARGS)

clean:
	rm -rf $(VENV) runs tuner.db mlflow.db mlruns
