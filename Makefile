PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BUILD := $(PY) packaging/build.py

.PHONY: venv test check lint demo bench reliability dist deb test-binary clean-dist
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# PyInstaller, for the binary (pyproject's [dist] extra).
$(VENV)/.dist-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev,dist]'
	touch $@

# What CI runs (.ci/run): lint, build the binary and the .deb, then the whole suite
# against the Python entry point, the binary and the unpacked .deb.
test: lint deb
	RUNSC_CUDA_TEST_BINARY="$$($(BUILD) binary-path)" RUNSC_CUDA_TEST_DEB="$$($(BUILD) deb-path)" $(PY) -m pytest -q

# The quick loop while developing: lint, then the unit and shim tiers against the Python entry point only
# (the reliability, e2e and GPU tiers run in `make test`).
check: lint
	$(PY) -m pytest -q tests/unit tests/shim

lint: venv
	$(VENV)/bin/ruff check runsc_cuda tests bench scripts packaging
	$(VENV)/bin/mypy

# The onedir binary (build/pyinstaller/dist/runsc-cuda), unpacked in
# dist/runsc-cuda-<version>-linux-<arch>/ and packed as
# dist/runsc-cuda-<version>-linux-<arch>.tar.gz with its .sha256.
dist: $(VENV)/.dist-installed
	$(BUILD) dist

# dist/runsc-cuda_<version>_<debarch>.deb (and .sha256), from the binary.
deb: dist
	$(BUILD) deb

test-binary: test

# Benchmarks (never timed tests): the pass-through cost, exec-engine freeze/thaw scaling, and
# checkpoint/restore image options against the real runsc (small scale; the full table:
# $(PY) bench/tuning.py --gib 1,2,4; see docs/benchmarks.md).
bench: venv
	$(PY) bench/passthrough.py
	$(PY) bench/freeze.py
	$(PY) bench/tuning.py

# create -> start -> checkpoint -> restore -> delete of a GPU container over the fake runsc.
demo: venv
	$(PY) scripts/demo.py

clean-dist:
	rm -rf build/pyinstaller dist

# The reliability suites' figures as a table (tried / survived / lost); SCALE=N runs more cases.
SCALE ?= 1
reliability: venv
	$(PY) bench/reliability.py --scale $(SCALE)
