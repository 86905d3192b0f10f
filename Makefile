# spark-scoring developer targets. `make test` and `make demo` are all the set-up a new
# machine needs: both install the virtual environment first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JARS_STAMP := $(VENV)/.delta-jars
PYTEST := $(BIN)/python -m pytest
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN)/python)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-slow test-cluster test-gpu test-connect test-jvm test-jvm-all test-all bench lint clean

install: $(STAMP) $(JARS_STAMP)

# torch goes in first and alone, so its pin decides the build (PyPI's Linux wheel is the
# CUDA one, a few GB with its nvidia-* wheels; it runs on the CPU as well).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The Delta Lake JVM connector jars matching the pinned delta-spark, from Maven Central into
# the venv (spark_scoring/jars.py). Without Maven access the install still succeeds: the
# delta-rs engine needs no jars, and lakehouse.engine=delta-spark then says how to get them.
# The stamp is only written on success, so the next `make install` tries again.
$(JARS_STAMP): $(STAMP)
	@$(BIN)/python -m spark_scoring.jars >/dev/null && touch $(JARS_STAMP) && echo "Delta Lake jars: $$($(BIN)/python -m spark_scoring.jars --check)" \
	  || echo "make install: WARNING: the Delta Lake jars were not fetched (see above); the delta-rs engine works without them"

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

# Spark Connect: its own pytest process (pyspark refuses a Connect session beside a classic one).
test-connect: install
	$(BIN)/python tests/run_pytest.py -m connect

# The end-to-end suites again, their jobs on the JVM engine (lakehouse.engine delta-spark;
# `make test` runs them on delta-rs, plus every JVM-only and cross-engine test). Needs the
# Delta jars (`make install`). CI runs test-jvm (the pipeline and sequence suites, ~15 min on
# 2 cores); test-jvm-all adds the nights, reliability and crash suites (about 45 min more).
JVM_SUITES := tests/test_pipeline.py tests/test_pipeline_sequences.py
JVM_SUITES_ALL := $(JVM_SUITES) tests/test_nights.py tests/test_reliability.py tests/test_crash.py
JVM_MARKS := 'not cluster and not gpu and not bench and not connect'
test-jvm: install
	SPARK_SCORING_TEST_ENGINE=delta-spark $(BIN)/python tests/run_pytest.py -m $(JVM_MARKS) $(JVM_SUITES)

test-jvm-all: install
	SPARK_SCORING_TEST_ENGINE=delta-spark $(BIN)/python tests/run_pytest.py -m $(JVM_MARKS) $(JVM_SUITES_ALL)

test-all: install
	$(BIN)/python tests/run_pytest.py -m 'not connect'
	$(BIN)/python tests/run_pytest.py -m connect
	SPARK_SCORING_TEST_ENGINE=delta-spark $(BIN)/python tests/run_pytest.py -m $(JVM_MARKS) $(JVM_SUITES_ALL)

bench: install
	$(BIN)/python -m bench.run

lint: install
	$(BIN)/ruff check spark_scoring tests jobs bench
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .demo build *.egg-info
