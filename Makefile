# One-command set-up: every target builds the virtual environment it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MLOPS := $(VENV)/bin/mlops
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))
export MLOPS_HOME ?= $(abspath .mlops)
export SPARK_LOCAL_IP ?= 127.0.0.1

DEMO_ROWS ?= 200000

.PHONY: venv node wheels jars demo test test-quick lint bench clean

$(VENV)/.installed: requirements-dev.txt constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	touch $@

venv: $(VENV)/.installed

# Azurite (the Azure Storage emulator) comes from npm, pinned by package.json.
node_modules/.installed: package.json package-lock.json
	@if command -v npm >/dev/null 2>&1; then npm ci --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: Azurite is unavailable, blob publishing falls back to a local folder (see README)"; fi

node: node_modules/.installed

wheels: venv
	$(PY) setup.py wheels
	$(PY) -m pip install --quiet --no-deps --force-reinstall dist/*.whl

# Delta Lake for local Spark: fetched once from Maven Central into ~/.cache/mlops/jars (MLOPS_JARS_DIR).
jars: wheels
	$(PY) -m mlops.local.delta_jars >/dev/null

lint: venv
	$(VENV)/bin/flake8

test: venv node wheels jars lint
	$(PY) -m pytest

test-quick: venv node wheels jars lint
	$(PY) -m pytest -m "not slow"

demo: venv node wheels jars
	$(PY) -m mlops.demo --rows $(DEMO_ROWS)

bench: venv node wheels jars
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.monitoring
	$(PY) -m benchmarks.serving
	$(PY) -m benchmarks.tuning
	$(PY) -m benchmarks.streaming

clean:
	rm -rf build dist .mlops .pytest_cache
