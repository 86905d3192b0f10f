"""What changed between two versions of a scored table: rows by key, failures, label mix, drift.

`compare_versions` narrows both versions to a few columns (`_measure._compact`), caches them,
and computes the row-level diff in Spark; only per-partition counts and one double per row
(the measure) come back to the driver for the statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from spark_scoring.contract import INPUT_HASH, RUN_ID, SCORED_AT
from spark_scoring.errors import UsageError
from spark_scoring.explore._common import (
    DEFAULT_MAX_VALUES,
    _lakehouse,
    _resolve_key,
    _resolve_version,
)
from spark_scoring.explore._measure import (
    _DIFF_LINEAGE,
    _PARTITION_COL,
    _VALUE_COL,
    _compact,
    _measure,
)
from spark_scoring.explore.stats import _ks_pvalue, ks_statistic, psi

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

_PARTITION_COUNTS = (
    "rows_old",
    "rows_new",
    "added",
    "removed",
    "rescored",
    "unchanged",
    "failed_old",
    "failed_new",
)


@dataclass(frozen=True, eq=False)
class VersionComparison:
    """What changed in a scored table between two versions.

    Row counts compare rows by key: `rows_added` (key only in the new version),
    `rows_removed` (only in the old), `rows_rescored` (in both, written by another run or
    at another time: `run_id` or `scored_at` differ), `rows_unchanged` (in both, same run and
    time). Distribution statistics compare `measure` (the `score`, or the L2 norm of the
    `embedding`) over rows that scored without error: `values_old` and `values_new` of them
    (a sample when a version holds more than `max_values` rows).

    Attributes:
        label_mix: classification tables (text or image): one row per label with `count_old`,
            `count_new`, `share_old`, `share_new`, `share_change` (None for other tasks).
        by_partition: one row per partition: `rows_old`, `rows_new`, `added`, `removed`,
            `rescored`, `unchanged`, `failed_old`, `failed_new`, `mean_old`, `mean_new`,
            `psi`, `ks`.
    """

    table: str
    old_version: int
    new_version: int
    key: tuple[str, ...]
    key_source: str
    rows_old: int
    rows_new: int
    rows_added: int
    rows_removed: int
    rows_rescored: int
    rows_unchanged: int
    rows_rescored_input_changed: int
    failed_old: int
    failed_new: int
    measure: str
    values_old: int
    values_new: int
    psi: float
    ks: float
    ks_pvalue: float
    label_mix: pd.DataFrame | None
    by_partition: pd.DataFrame

    def summary(self) -> pd.Series:
        """The scalar results as one pandas Series (renders as a neat table in notebooks)."""
        names = [
            "old_version",
            "new_version",
            "rows_old",
            "rows_new",
            "rows_added",
            "rows_removed",
            "rows_rescored",
            "rows_unchanged",
            "rows_rescored_input_changed",
            "failed_old",
            "failed_new",
            "measure",
            "values_old",
            "values_new",
            "psi",
            "ks",
            "ks_pvalue",
        ]
        values = {
            "table": self.table,
            "key": ", ".join(self.key),
            **{n: getattr(self, n) for n in names},
        }
        return pd.Series(values, name=f"v{self.old_version} -> v{self.new_version}", dtype=object)


def compare_versions(
    table: str,
    old_version: int,
    new_version: int,
    *,
    key: str | Sequence[str] | None = None,
    measure: str = "auto",
    bins: int = 10,
    max_values: int | None = DEFAULT_MAX_VALUES,
    spark: SparkSession | None = None,
    engine: str = "auto",
) -> VersionComparison:
    """Compare two versions of a scored table: rows added/removed/re-scored, label mix, drift.

    Args:
        table: path or catalog name of the scored output table.
        old_version, new_version: the Delta versions to compare (negative: count back from
            the latest, -1 is the latest).
        key: the row key column(s). None: the `spark_scoring.key` commit metadata when the
            commits carry it, else the table's first column (the output contract puts the
            key first) when that is not a partition, lineage or output column.
        measure: "auto" (`score` when the table has it, else the `embedding` L2 norm),
            "score", "embedding_norm", or the name of any numeric column.
        bins: quantile bins of the old distribution for the PSI.
        max_values: the distribution statistics use a seeded random sample of about this
            many rows per version when a version has more (None: every row). Row counts,
            failures and the label mix are always exact.
        spark: session to use; None uses `get_spark()`.
        engine: lakehouse backend.

    Raises:
        UsageError: a version does not exist, the key cannot be found, or the table has no
            column to measure.
    """

    lh = _lakehouse(spark, engine)
    old_v = _resolve_version(lh, table, old_version)
    new_v = _resolve_version(lh, table, new_version)
    old_df = lh.read(table, old_v)
    new_df = lh.read(table, new_v)
    parts = list(lh.partition_columns(table, new_v))
    keys, key_source = _resolve_key(lh, table, new_df.columns, parts, key)
    for name, df in (("old", old_df), ("new", new_df)):
        missing = [k for k in keys if k not in df.columns]
        if missing:
            raise UsageError(
                f"key column(s) {missing} are not in the {name} version of {table}; columns: {df.columns}"
            )

    measure_name, old_value = _measure(old_df, measure, table)
    _, new_value = _measure(new_df, measure, table)
    # Every statistic below reads these two narrow frames (key, partition, one double,
    # lineage): cached once instead of scanning the table (and its embeddings) per statistic.
    old_c = _compact(old_df, keys, parts, old_value).persist()
    new_c = _compact(new_df, keys, parts, new_value).persist()
    try:
        return _compare(
            table, old_v, new_v, keys, key_source, measure_name, old_c, new_c, bins, max_values
        )
    finally:
        old_c.unpersist()
        new_c.unpersist()


def _compare(
    table: str,
    old_v: int,
    new_v: int,
    keys: list[str],
    key_source: str,
    measure_name: str,
    old_c: DataFrame,
    new_c: DataFrame,
    bins: int,
    max_values: int | None,
) -> VersionComparison:
    from pyspark.sql import functions as F

    # Row-level diff by key, computed in Spark; only per-partition counts come back.
    def side(df: DataFrame, tag: str) -> DataFrame:
        cols = [F.col(k) for k in keys]
        cols += [F.lit(True).alias(f"__in_{tag}"), F.col(_PARTITION_COL).alias(f"__part_{tag}")]
        cols += [F.col(f"__{name}").alias(f"__{name}_{tag}") for name in _DIFF_LINEAGE]
        return df.select(*cols)

    def both_equal(name: str) -> Column:
        """The lineage column `name` is the same in both versions (null-safe)."""
        return F.col(f"__{name}_o").eqNullSafe(F.col(f"__{name}_n"))

    joined = side(old_c, "o").join(side(new_c, "n"), on=keys, how="full_outer")
    same = both_equal(RUN_ID) & both_equal(SCORED_AT)
    category = (
        F.when(F.col("__in_o").isNull(), F.lit("added"))
        .when(F.col("__in_n").isNull(), F.lit("removed"))
        .when(~same, F.lit("rescored"))
        .otherwise(F.lit("unchanged"))
    )
    input_changed = (
        ~both_equal(INPUT_HASH) & F.col("__in_o").isNotNull() & F.col("__in_n").isNotNull()
    )
    diff = (
        joined.select(
            F.coalesce(F.col("__part_n"), F.col("__part_o")).alias(_PARTITION_COL),
            category.alias("category"),
            (input_changed & ~same).cast("int").alias("input_changed"),
        )
        .groupBy(_PARTITION_COL, "category")
        .agg(F.count(F.lit(1)).alias("rows"), F.sum("input_changed").alias("input_changed"))
        .toPandas()
    )
    counts = diff.pivot_table(
        index=_PARTITION_COL, columns="category", values="rows", aggfunc="sum", fill_value=0
    )
    for cat in ("added", "removed", "rescored", "unchanged"):
        if cat not in counts.columns:
            counts[cat] = 0
    counts = counts[["added", "removed", "rescored", "unchanged"]].astype(int)

    old_agg, new_agg = _aggregate(old_c), _aggregate(new_c)
    old_vals = _collect_values(old_c, old_agg, max_values)
    new_vals = _collect_values(new_c, new_agg, max_values)
    by_partition = _partition_stats(old_agg, new_agg, old_vals, new_vals, bins).join(
        counts, how="outer"
    )
    by_partition = by_partition.fillna({c: 0 for c in _PARTITION_COUNTS})
    for col in _PARTITION_COUNTS:
        by_partition[col] = by_partition[col].astype(int)
    by_partition = by_partition[[*_PARTITION_COUNTS, "mean_old", "mean_new", "psi", "ks"]]
    by_partition = (
        by_partition.sort_index()
        .reset_index()
        .rename(columns={"index": "partition", _PARTITION_COL: "partition"})
    )

    ks = ks_statistic(old_vals[_VALUE_COL], new_vals[_VALUE_COL])
    total = counts.sum()
    return VersionComparison(
        table=table,
        old_version=old_v,
        new_version=new_v,
        key=tuple(keys),
        key_source=key_source,
        rows_old=int(by_partition["rows_old"].sum()),
        rows_new=int(by_partition["rows_new"].sum()),
        rows_added=int(total["added"]),
        rows_removed=int(total["removed"]),
        rows_rescored=int(total["rescored"]),
        rows_unchanged=int(total["unchanged"]),
        rows_rescored_input_changed=int(diff["input_changed"].fillna(0).sum()),
        failed_old=int(by_partition["failed_old"].sum()),
        failed_new=int(by_partition["failed_new"].sum()),
        measure=measure_name,
        values_old=len(old_vals),
        values_new=len(new_vals),
        psi=psi(old_vals[_VALUE_COL], new_vals[_VALUE_COL], bins=bins),
        ks=ks,
        ks_pvalue=_ks_pvalue(old_vals[_VALUE_COL], new_vals[_VALUE_COL], ks),
        label_mix=_label_mix(old_agg, new_agg) if "__label" in old_c.columns else None,
        by_partition=by_partition,
    )


def _aggregate(compact: DataFrame) -> pd.DataFrame:
    """Exact counts in one Spark job: rows, failed rows and scored rows per partition (and
    per label for classification tables)."""
    from pyspark.sql import functions as F

    groups = [_PARTITION_COL] + (["__label"] if "__label" in compact.columns else [])
    return (
        compact.groupBy(*groups)
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum("__failed").alias("failed"),
            F.count(_VALUE_COL).alias("measured"),
        )
        .toPandas()
    )


def _collect_values(compact: DataFrame, agg: pd.DataFrame, max_values: int | None) -> pd.DataFrame:
    """(partition label, measure) of the rows that scored, as pandas (16 bytes a row); a
    seeded random sample of about `max_values` of them when there are more."""
    measured = int(agg["measured"].sum()) if not agg.empty else 0
    rows = compact.where(f"{_VALUE_COL} IS NOT NULL").select(_PARTITION_COL, _VALUE_COL)
    if max_values is not None and measured > max_values:
        rows = rows.sample(fraction=max_values / measured, seed=17)
    pdf = rows.toPandas()
    pdf[_VALUE_COL] = pdf[_VALUE_COL].astype(float)
    return pdf


def _partition_stats(
    old_agg: pd.DataFrame,
    new_agg: pd.DataFrame,
    old_vals: pd.DataFrame,
    new_vals: pd.DataFrame,
    bins: int,
) -> pd.DataFrame:
    def rows(agg: pd.DataFrame, side: str) -> pd.DataFrame:
        per_part = agg.groupby(_PARTITION_COL)[["rows", "failed"]].sum()
        return per_part.rename(columns={"rows": f"rows_{side}", "failed": f"failed_{side}"})

    stats = rows(old_agg, "old").join(rows(new_agg, "new"), how="outer")
    old_groups = dict(tuple(old_vals.groupby(_PARTITION_COL)[_VALUE_COL]))
    new_groups = dict(tuple(new_vals.groupby(_PARTITION_COL)[_VALUE_COL]))
    empty = np.array([], dtype=float)
    records = {}
    for part in stats.index.union(pd.Index(list(old_groups) + list(new_groups))):
        o = old_groups.get(part, empty)
        n = new_groups.get(part, empty)
        records[part] = {
            "mean_old": float(np.mean(o)) if len(o) else math.nan,
            "mean_new": float(np.mean(n)) if len(n) else math.nan,
            "psi": psi(o, n, bins=bins),
            "ks": ks_statistic(o, n),
        }
    return stats.join(pd.DataFrame.from_dict(records, orient="index"), how="outer")


def _label_mix(old_agg: pd.DataFrame, new_agg: pd.DataFrame) -> pd.DataFrame:
    """Counts and shares per label (rows that scored) in both versions."""

    def counts(agg: pd.DataFrame, name: str) -> pd.Series:
        return agg.dropna(subset=["__label"]).groupby("__label")["rows"].sum().rename(name)

    mix = (
        pd.concat([counts(old_agg, "count_old"), counts(new_agg, "count_new")], axis=1)
        .fillna(0)
        .astype(int)
    )
    for side in ("old", "new"):
        total = mix[f"count_{side}"].sum()
        mix[f"share_{side}"] = mix[f"count_{side}"] / total if total else math.nan
    mix["share_change"] = mix["share_new"] - mix["share_old"]
    return mix.sort_index().rename_axis("label").reset_index()
