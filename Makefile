PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv test lint bench
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check runsc_cuda tests bench
	$(VENV)/bin/mypy

# Benchmarks (never timed tests).  bench/passthrough.py: the pass-through cost.
bench: venv
	$(PY) bench/passthrough.py
