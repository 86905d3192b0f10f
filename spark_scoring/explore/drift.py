"""Drift over a table's history: PSI and KS of each version against the one before it."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from spark_scoring.contract import RUN_ID, CommitRecord
from spark_scoring.errors import UsageError
from spark_scoring.explore._common import DEFAULT_MAX_VALUES, _lakehouse
from spark_scoring.explore._measure import _measured_values
from spark_scoring.explore.stats import ks_statistic, psi

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def drift_history(
    table: str,
    *,
    max_versions: int = 30,
    measure: str = "auto",
    bins: int = 10,
    max_values: int | None = DEFAULT_MAX_VALUES,
    spark: SparkSession | None = None,
    engine: str = "auto",
) -> pd.DataFrame:
    """PSI and KS of each version against the version before it (the last `max_versions`).

    Whole-table distributions are compared (rows that scored), so a night that re-scored one
    partition out of thirty moves the index less than `compare_versions(...).by_partition`.

    `measure`, `bins` and `max_values` are as in `compare_versions`.

    Returns:
        pandas DataFrame with `version`, `timestamp`, `previous_version`, `rows`, `mean`,
        `psi`, `ks`, `run_id` (NaN statistics for the first version listed).
    """
    if max_versions < 2:
        raise UsageError(
            f"max_versions={max_versions} must be >= 2 to compare consecutive versions"
        )
    lh = _lakehouse(spark, engine)
    history = {c.version: c for c in lh.history(table)}
    latest = lh.latest_version(table)
    versions = [v for v in range(max(0, latest - max_versions + 1), latest + 1)]
    records = []
    previous: tuple[int, np.ndarray] | None = None
    name = measure
    for v in versions:
        name, vals = _measured_values(lh, table, v, measure, max_values)
        info = history.get(v)
        record = CommitRecord.from_metadata(info.metadata) if info else None
        records.append(
            {
                "version": v,
                "timestamp": info.timestamp if info else None,
                "previous_version": previous[0] if previous else None,
                "rows": int(vals.size),
                "mean": float(vals.mean()) if vals.size else math.nan,
                "psi": psi(previous[1], vals, bins=bins) if previous else math.nan,
                "ks": ks_statistic(previous[1], vals) if previous else math.nan,
                RUN_ID: record.run_id if record else None,
            }
        )
        previous = (v, vals)
    out = pd.DataFrame(records)
    out["timestamp"] = pd.to_datetime(out["timestamp"], utc=True)
    out["previous_version"] = out["previous_version"].astype("Int64")
    out.attrs.update(table=table, measure=name)
    return out
