"""Delta lakehouse IO behind one interface, with two backends.

* `delta-spark`: the JVM Delta connector (Databricks, EMR, any cluster with the Delta jars);
  paths and catalog tables.
* `delta-rs`: `deltalake` behind Spark's Python Data Source API, for pip-only installs;
  table paths only.

Example:
    >>> lake = open_lakehouse(spark)            # "auto": see `open_lakehouse`
    >>> v = lake.latest_version("/data/events")
    >>> df = lake.read("/data/events", v, partitions=[{"day": "2024-05-01"}])
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Literal

from pyspark.sql import SparkSession

from spark_scoring.errors import LakehouseError, UsageError
from spark_scoring.jars import DELTA_CATALOG, DELTA_CLASS, DELTA_EXTENSION, missing_jars_message
from spark_scoring.lakehouse.base import CommitInfo, FileEntry, Lakehouse, WriteResult
from spark_scoring.session import is_connect

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
    """True when the JVM Delta classes (`io.delta.tables.DeltaTable`) load in `spark`'s JVM.

    Over Spark Connect there is no JVM to ask from Python: the server is asked instead
    whether it reads the `delta` format and serves Delta's Python API (`_server_has_delta`).
    """
    if is_connect(spark):
        return _server_has_delta(spark)
    try:
        jvm = spark._jvm  # type: ignore[attr-defined]
        if jvm is None:
            return False
        loader = jvm.Thread.currentThread().getContextClassLoader()
        jvm.java.lang.Class.forName(DELTA_CLASS, True, loader)
        return True
    except Exception:  # any failure to load the class means: no usable connector
        return False


def _server_has_delta(spark: SparkSession) -> bool:
    """Whether a Spark Connect server can serve the delta-spark engine.

    Two cheap questions, answered by analysis alone (nothing runs on the executors): does a
    `delta` read of a path that does not exist fail for the path (Delta is there) or with
    DATA_SOURCE_NOT_FOUND; and does Delta's Python API (`delta.tables.DeltaTable`, which
    `delta_spark.py` uses) answer over Connect: it needs the server's Delta Connect plugin
    (Databricks has it; the Delta 4.4.0 jars here have none: CONNECT_INVALID_PLAN.
    NO_HANDLER_FOR_EXTENSION). The second question can go once the backend reads tables
    by SQL and the Delta log alone.
    """
    probe = f"/tmp/spark-scoring-delta-probe-{uuid.uuid4().hex}"
    try:
        spark.read.format("delta").load(probe).schema  # noqa: B018 - analysis is the probe
    except Exception as exc:  # noqa: BLE001 - the error says which case this is
        if "DATA_SOURCE_NOT_FOUND" in str(exc) or "Failed to find the data source" in str(exc):
            return False
    try:
        from delta.tables import DeltaTable

        DeltaTable.isDeltaTable(spark, probe)
    except Exception:  # noqa: BLE001 - any failure: the API does not work over this server
        log.info("the Spark Connect server reads Delta, but Delta's Python API does not answer over it "
                 "(no Delta Connect plugin)")
        return False
    return True


def _auto_engine(spark: SparkSession, tables: Sequence[str]) -> tuple[str, str]:
    from spark_scoring.tableref import is_catalog_name, is_local_path

    if not delta_jars_available(spark):
        return "delta-rs", "no Delta jars on the classpath"
    if any(is_catalog_name(t) for t in tables):
        return "delta-spark", "JVM Delta classes found; catalog names need them"
    local = not is_connect(spark) and spark.sparkContext.master.startswith("local")
    if local and all(is_local_path(t) for t in tables):
        return "delta-rs", ("local master: the embedded default (set lakehouse.engine: delta-spark for tables with "
                            "table features only the JVM connector handles)")
    return "delta-spark", "JVM Delta classes found"


def open_lakehouse(spark: SparkSession, engine: Engine | str = "auto", tables: Sequence[str] = ()) -> Lakehouse:
    """The lakehouse backend for `spark`.

    "auto" chooses delta-rs on a classic session with a local master when every table is a
    local path (the embedded default: a small night costs a few seconds there, against about
    30 on the JVM connector, measured by `bench.engines`); elsewhere (a cluster, spark-submit
    to a master, Databricks, Spark Connect) the JVM connector when its classes load, else
    delta-rs.

    Args:
        spark: the session every read and write runs in.
        engine: "auto", "delta-spark" or "delta-rs".
        tables: the tables the caller will use ("auto" needs the JVM for catalog names).

    Raises:
        LakehouseError: unknown engine, or "delta-spark" without the Delta jars.
    """
    if engine not in _ENGINES:
        raise LakehouseError(f"lakehouse engine {engine!r} is unknown; use one of {list(_ENGINES)}")
    if engine == "auto":
        chosen, why = _auto_engine(spark, tables)
        log.info("lakehouse engine auto -> %s (%s)", chosen, why)
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
