# spark-scoring developer targets. `make test` and `make demo` are all the set-up a new
# machine needs: both install the virtual environment first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/python -m pytest
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN)/python)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-slow test-cluster test-gpu test-all bench lint clean

install: $(STAMP)

# torch goes in first and alone: any other spec resolves to the CUDA build (several GB).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python -m spark_scoring.demo

# tests/run_pytest.py turns pytest's "no tests ran" (exit 5) into a failure.
test: install
	$(BIN)/python tests/run_pytest.py

test-slow: install
	$(BIN)/python tests/run_pytest.py -m slow

test-cluster: install
	$(BIN)/python tests/run_pytest.py -m cluster

test-gpu: install
	$(BIN)/python tests/run_pytest.py -m gpu

test-all: install
	$(BIN)/python tests/run_pytest.py -m ''

bench: install
	$(BIN)/python -m bench.run

lint: install
	$(BIN)/ruff check spark_scoring tests jobs bench
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .demo build *.egg-info
