"""Which runs wrote a scored table: its Delta history joined with their MLflow runs.

The commit metadata says what each commit holds (run id, mode, counts, model); the MLflow
run adds its status, timings and throughput. The commit is the authority where both speak.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from spark_scoring.errors import TrackingError
from spark_scoring.explore._common import META_PREFIX, _lakehouse

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

#: Commit metadata keys whose values are integers.
_INT_META = ("source_version", "source_version_start", "rows_scored", "rows_carried", "rows_failed")
#: MLflow metrics copied into `list_runs` (the shared metric names).
_RUN_METRICS = (
    "rows_read",
    "rows_scored",
    "rows_carried",
    "rows_failed",
    "rows_per_second",
    "seconds_plan",
    "seconds_load",
    "seconds_score",
    "seconds_commit",
    "seconds_total",
    "padding_efficiency",
    "batches",
)
_COUNT_METRICS = ("rows_read", "rows_scored", "rows_carried", "rows_failed", "batches")
_RUNS_COLUMN_ORDER = (
    "version",
    "timestamp",
    "operation",
    "run_id",
    "job",
    "mode",
    "status",
    "model_uri",
    "model_version",
    "rows_read",
    "rows_scored",
    "rows_carried",
    "rows_failed",
    "seconds_total",
    "rows_per_second",
    "source_table",
    "source_version_start",
    "source_version",
    "partitions",
    "start_time",
    "end_time",
)


def list_runs(
    table: str,
    *,
    tracking_uri: str | None = None,
    spark: SparkSession | None = None,
    engine: str = "auto",
) -> pd.DataFrame:
    """The output table's history joined with the MLflow runs that wrote it.

    One row per table version, oldest first: `version`, `timestamp`, `operation`, every
    `spark_scoring.*` commit metadata key without its prefix (`run_id`, `job`, `mode`,
    `model_uri`, `model_version`, `rows_scored`, ...), then from the MLflow run found by
    `run_id`: `status`, `start_time`, `end_time`, the shared metrics (`rows_read`,
    `seconds_total`, `rows_per_second`, `padding_efficiency`, ...) and `mlflow_run_found`.
    Counts and the model version come from the commit when it has them and from MLflow
    otherwise. Commits without a run (table creation by other tools, OPTIMIZE) and runs
    missing from MLflow keep NaN in the MLflow columns.

    Args:
        table: path or catalog name of the scored output table.
        tracking_uri: MLflow tracking URI; None uses MLflow's default (`MLFLOW_TRACKING_URI`).
        spark: session to use; None uses `get_spark()`.
        engine: lakehouse backend.

    Raises:
        TrackingError: the MLflow tracking store could not be queried.
    """
    lh = _lakehouse(spark, engine)
    history = sorted(lh.history(table), key=lambda c: c.version)
    rows = []
    for info in history:
        row: dict[str, Any] = {
            "version": info.version,
            "timestamp": info.timestamp,
            "operation": info.operation,
        }
        for key, value in (info.metadata or {}).items():
            if str(key).startswith(META_PREFIX):
                row[key[len(META_PREFIX) :]] = None if value == "" else value
        rows.append(row)
    commits = pd.DataFrame(rows)
    if "run_id" not in commits.columns:
        commits["run_id"] = None
    if not commits.empty:
        commits["timestamp"] = pd.to_datetime(commits["timestamp"], utc=True)
    for name in _INT_META:
        if name in commits.columns:
            commits[name] = pd.to_numeric(commits[name], errors="coerce").astype("Int64")

    mlflow_rows = _mlflow_runs([r for r in commits["run_id"].dropna().unique()], tracking_uri)
    runs = pd.DataFrame(
        mlflow_rows,
        columns=[
            "run_id",
            "status",
            "start_time",
            "end_time",
            "mlflow_model_version",
            *[f"metric.{m}" for m in _RUN_METRICS],
        ],
    )
    out = commits.merge(runs, on="run_id", how="left")
    out["mlflow_run_found"] = out["status"].notna()
    # The commit is the authority on what the table holds; MLflow fills what it lacks.
    for name in _RUN_METRICS:
        metric = out.pop(f"metric.{name}").astype(float)
        if name in out.columns:
            metric = out[name].astype("Float64").fillna(metric.astype("Float64"))
        out[name] = (
            metric.round().astype("Int64") if name in _COUNT_METRICS else metric.astype(float)
        )
    ml_version = out.pop("mlflow_model_version")
    if "model_version" in out.columns:
        ml_version = out["model_version"].fillna(ml_version)
    out["model_version"] = ml_version
    first = [c for c in _RUNS_COLUMN_ORDER if c in out.columns]
    out = out[first + sorted(c for c in out.columns if c not in first)]
    out = out.sort_values("version").reset_index(drop=True)
    out.attrs["table"] = table
    return out


def _mlflow_runs(run_ids: Sequence[str], tracking_uri: str | None) -> list[dict[str, Any]]:
    if not run_ids:
        return []
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    out = []
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                log.info(
                    "run %s is not in the MLflow store %s", run_id, tracking_uri or "(default)"
                )
                continue
            raise TrackingError(
                f"could not read MLflow run {run_id} from tracking URI {tracking_uri or '(default)'}: {exc}; "
                "pass tracking_uri= (or set MLFLOW_TRACKING_URI) to the store the scoring job logged to"
            ) from exc
        metrics = run.data.metrics
        out.append(
            {
                "run_id": run_id,
                "status": run.info.status,
                "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True)
                if run.info.start_time
                else pd.NaT,
                "end_time": pd.to_datetime(run.info.end_time, unit="ms", utc=True)
                if run.info.end_time
                else pd.NaT,
                "mlflow_model_version": run.data.params.get("model_version"),
                **{f"metric.{m}": metrics.get(m, math.nan) for m in _RUN_METRICS},
            }
        )
    return out
