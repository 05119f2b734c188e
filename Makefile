# `make study` and `make test` each build .venv on first use, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed before the project so that pip never resolves a bare
# `torch` on its own: on a machine without nvidia-smi that would pull a
# multi-GB CUDA build. Only torch itself is looked up on the CPU index
# (--no-deps); its dependencies come from PyPI with the project. A torch
# already importable in the venv is kept (create the venv with
# VENV_ARGS=--system-site-packages to reuse your own GPU build).
TORCH ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_INDEX_ARGS := $(if $(shell command -v nvidia-smi),,--extra-index-url $(TORCH_CPU_INDEX))
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: study test bench bench-batched clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --no-deps --retries 1 $(TORCH_INDEX_ARGS) "$(TORCH)"
	$(PIP) install -e ".[test]"
	touch $@

study: $(VENV)/.installed
	$(PY) -m tuner study $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) bench/overhead.py $(ARGS)

bench-batched: $(VENV)/.installed
	$(PY) bench/batched.py $(ARGS)

clean:
	rm -rf $(VENV) runs tuner.db mlflow.db mlruns
