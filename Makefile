# One-command set-up: `make run` and `make test` create and reuse .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-all venv clean bench-cpu

$(STAMP): pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

## Main job: node classification on the embedded synthetic default (no download).
run: $(STAMP)
	$(PY) examples/node_classification.py

## The test suite CI runs (slow tests excluded; `make test-all` includes them).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

## CPU benchmark suite: results under benchmarks/results/ (about 12 minutes on 2 cores).
bench-cpu: $(STAMP)
	$(PY) benchmarks/run.py cpu
