# One-command set-up: `make run` and `make test` create and reuse .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
COMPAT_VENV ?= .venv-compat
COMPAT_PY := $(COMPAT_VENV)/bin/python
COMPAT_STAMP := $(COMPAT_VENV)/.installed

.PHONY: run lint test test-all test-compat venv clean bench-cpu

$(STAMP): pyproject.toml requirements-dev.txt requirements-common.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

## Main job: node classification on the embedded synthetic default (no download).
run: $(STAMP)
	$(PY) examples/node_classification.py

## Lint and format check (ruff, configured in pyproject.toml): a second or two, before the suite.
## `ruff format .` applies the format the check asks for.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

## The test suite CI runs (slow tests excluded; `make test-all` includes them), after the lint.
test: lint
	$(PY) -m pytest -q -m "not slow"

## The suite on the oldest supported versions (requirements-compat.txt: torch 2.11, Triton 3.6,
## PyG 2.8.0, the GPU machines' combination), in its own venv (~3 GB, a few minutes to install).
$(COMPAT_STAMP): pyproject.toml requirements-compat.txt requirements-common.txt
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_PY) -m pip install -q --upgrade pip
	$(COMPAT_PY) -m pip install -q -r requirements-compat.txt
	$(COMPAT_PY) -m pip install -q --no-deps -e .
	touch $(COMPAT_STAMP)

test-compat: $(COMPAT_STAMP)
	$(COMPAT_PY) -c "import torch, triton, torch_geometric, numpy; print('compat:', torch.__version__, 'triton', triton.__version__, 'pyg', torch_geometric.__version__, 'numpy', numpy.__version__)"
	$(COMPAT_PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(COMPAT_VENV) .pytest_cache .hypothesis

## CPU benchmark suite: results under benchmarks/results/ (about 12 minutes on 2 cores).
bench-cpu: $(STAMP)
	$(PY) benchmarks/run.py cpu
