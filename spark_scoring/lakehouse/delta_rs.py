"""The delta-rs backend: `deltalake` behind Spark's Python Data Source API.

For pip-only installs, where the JVM Delta connector is not on the classpath. Reads and
writes run as ordinary parallel Spark jobs through the `spark_scoring_delta_rs` data
source (see `_delta_rs`); the Delta log is read and committed with `deltalake` on the
driver. Only table paths (local or object-store URIs) work here: catalog tables need the
JVM connector.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import uuid
from collections.abc import Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from spark_scoring.errors import LakehouseError, TableNotFoundError, from_spark
from spark_scoring.lakehouse import _delta_rs as ds
from spark_scoring.lakehouse import _partitions as parts
from spark_scoring.lakehouse.base import (
    CommitInfo,
    FileEntry,
    Lakehouse,
    PartitionValues,
    WriteRequest,
    WriteResult,
    is_catalog_name,
)

log = logging.getLogger("spark_scoring.lakehouse")

class DeltaRsLakehouse(Lakehouse):
    """Delta tables at paths, read and written through delta-rs and Spark's Python data sources.

    Example:
        >>> lake = DeltaRsLakehouse(spark)
        >>> df = lake.read("/data/events", version=12, partitions=[{"day": "2024-05-01"}])
        >>> lake.write(scored, "/data/scored", mode="replace_partitions",
        ...            partitions=[{"day": "2024-05-01"}], expected_version=3,
        ...            metadata={"spark_scoring.run_id": run_id})
    """

    engine = "delta-rs"

    def __init__(self, spark: SparkSession, *, max_bytes_per_task: int = ds.DEFAULT_MAX_BYTES_PER_TASK):
        super().__init__(spark)
        self.max_bytes_per_task = max_bytes_per_task
        ds.register_data_source(spark)

    # ------------------------------------------------------------------ references

    def _path(self, table: str) -> str:
        """The absolute path or URI of a table reference; refuses catalog names."""
        if is_catalog_name(table):
            raise LakehouseError(
                f"{table!r} looks like a catalog table name; the delta-rs engine reads and writes "
                "table paths only (a directory or an s3://, abfss://, gs:// URI), because catalog "
                "tables need the JVM Delta connector. Give the table's path, or run with engine "
                "'delta-spark' on a cluster that has the Delta jars."
            )
        if "://" in table:
            return table.rstrip("/")
        return os.path.abspath(os.path.expanduser(table))

    def _open(self, table: str, version: int | None = None):
        path = self._path(table)
        if not ds.table_exists(path):
            raise TableNotFoundError(
                f"no Delta table at {table!r} (no _delta_log there); check the path, or create "
                "the table with a first write"
            )
        return ds.open_table(path, version, table=table)

    # ------------------------------------------------------------------ metadata

    def exists(self, table: str) -> bool:
        return ds.table_exists(self._path(table))

    def table_id(self, table: str) -> str:
        return str(self._open(table).metadata().id)

    def latest_version(self, table: str) -> int:
        return int(self._open(table).version())

    def schema(self, table: str, version: int | None = None) -> StructType:
        return ds.spark_schema(self._open(table, version))

    def partition_columns(self, table: str, version: int | None = None) -> list[str]:
        return ds.partition_columns(self._open(table, version))

    def files(self, table: str, version: int) -> list[FileEntry]:
        delta_table = self._open(table, version)
        return [
            FileEntry(
                path=f["location"],
                partition_values=dict(f["partition_values"]),
                size=f["size"],
                num_records=f["num_records"],
            )
            for f in ds.active_files(delta_table)
        ]

    def transaction_version(self, table: str, app_id: str, version: int | None = None) -> int | None:
        recorded = self._open(table, version).transaction_version(app_id)
        return None if recorded is None else int(recorded)

    def history(self, table: str, limit: int | None = None) -> list[CommitInfo]:
        entries = self._open(table).history(limit)
        commits = []
        for entry in entries:
            stamp = entry.get("timestamp")
            commits.append(
                CommitInfo(
                    version=int(entry["version"]),
                    timestamp=(
                        dt.datetime.fromtimestamp(stamp / 1000, tz=dt.timezone.utc) if stamp is not None else None
                    ),
                    operation=str(entry.get("operation", "")),
                    metadata=ds.commit_metadata(entry),
                )
            )
        commits.sort(key=lambda c: c.version, reverse=True)
        return commits

    # ------------------------------------------------------------------ read

    def read_plan(
        self,
        table: str,
        version: int,
        *,
        partitions: Sequence[PartitionValues] | None = None,
    ) -> list[list[str]]:
        """The files each Spark task of `read(...)` opens, one list per task (for checks and tests)."""
        reader = ds.DeltaRsReader(self._read_options(table, version, partitions, None), StructType())
        return [[f["location"] for f in group] for group in reader.plan()]

    def _read_options(
        self,
        table: str,
        version: int,
        partitions: Sequence[PartitionValues] | None,
        columns: Sequence[str] | None,
    ) -> dict[str, str]:
        options = {
            "path": self._path(table),
            "version": str(int(version)),
            "max_bytes_per_task": str(self.max_bytes_per_task),
        }
        if partitions is not None:
            options["partitions"] = json.dumps([dict(p) for p in partitions])
        if columns is not None:
            options["columns"] = json.dumps(list(columns))
        return options

    def read(
        self,
        table: str,
        version: int,
        *,
        partitions: Sequence[PartitionValues] | None = None,
        columns: Sequence[str] | None = None,
    ) -> DataFrame:
        delta_table = self._open(table, version)
        ds.check_supported(delta_table, table)
        full = ds.spark_schema(delta_table)
        table_parts = ds.partition_columns(delta_table)
        if partitions is not None:
            for spec in partitions:  # fail here, on the driver, with the clear message
                parts.check_partition_values(spec, table_parts, full)
        schema = full
        if columns is not None:
            by_name = {f.name: f for f in full.fields}
            missing = [c for c in columns if c not in by_name]
            if missing or not columns:
                raise LakehouseError(
                    f"columns {missing or list(columns)} cannot be read from {table!r} (version "
                    f"{version}); its columns are {full.fieldNames()}"
                )
            schema = StructType([by_name[c] for c in columns])
        options = self._read_options(table, version, partitions, columns)
        log.debug("delta-rs read of %s at version %s (partitions %s)", table, version, partitions)
        ds.activate(self.spark)
        return self.spark.read.format(ds.DATA_SOURCE_NAME).schema(schema).options(**options).load()

    # ------------------------------------------------------------------ write

    def _write(self, request: WriteRequest) -> WriteResult:
        df, table, mode = request.df, request.table, request.mode
        path = self._path(table)
        if request.table_exists:
            # The version the caller planned against (write() checked it is the latest).
            delta_table = ds.open_table(path, request.expected_version, table=table)
            ds.check_supported(delta_table, table)
            if mode != "overwrite":
                _check_same_schema(df.schema, ds.spark_schema(delta_table), table)
                if request.partition_by and request.partition_by != request.partition_columns:
                    raise LakehouseError(
                        f"partition_by {list(request.partition_by)} differs from the partitioning of "
                        f"{table!r} ({list(request.partition_columns)}); only mode 'overwrite' can change it"
                    )
        write_parts = list(request.partition_columns)
        missing = [c for c in write_parts if c not in df.columns]
        if missing:
            raise LakehouseError(f"partition columns {missing} are not columns of the rows to write {df.columns}")

        write_id = uuid.uuid4().hex
        options = {
            "path": path,
            "table_name": table,
            "mode": mode,
            "partition_by": json.dumps(write_parts),
            "partitions": json.dumps(list(request.partitions)),
            "metadata": json.dumps(request.metadata),
            "write_id": write_id,
        }
        if request.expected_version is not None:
            options["expected_version"] = str(int(request.expected_version))
        if request.app_id is not None:
            options["app_id"] = request.app_id
            options["txn_version"] = str(int(request.txn_version))  # type: ignore[arg-type]
        try:
            ds.activate(df.sparkSession)
            df.write.format(ds.DATA_SOURCE_NAME).options(**options).mode("append").save()
        except Exception as exc:
            known = from_spark(exc)  # an error our tasks or our commit raised, typed again
            if known is not None:
                raise known from exc
            raise LakehouseError(f"writing to {table!r} failed; nothing was published: {exc}") from exc
        return self._find_write(path, table, write_id, request.expected_version)

    def _find_write(self, path: str, table: str, write_id: str, expected_version: int | None) -> WriteResult:
        """The commit carrying `write_id` (commit() may have run in another Python process)."""
        version = ds.committed_version(path, write_id, expected_version)
        if version is None:
            raise LakehouseError(
                f"the write to {table!r} finished but no commit carries its write id {write_id}; "
                "inspect history() of the table"
            )
        entry = ds.open_table(path, version, table=table).history(1)[0]
        metrics = entry.get("operationMetrics") or {}
        log.info("committed version %s of %s (write %s)", version, table, write_id)
        return WriteResult(
            version=version,
            files_added=int(metrics.get("numFiles", 0)),
            rows_written=int(metrics["numOutputRows"]) if "numOutputRows" in metrics else None,
        )


def _check_same_schema(rows: StructType, table_schema: StructType, table: str) -> None:
    # simpleString leaves nullability out: a non-null column fits a nullable one.
    have = {f.name: f.dataType.simpleString() for f in rows.fields}
    want = {f.name: f.dataType.simpleString() for f in table_schema.fields}
    if have == want:
        return
    problems = []
    for name in want.keys() - have.keys():
        problems.append(f"missing column {name}")
    for name in have.keys() - want.keys():
        problems.append(f"extra column {name}")
    for name in have.keys() & want.keys():
        if have[name] != want[name]:
            problems.append(f"{name} is {have[name]}, table has {want[name]}")
    raise LakehouseError(
        f"the rows do not match the schema of {table!r}: {'; '.join(sorted(problems))}; write "
        "rows with the table's columns, or use mode 'overwrite' to replace the table and its schema"
    )
