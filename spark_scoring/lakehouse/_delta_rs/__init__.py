"""Spark Python Data Source over delta-rs: parallel pinned-version reads, one-commit writes.

This is a package of importable modules (never `__main__`) because Spark pickles the
DataSource, reader and writer and re-imports them in its Python workers (the planner, the
executors and the commit process on the driver): the classes are pickled by reference to
their module here instead of by value. `DATA_SOURCE_NAME` is the format name the backend
reads and writes through (`spark.read.format(DATA_SOURCE_NAME)`), once `register_data_source`
registered `DeltaRsDataSource` with the session and `activate` made it the thread's active one.

* `log`: the table's Delta log through `deltalog` (features, schema, file selection, task
  packing, finding a commit by its write id); `deltalake` only to commit.
* `reader`: `DeltaRsReader`, the read tasks.
* `writer`: `DeltaRsWriter`, the write tasks and the ONE commit on the driver.

Options are strings (lists and mappings JSON-encoded). Errors raised in the workers cross
a process boundary as text: they are raised as `errors.for_executor(exc)`, and the driver
gets the same class back with `errors.from_spark`.
"""

from __future__ import annotations

import json
import weakref

from pyspark.sql import SparkSession
from pyspark.sql.datasource import DataSource
from pyspark.sql.types import StructType

from spark_scoring.errors import raised_for_driver
from spark_scoring.lakehouse._delta_rs.log import (
    check_readable,
    check_writable,
    committed_version,
    partition_columns,
    select_files,
    spark_schema,
    table_exists,
    table_log,
    task_file,
)
from spark_scoring.lakehouse._delta_rs.reader import DEFAULT_MAX_BYTES_PER_TASK, DeltaRsReader
from spark_scoring.lakehouse._delta_rs.writer import DeltaRsWriter

__all__ = [  # what the delta-rs backend (delta_rs.py) uses
    "DATA_SOURCE_NAME",
    "DEFAULT_MAX_BYTES_PER_TASK",
    "DeltaRsDataSource",
    "DeltaRsReader",
    "activate",
    "check_readable",
    "check_writable",
    "committed_version",
    "partition_columns",
    "register_data_source",
    "select_files",
    "spark_schema",
    "table_exists",
    "table_log",
    "task_file",
]

DATA_SOURCE_NAME = "spark_scoring_delta_rs"


# --------------------------------------------------------------------------- the DataSource


class DeltaRsDataSource(DataSource):
    """`spark.read/write.format("spark_scoring_delta_rs")` over a delta-rs table.

    Options (all strings): `path` (absolute path or URI), `version` (read; default latest),
    `columns` (JSON list), `partitions` (JSON list of {column: Delta string value or null}),
    `files` and `planned` (see `DeltaRsReader`), `max_bytes_per_task`; for writes see
    `DeltaRsWriter`.
    """

    @classmethod
    def name(cls) -> str:
        return DATA_SOURCE_NAME

    def schema(self) -> StructType:
        path = self.options["path"]
        version = self.options.get("version")
        with raised_for_driver():  # runs in a Python worker when no schema was given
            state = table_log(path).state(int(version) if version is not None else None)
            check_readable(state, path)
        full = spark_schema(state)
        columns = self.options.get("columns")
        if not columns:
            return full
        wanted = json.loads(columns)
        by_name = {f.name: f for f in full.fields}
        return StructType([by_name[c] for c in wanted])

    def reader(self, schema: StructType) -> DeltaRsReader:
        return DeltaRsReader(dict(self.options), schema)

    def writer(self, schema: StructType, overwrite: bool) -> DeltaRsWriter:
        return DeltaRsWriter(dict(self.options), schema)


_registered: weakref.WeakSet[SparkSession] = weakref.WeakSet()


def activate(spark: SparkSession) -> None:
    """Make `spark` the JVM's active session in the calling thread.

    Spark looks Python data sources up in the JVM's *active* session, which is kept per
    thread: a read or write from a thread that never touched the session (a scheduler's
    worker thread, two runs in parallel threads) would fail with DATA_SOURCE_NOT_FOUND.
    Over Spark Connect there is no JVM here, and the server runs each request in its session.
    """
    from spark_scoring.session import is_connect  # driver only: the workers never import it

    if is_connect(spark):
        return
    SparkSession._get_j_spark_session_class(spark._jvm).setActiveSession(spark._jsparkSession)  # type: ignore[attr-defined]


def register_data_source(spark: SparkSession) -> None:
    """Register the delta-rs Python data source with `spark` (once per session)."""
    if spark in _registered:
        return
    spark.dataSource.register(DeltaRsDataSource)
    _registered.add(spark)
