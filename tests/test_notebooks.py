"""Both exploration notebooks run end to end against a real scored table.

* `explore_scored_table.ipynb` runs in a real Jupyter kernel (nbclient) of this venv's
  interpreter, through a kernel spec installed into a temporary JUPYTER_PATH, so it works
  on a fresh machine with no kernels installed.
* `explore_scored_table_databricks.py` runs cell by cell in this process (no `dbutils`:
  the environment variables stand in for the widgets), sharing the test SparkSession.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

from test_explore import build_scored_tables  # noqa: E402  (tests/ is on sys.path under pytest)

REPO = Path(__file__).resolve().parents[1]
IPYNB = REPO / "notebooks" / "explore_scored_table.ipynb"
DATABRICKS = REPO / "notebooks" / "explore_scored_table_databricks.py"
CELL_SEPARATOR = "# COMMAND ----------"


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    return build_scored_tables(tmp_path_factory.mktemp("notebooks"))


@pytest.fixture
def notebook_env(monkeypatch, scored):
    monkeypatch.setenv("SPARK_SCORING_TABLE", scored.embedding)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", scored.tracking_uri)
    monkeypatch.delenv("SPARK_SCORING_KEY", raising=False)
    return scored


def test_ipynb_is_valid_parameterised_and_has_no_outputs():
    nb = nbformat.read(IPYNB, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    assert 'os.environ.get("SPARK_SCORING_TABLE", ".demo/lake/reviews_scored")' in params[0].source
    assert 'os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///.demo/mlflow.db")' in params[0].source


def test_ipynb_runs_in_a_jupyter_kernel(notebook_env, tmp_path, monkeypatch):
    from ipykernel.kernelspec import install
    from nbclient import NotebookClient

    install(kernel_name="spark-scoring-test", display_name="spark-scoring tests", prefix=str(tmp_path))
    kernel_json = tmp_path / "share" / "jupyter" / "kernels" / "spark-scoring-test" / "kernel.json"
    assert sys.executable in kernel_json.read_text()
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel then draws inline (PNG outputs)
    # One local core for the kernel's own SparkSession: the test session keeps running beside it.
    monkeypatch.setenv("PYSPARK_SUBMIT_ARGS", "--master local[1] --conf spark.ui.enabled=false pyspark-shell")

    nb = nbformat.read(IPYNB, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="spark-scoring-test",
        timeout=300,
        resources={"metadata": {"path": str(REPO / "notebooks")}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 3  # throughput, histogram, drift
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"table: {notebook_env.embedding}" in text
    assert "34 rows" in text
    tables = "\n".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "CUDA out of memory" in tables  # the failures table of the newest version


def test_databricks_notebook_runs_cell_by_cell_without_dbutils(notebook_env, spark, monkeypatch, capsys):
    from matplotlib.figure import Figure

    source = DATABRICKS.read_text()
    assert source.startswith("# Databricks notebook source\n")
    cells = [c.strip() for c in source.split(CELL_SEPARATOR)]
    assert len(cells) >= 10
    markdown = [c for c in cells if c.startswith("# MAGIC %md")]
    assert len(markdown) >= 5
    assert all(line.startswith("# MAGIC") for c in markdown for line in c.splitlines()[1:] if line)
    assert "dbutils.widgets.get(" in source

    monkeypatch.chdir(REPO / "notebooks")
    namespace: dict = {"__name__": "__main__"}
    for i, cell in enumerate(cells):
        code = "\n".join(line for line in cell.splitlines() if not line.startswith("# MAGIC"))
        try:
            exec(compile(code, f"{DATABRICKS.name}[cell {i}]", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"cell {i} of {DATABRICKS.name} failed:\n{cell}") from exc

    assert namespace["dbutils"] is None
    assert namespace["TABLE"] == notebook_env.embedding and namespace["KEY"] is None
    assert namespace["spark"] is spark  # get_spark() reuses the active session
    for name in ("fig_throughput", "fig_histogram", "fig_drift"):
        assert isinstance(namespace[name], Figure), name
    comparison = namespace["comparison"]
    assert (comparison.old_version, comparison.new_version) == (1, 2)
    assert comparison.rows_rescored == 34 and comparison.psi > 1.0
    assert namespace["failed"]["count"].tolist() == [1]
    assert namespace["runs"]["version"].tolist() == [0, 1, 2]
    assert "34 rows" in capsys.readouterr().out


def test_notebooks_default_to_the_demo_table(monkeypatch):
    monkeypatch.delenv("SPARK_SCORING_TABLE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    source = DATABRICKS.read_text().split(CELL_SEPARATOR)[1]
    namespace: dict = {}
    exec(compile(source, "parameters", "exec"), namespace)
    assert (namespace["TABLE"], namespace["TRACKING_URI"]) == (
        ".demo/lake/reviews_scored",
        "sqlite:///.demo/mlflow.db",
    )
    assert os.environ.get("SPARK_SCORING_TABLE") is None
