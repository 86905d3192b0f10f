"""Delta lakehouse IO behind one interface, with two backends.

* `delta-spark`: the JVM Delta connector (Databricks, EMR, any cluster with the Delta jars);
  paths and catalog tables.
* `delta-rs`: `deltalake` behind Spark's Python Data Source API, for pip-only installs;
  table paths only.

Example:
    >>> lake = open_lakehouse(spark)            # "auto": JVM connector when its jars load
    >>> v = lake.latest_version("/data/events")
    >>> df = lake.read("/data/events", v, partitions=[{"day": "2024-05-01"}])
"""

from __future__ import annotations

import logging
from typing import Literal

from pyspark.sql import SparkSession

from spark_scoring.errors import LakehouseError, UsageError
from spark_scoring.jars import DELTA_CATALOG, DELTA_CLASS, DELTA_EXTENSION, missing_jars_message
from spark_scoring.lakehouse.base import CommitInfo, FileEntry, Lakehouse, WriteResult

__all__ = [
    "CommitInfo",
    "FileEntry",
    "Lakehouse",
    "WriteResult",
    "delta_jars_available",
    "open_lakehouse",
]

log = logging.getLogger("spark_scoring.lakehouse")

Engine = Literal["auto", "delta-spark", "delta-rs"]
_ENGINES = ("auto", "delta-spark", "delta-rs")


def delta_jars_available(spark: SparkSession) -> bool:
    """True when the JVM Delta classes (`io.delta.tables.DeltaTable`) load in `spark`'s JVM."""
    try:
        jvm = spark._jvm  # type: ignore[attr-defined]
        if jvm is None:  # Spark Connect has no py4j gateway
            return False
        loader = jvm.Thread.currentThread().getContextClassLoader()
        jvm.java.lang.Class.forName(DELTA_CLASS, True, loader)
        return True
    except Exception:  # any failure to load the class means: no usable connector
        return False


def open_lakehouse(spark: SparkSession, engine: Engine | str = "auto") -> Lakehouse:
    """The lakehouse backend for `spark`.

    Args:
        spark: the session every read and write runs in.
        engine: "auto" (the JVM Delta connector when its classes load, else delta-rs),
            "delta-spark" or "delta-rs".

    Raises:
        LakehouseError: unknown engine, or "delta-spark" without the Delta jars.
    """
    if engine not in _ENGINES:
        raise LakehouseError(f"lakehouse engine {engine!r} is unknown; use one of {list(_ENGINES)}")
    if engine == "auto":
        chosen = "delta-spark" if delta_jars_available(spark) else "delta-rs"
        log.info(
            "lakehouse engine auto -> %s (%s)",
            chosen,
            "JVM Delta classes found" if chosen == "delta-spark" else "no Delta jars on the classpath",
        )
    else:
        chosen = engine
        if chosen == "delta-spark" and not delta_jars_available(spark):
            raise UsageError(
                "lakehouse engine 'delta-spark' needs the Delta Lake JVM connector, and "
                "io.delta.tables.DeltaTable does not load in this session: "
                f"{missing_jars_message()} (plus spark.sql.extensions={DELTA_EXTENSION} and "
                f"spark.sql.catalog.spark_catalog={DELTA_CATALOG}, which spark-scoring sets for "
                "sessions it starts); or use engine 'delta-rs' for table paths."
            )
        log.info("lakehouse engine %s", chosen)
    if chosen == "delta-spark":
        from spark_scoring.lakehouse.delta_spark import DeltaSparkLakehouse

        return DeltaSparkLakehouse(spark)
    from spark_scoring.lakehouse.delta_rs import DeltaRsLakehouse

    return DeltaRsLakehouse(spark)
