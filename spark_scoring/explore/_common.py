"""What every explore helper starts from: the session, the lakehouse, versions and keys.

Every table access goes through the `Lakehouse` interface (`open_lakehouse`), so the same
calls work on the JVM Delta connector and on delta-rs. `load_scored` is the plain read.
Commits are read back as `contract.CommitRecord`s.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from spark_scoring.contract import FIXED_COLUMNS, CommitRecord
from spark_scoring.errors import UsageError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from spark_scoring.lakehouse.base import Lakehouse

log = logging.getLogger(__name__)

#: The commit-metadata key that names the row key (`spark_scoring.key`).
_KEY_META = CommitRecord.metadata_key("key")

#: Distribution statistics sample about this many rows per version beyond it (PSI and KS
#: are stable long before that; collecting more only costs driver memory).
DEFAULT_MAX_VALUES = 1_000_000


def _spark(spark: SparkSession | None) -> SparkSession:
    if spark is not None:
        return spark
    from spark_scoring.session import get_spark

    return get_spark()


def _lakehouse(spark: SparkSession | None, engine: str) -> Lakehouse:
    from spark_scoring.lakehouse import open_lakehouse

    return open_lakehouse(_spark(spark), engine=engine)


def _resolve_version(lh: Lakehouse, table: str, version: int | None) -> int:
    """None: the latest version; a negative number counts back from it (-1 latest, -2 the one before)."""
    latest = lh.latest_version(table)
    if version is None:
        return latest
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)):
        raise UsageError(f"version must be an int or None, got {version!r}")
    resolved = latest + 1 + int(version) if version < 0 else int(version)
    if not 0 <= resolved <= latest:
        raise UsageError(
            f"version {version} of {table} does not exist; versions run from 0 to {latest} "
            f"(negative numbers count back from the latest: -1 is v{latest})"
        )
    return resolved


def _commit_records(lh: Lakehouse, table: str) -> dict[int, CommitRecord]:
    """version -> what that commit says about itself, for the commits spark-scoring made."""
    out: dict[int, CommitRecord] = {}
    for info in lh.history(table):
        record = CommitRecord.from_metadata(info.metadata)
        if record is not None:
            out[info.version] = record
    return out


def _resolve_key(
    lh: Lakehouse,
    table: str,
    columns: Sequence[str],
    parts: Sequence[str],
    key: str | Sequence[str] | None,
) -> tuple[list[str], str]:
    """The key column(s) and where they came from: the argument, the newest commit that
    records them, or the table's first column (the output contract puts the key first)."""
    if key is not None:
        keys = [key] if isinstance(key, str) else list(key)
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise UsageError(f"key must be a column name or a list of column names, got {key!r}")
        return keys, "argument"
    for _, record in sorted(_commit_records(lh, table).items(), reverse=True):
        if record.key:
            return [k.strip() for k in record.key.split(",") if k.strip()], "commit metadata"
    first = columns[0] if columns else None
    # The task output columns (no home in the contract: each task declares its own).
    reserved = {*parts, *FIXED_COLUMNS, "embedding", "label", "score", "scores", "generated_text"}
    if first is None or first in reserved:
        raise UsageError(
            f"cannot tell the key column of {table}: its commits carry no {_KEY_META} metadata and its "
            f"first column {first!r} is not a key column; pass key='<column>' (or a list of columns)"
        )
    log.info(
        "no %s in the commit metadata of %s: using its first column %r as the key",
        _KEY_META,
        table,
        first,
    )
    return [first], "first column"


def load_scored(
    table: str,
    version: int | None = None,
    *,
    spark: SparkSession | None = None,
    as_pandas: bool = False,
    engine: str = "auto",
) -> DataFrame | pd.DataFrame:
    """Read a scored table as of `version` (None: the latest; -2: the one before it).

    Args:
        table: path or catalog name of the scored output table.
        version: Delta version to read.
        spark: session to use; None uses `spark_scoring.session.get_spark()`.
        as_pandas: return a pandas DataFrame (collects the whole table to the driver).
        engine: lakehouse backend: "auto", "delta-spark" or "delta-rs".

    Raises:
        TableNotFoundError: no Delta table at `table`.
        UsageError: the version does not exist.
    """
    lh = _lakehouse(spark, engine)
    df = lh.read(table, _resolve_version(lh, table, version))
    return df.toPandas() if as_pandas else df
