"""Notebook helpers to explore a scored output table: versions, runs, drift and failures.

Every table access goes through the `Lakehouse` interface (`open_lakehouse`), so the same
calls work on the JVM Delta connector (Databricks, clusters with the Delta jars) and on
delta-rs (pip-only installs). Heavy work (joins, group-bys) runs in Spark; only small
results come back to the driver: counts, one double per row for the distribution
statistics, and samples.

Typical use in a notebook::

    from spark_scoring import explore

    explore.load_scored("lake/reviews_scored", as_pandas=True).head()
    runs = explore.list_runs("lake/reviews_scored", tracking_uri="sqlite:///mlflow.db")
    cmp = explore.compare_versions("lake/reviews_scored", 3, 4)
    cmp.summary(); cmp.by_partition
    explore.failures("lake/reviews_scored")
    explore.plot_drift("lake/reviews_scored")

Plots are built with matplotlib and returned as `Figure` objects (never shown), so they
render as a cell's result in Jupyter and Databricks and can be saved with `savefig`.

Where things live (import from here; the modules are the reading order):
    _common   session, lakehouse, version and key resolution; `load_scored`
    stats     `psi`, `ks_statistic` (numpy only)
    _measure  the per-row measure (score or embedding norm) and the narrow frames it rides in
    compare   `compare_versions`, `VersionComparison`
    failures  `failures`
    drift     `drift_history`
    runs      `list_runs` (Delta history joined with MLflow)
    plots     `plot_score_histogram`, `plot_drift`, `plot_throughput`

Column names and commit-metadata keys come from `spark_scoring.contract`.
"""

from __future__ import annotations

from spark_scoring.explore._common import DEFAULT_MAX_VALUES as DEFAULT_MAX_VALUES
from spark_scoring.explore._common import load_scored
from spark_scoring.explore.compare import VersionComparison, compare_versions
from spark_scoring.explore.drift import drift_history
from spark_scoring.explore.failures import failures
from spark_scoring.explore.plots import PALETTE as PALETTE
from spark_scoring.explore.plots import plot_drift, plot_score_histogram, plot_throughput
from spark_scoring.explore.runs import list_runs
from spark_scoring.explore.stats import PSI_MAJOR as PSI_MAJOR
from spark_scoring.explore.stats import PSI_MODERATE as PSI_MODERATE
from spark_scoring.explore.stats import ks_statistic, psi

__all__ = [
    "VersionComparison",
    "compare_versions",
    "drift_history",
    "failures",
    "ks_statistic",
    "list_runs",
    "load_scored",
    "plot_drift",
    "plot_score_histogram",
    "plot_throughput",
    "psi",
]
