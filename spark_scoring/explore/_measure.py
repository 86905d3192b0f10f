"""The per-row measure whose distribution is compared, and the narrow frames that carry it.

The measure is the `score` of classification tables or the L2 norm of an `embedding`
(any numeric column when asked). `_compact` narrows a scored table to what the statistics
read (keys, partition label, the measure, a failed flag, lineage), so that a comparison
caches a few columns instead of rescanning the table and its embeddings per statistic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from spark_scoring.contract import ERROR, INPUT_HASH, RUN_ID, SCORED_AT
from spark_scoring.errors import UsageError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from spark_scoring.lakehouse.base import Lakehouse

_PARTITION_COL = "__partition"
_VALUE_COL = "__value"
_ALL_ROWS = "(all rows)"
#: The lineage columns a compact frame keeps (as `__<name>`): a row was re-scored when its
#: run or time differs, and its input changed when its hash differs.
_DIFF_LINEAGE = (RUN_ID, SCORED_AT, INPUT_HASH)


def _measure(df: DataFrame, measure: str, table: str) -> tuple[str, Column]:
    """The per-row value whose distribution is compared: (name, Spark column)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, NumericType

    fields = {f.name: f.dataType for f in df.schema.fields}
    if measure == "auto":
        if isinstance(fields.get("score"), NumericType):
            measure = "score"
        elif isinstance(fields.get("embedding"), ArrayType):
            measure = "embedding_norm"
        else:
            raise UsageError(
                f"{table} has neither a numeric `score` nor an `embedding` column to measure; "
                f"pass measure='<numeric column>' (numeric columns: {[n for n, t in fields.items() if isinstance(t, NumericType)]})"
            )
    if measure == "embedding_norm":
        if not isinstance(fields.get("embedding"), ArrayType):
            raise UsageError(
                f"measure='embedding_norm' needs an `embedding` array column; {table} has none"
            )
        squares = F.aggregate(
            "embedding",
            F.lit(0.0).cast("double"),
            lambda acc, x: acc + x.cast("double") * x.cast("double"),
        )
        return measure, F.sqrt(squares)
    if not isinstance(fields.get(measure), NumericType):
        allowed = [
            "auto",
            "embedding_norm",
            *[n for n, t in fields.items() if isinstance(t, NumericType)],
        ]
        raise UsageError(
            f"measure={measure!r} is not a numeric column of {table}; allowed: {allowed}"
        )
    return measure, F.col(measure).cast("double")


def _partition_label(parts: Sequence[str]) -> Column:
    from pyspark.sql import functions as F

    if not parts:
        return F.lit(_ALL_ROWS)
    pieces = [
        F.concat(F.lit(f"{p}="), F.coalesce(F.col(p).cast("string"), F.lit("null"))) for p in parts
    ]
    return F.concat_ws("/", *pieces)


def _compact(df: DataFrame, keys: Sequence[str], parts: Sequence[str], value: Column) -> DataFrame:
    """The columns the statistics need: keys, partition label, the measure (null where the row
    failed), a failed flag, lineage, and the label of classification tables."""
    from pyspark.sql import functions as F

    failed = F.col(ERROR).isNotNull() if ERROR in df.columns else F.lit(False)
    cols = [F.col(k) for k in keys]
    cols += [
        _partition_label(parts).alias(_PARTITION_COL),
        F.when(~failed, value).alias(_VALUE_COL),
        failed.cast("int").alias("__failed"),
    ]
    for name in _DIFF_LINEAGE:
        column = F.col(name) if name in df.columns else F.lit(None).cast("string")
        cols.append(column.alias(f"__{name}"))
    if "label" in df.columns:
        cols.append(F.when(~failed, F.col("label")).alias("__label"))
    return df.select(*cols)


def _measured_values(
    lh: Lakehouse, table: str, version: int, measure: str, max_values: int | None
) -> tuple[str, np.ndarray]:
    """(measure name, the measure of the rows of `version` that scored); a seeded sample of
    about `max_values` of them when the version holds more rows (counted from the Delta log)."""
    df = lh.read(table, version)
    name, value = _measure(df, measure, table)
    compact = _compact(df, [], [], value).select(_VALUE_COL).where(f"{_VALUE_COL} IS NOT NULL")
    if max_values is not None:
        counts = [f.num_records for f in lh.files(table, version)]
        total = sum(counts) if None not in counts else compact.count()
        if total > max_values:
            compact = compact.sample(fraction=max_values / total, seed=17)
    return name, compact.toPandas()[_VALUE_COL].astype(float).to_numpy()
