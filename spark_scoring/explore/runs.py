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

from spark_scoring.contract import (
    INT_FIELDS,
    MODEL_URI,
    MODEL_VERSION,
    RUN_ID,
    SOURCE_VERSION,
    CommitRecord,
    strip_prefix,
)
from spark_scoring.errors import TrackingError
from spark_scoring.explore._common import _lakehouse

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

#: The columns of the integer commit-metadata keys (key without its prefix -> CommitRecord field).
_INT_COLUMNS: dict[str, str] = strip_prefix({CommitRecord.metadata_key(f): f for f in INT_FIELDS})
#: The MLflow param holding the model version (logged by the pipeline with the run's params).
_PARAM_MODEL_VERSION = "model_version"
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
#: Leading columns, in this order; the rest follow sorted. Commit-metadata columns are named
#: by their key without the prefix (see `CommitRecord`); status, times and metrics are MLflow's.
_RUNS_COLUMN_ORDER = (
    "version",
    "timestamp",
    "operation",
    RUN_ID,
    "job",
    "mode",
    "status",
    MODEL_URI,
    MODEL_VERSION,
    "rows_read",
    "rows_scored",
    "rows_carried",
    "rows_failed",
    "seconds_total",
    "rows_per_second",
    "source_table",
    "source_version_start",
    SOURCE_VERSION,
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
        # Every spark_scoring.* key the commit carries ("" reads as missing)...
        row.update({k: None if v == "" else v for k, v in strip_prefix(info.metadata).items()})
        # ...with the integers as the contract reads them (None: not a spark-scoring commit).
        record = CommitRecord.from_metadata(info.metadata) or CommitRecord()
        row.update({c: getattr(record, f) for c, f in _INT_COLUMNS.items() if c in row})
        rows.append(row)
    commits = pd.DataFrame(rows)
    if RUN_ID not in commits.columns:
        commits[RUN_ID] = None
    if not commits.empty:
        commits["timestamp"] = pd.to_datetime(commits["timestamp"], utc=True)
    for name in _INT_COLUMNS:
        if name in commits.columns:
            commits[name] = commits[name].astype("Int64")

    mlflow_rows = _mlflow_runs([r for r in commits[RUN_ID].dropna().unique()], tracking_uri)
    runs = pd.DataFrame(
        mlflow_rows,
        columns=[
            RUN_ID,
            "status",
            "start_time",
            "end_time",
            "mlflow_model_version",
            *[f"metric.{m}" for m in _RUN_METRICS],
        ],
    )
    out = commits.merge(runs, on=RUN_ID, how="left")
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
    if MODEL_VERSION in out.columns:
        ml_version = out[MODEL_VERSION].fillna(ml_version)
    out[MODEL_VERSION] = ml_version
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
                RUN_ID: run_id,
                "status": run.info.status,
                "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True)
                if run.info.start_time
                else pd.NaT,
                "end_time": pd.to_datetime(run.info.end_time, unit="ms", utc=True)
                if run.info.end_time
                else pd.NaT,
                "mlflow_model_version": run.data.params.get(_PARAM_MODEL_VERSION),
                **{f"metric.{m}": metrics.get(m, math.nan) for m in _RUN_METRICS},
            }
        )
    return out
