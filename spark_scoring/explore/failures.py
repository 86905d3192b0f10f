"""Why rows failed to score: the error messages of a version, counted, with sample keys."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from spark_scoring.contract import ERROR
from spark_scoring.errors import UsageError
from spark_scoring.explore._common import _lakehouse, _resolve_key, _resolve_version
from spark_scoring.explore._measure import _partition_label

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def failures(
    table: str,
    version: int | None = None,
    *,
    sample: int = 5,
    key: str | Sequence[str] | None = None,
    spark: SparkSession | None = None,
    engine: str = "auto",
) -> pd.DataFrame:
    """Error messages of the rows that failed to score, most frequent first.

    Args:
        table: path or catalog name of the scored output table.
        version: Delta version (None: the latest).
        sample: how many keys (smallest first) to list per message.
        key: the key column(s); None resolves it like `compare_versions`.
        spark: session to use; None uses `get_spark()`.
        engine: lakehouse backend.

    Returns:
        pandas DataFrame with `error`, `count`, `share` (of the failed rows), `partitions`
        (how many partitions hold the message) and `sample_keys` (a list; tuples for
        composite keys). Empty (same columns) when no row failed.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if sample < 0:
        raise UsageError(f"sample={sample} must be >= 0")
    lh = _lakehouse(spark, engine)
    v = _resolve_version(lh, table, version)
    df = lh.read(table, v)
    columns = [ERROR, "count", "share", "partitions", "sample_keys"]
    if ERROR not in df.columns:
        raise UsageError(
            f"{table} v{v} has no `{ERROR}` column; is it a spark-scoring output table?"
        )
    parts = list(lh.partition_columns(table, v))
    keys, _ = _resolve_key(lh, table, df.columns, parts, key)
    failed = df.where(F.col(ERROR).isNotNull())
    counts = (
        failed.groupBy(ERROR)
        .agg(
            F.count(F.lit(1)).alias("count"),
            F.countDistinct(_partition_label(parts)).alias("partitions"),
        )
        .toPandas()
    )
    if counts.empty:
        return pd.DataFrame(columns=columns)
    samples: dict[str, list[Any]] = {}
    if sample:
        rank = F.row_number().over(Window.partitionBy(ERROR).orderBy(*keys))
        picked = (
            failed.select(ERROR, *keys).withColumn("__rank", rank).where(F.col("__rank") <= sample)
        )
        for row in picked.orderBy(ERROR, "__rank").collect():
            value = row[keys[0]] if len(keys) == 1 else tuple(row[k] for k in keys)
            samples.setdefault(row[ERROR], []).append(value)
    counts["share"] = counts["count"] / counts["count"].sum()
    counts["sample_keys"] = [samples.get(e, []) for e in counts[ERROR]]
    counts = counts.sort_values(["count", ERROR], ascending=[False, True]).reset_index(drop=True)
    counts.attrs["table"] = table
    counts.attrs["version"] = v
    return counts[columns]
