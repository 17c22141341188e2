PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv test lint demo bench
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

test: lint
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check runsc_cuda tests bench scripts
	$(VENV)/bin/mypy

demo: venv
	$(PY) scripts/demo.py

bench: venv
	$(PY) bench/freeze.py
