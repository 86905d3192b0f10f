"""The delta-rs backend: `deltalake` behind Spark's Python Data Source API.

For pip-only installs, where the JVM Delta connector is not on the classpath. Reads and
writes run as ordinary parallel Spark jobs through the `spark_scoring_delta_rs` data
source (see `_delta_rs`). Table metadata and read planning come from the Delta log itself
(`deltalog`, through the base class and the data source); `deltalake` only makes the
commit. Only table paths (local or object-store URIs) work here: catalog tables need the
JVM connector.

Upserts (`mode="upsert"`) are copy-on-write: the files that can hold an affected key
(by partition values and key statistics, `keyranges`) are read, their rows whose key is
not affected are written again together with the new rows, and ONE commit removes those
files and adds the new ones. A key that no file can hold is a plain insert.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from functools import reduce
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from spark_scoring.errors import LakehouseError, from_spark
from spark_scoring.lakehouse import _delta_rs as ds
from spark_scoring.lakehouse import _partitions as parts
from spark_scoring.lakehouse import keyranges
from spark_scoring.lakehouse.base import (
    Lakehouse,
    PartitionValues,
    WriteRequest,
    WriteResult,
    is_catalog_name,
)
from spark_scoring.lakehouse.deltalog import DeltaLog, FileAction, Snapshot

log = logging.getLogger("spark_scoring.lakehouse")

#: An upsert collects its affected keys to the driver, exactly, when there are at most
#: this many (partition, key) pairs (a few hundred kB); above, it collects each
#: partition's min and max key instead, which may select more files to rewrite.
EXACT_KEYS_LIMIT = 10_000


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

    def location(self, table: str) -> str:
        """The absolute path or URI of a table path; refuses catalog names (JVM engine only)."""
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

    # ------------------------------------------------------------------ read

    def read_plan(
        self,
        table: str,
        version: int,
        *,
        partitions: Sequence[PartitionValues] | None = None,
        files: Iterable[Any] | None = None,
    ) -> list[list[str]]:
        """The files each Spark task of `read(...)` opens, one list per task (for checks and tests)."""
        options = self._read_options(table, version, partitions, None)
        if files is not None:
            options["planned"] = json.dumps(self._planned(table, version, partitions, files))
        reader = ds.DeltaRsReader(options, StructType())
        return [[f["location"] for f in group] for group in reader.plan()]

    def _read_options(
        self,
        table: str,
        version: int,
        partitions: Sequence[PartitionValues] | None,
        columns: Sequence[str] | None,
    ) -> dict[str, str]:
        options = {
            "path": self.location(table),
            "version": str(int(version)),
            "max_bytes_per_task": str(self.max_bytes_per_task),
        }
        if partitions is not None:
            options["partitions"] = json.dumps([dict(p) for p in partitions])
        if columns is not None:
            options["columns"] = json.dumps(list(columns))
        return options

    def _planned(
        self,
        table: str,
        version: int,
        partitions: Sequence[PartitionValues] | None,
        files: Iterable[Any] | None,
        snapshot: Snapshot | None = None,
    ) -> list[dict[str, Any]]:
        """The task files of a read planned here, on the driver (checked: no deletion vectors)."""
        delta_log = self.log(table)
        snapshot = snapshot or delta_log.snapshot(version)
        keys = None if files is None else [_file_key(f) for f in files]
        chosen = ds.select_files(snapshot, partitions, keys, table)
        ds.check_readable(snapshot, table, chosen)
        return [ds.task_file(f, delta_log.root) for f in chosen]

    def read(
        self,
        table: str,
        version: int,
        *,
        partitions: Sequence[PartitionValues] | None = None,
        files: Iterable[Any] | None = None,
        columns: Sequence[str] | None = None,
    ) -> DataFrame:
        """Read `table` as of `version` (see `Lakehouse.read`).

        Refuses (UnsupportedTableFeatureError) tables with column mapping, and files with
        deletion vectors: plain Parquet reads would return their deleted rows.
        """
        state = self.log(table).state(version)
        full = ds.spark_schema(state)
        if partitions is not None:
            for spec in partitions:  # fail here, on the driver, with the clear message
                parts.check_partition_values(spec, ds.partition_columns(state), full)
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
        ds.check_readable(state, table)
        planned = None
        if files is not None or "deletionVectors" in state.protocol.features:
            # Plan here: the files asked for must be checked against the version anyway, and
            # a table with deletion vectors must be checked file by file.
            planned = self._planned(table, version, partitions, files)
        return self._load(table, version, schema, partitions, planned)

    def _load(
        self,
        table: str,
        version: int,
        schema: StructType,
        partitions: Sequence[PartitionValues] | None,
        planned: list[dict[str, Any]] | None,
    ) -> DataFrame:
        """The read DataFrame (`planned`: the task files, when the driver chose them)."""
        columns = schema.fieldNames()
        options = self._read_options(table, version, partitions, columns)
        if planned is not None:
            options["planned"] = json.dumps(planned)
        log.debug("delta-rs read of %s at version %s (partitions %s)", table, version, partitions)
        ds.activate(self.spark)
        return self.spark.read.format(ds.DATA_SOURCE_NAME).schema(schema).options(**options).load()

    # ------------------------------------------------------------------ write

    def _write(self, request: WriteRequest) -> WriteResult:
        df, table, mode = request.df, request.table, request.mode
        if request.table_exists:
            # The version the caller planned against (write() checked it is the latest).
            state = self.log(table).state(request.expected_version)
            ds.check_writable(state, table)
            if mode != "overwrite":
                _check_same_schema(df.schema, ds.spark_schema(state), table)
                if request.partition_by and request.partition_by != request.partition_columns:
                    raise LakehouseError(
                        f"partition_by {list(request.partition_by)} differs from the partitioning of "
                        f"{table!r} ({list(request.partition_columns)}); only mode 'overwrite' can change it"
                    )
        missing = [c for c in request.partition_columns if c not in df.columns]
        if missing:
            raise LakehouseError(f"partition columns {missing} are not columns of the rows to write {df.columns}")
        if mode == "upsert" and request.table_exists:
            return self._upsert(request)
        removed: list[FileAction] = []
        if mode == "replace_partitions" and request.table_exists:
            snapshot = self.log(table).snapshot(request.expected_version)
            removed = ds.select_files(snapshot, request.partitions, table=table)
        return self._run_write(request, df, "append" if mode == "upsert" else mode, removed)

    def _run_write(
        self, request: WriteRequest, rows: DataFrame, mode: str, remove: Sequence[FileAction] = ()
    ) -> WriteResult:
        """Write `rows` through the data source: tasks write files, its commit() makes ONE commit."""
        table = request.table
        path = self.location(table)
        write_parts = list(request.partition_columns)
        # No sort here: Spark's optimizer would drop the caller's own (partition, key) sort
        # under ours. Tasks keep at most MAX_OPEN_FILES files open whatever the order; rows
        # sorted by partition (the pipeline sorts them) get one file per partition and task.
        write_id = uuid.uuid4().hex
        options = {
            "path": path,
            "table_name": table,
            "mode": mode,
            "partition_by": json.dumps(write_parts),
            "partitions": json.dumps(list(request.partitions)),
            # Chosen here at expected_version, the only version the commit can land on.
            "remove": json.dumps([{"path": f.path, "size": f.size, "partition_values": dict(f.partition_values)}
                                  for f in remove]),
            "metadata": json.dumps(request.metadata),
            "write_id": write_id,
        }
        if request.expected_version is not None:
            options["expected_version"] = str(int(request.expected_version))
        if request.app_id is not None:
            options["app_id"] = request.app_id
            options["txn_version"] = str(int(request.txn_version))  # type: ignore[arg-type]
        try:
            ds.activate(rows.sparkSession)
            rows.write.format(ds.DATA_SOURCE_NAME).options(**options).mode("append").save()
        except Exception as exc:
            known = from_spark(exc)  # an error our tasks or our commit raised, typed again
            if known is not None:
                raise known from exc
            raise LakehouseError(f"writing to {table!r} failed; nothing was published: {exc}") from exc
        return self._find_write(path, table, write_id, request.expected_version)

    def _find_write(self, path: str, table: str, write_id: str, expected_version: int | None) -> WriteResult:
        """What the commit carrying `write_id` did, from its own actions (commit() may have
        run in another Python process)."""
        version = ds.committed_version(path, write_id, expected_version)
        if version is None:
            raise LakehouseError(
                f"the write to {table!r} finished but no commit carries its write id {write_id}; "
                "inspect history() of the table"
            )
        delta_log = DeltaLog(path, table=table)
        commit = delta_log.commit(version)
        bytes_removed = commit.bytes_removed
        if any(r.size is None for r in commit.removes) and expected_version is not None:
            sizes = {k[0]: a.size for k, a in delta_log.snapshot(expected_version).files.items()}
            bytes_removed = sum(r.size if r.size is not None else sizes.get(r.path) or 0 for r in commit.removes)
        metrics = commit.info.get("operationMetrics") or {}
        log.info("committed version %s of %s (write %s)", version, table, write_id)
        return WriteResult(
            version=version,
            files_added=len(commit.adds),
            rows_written=int(metrics["numOutputRows"]) if "numOutputRows" in metrics else None,
            files_removed=len(commit.removes),
            bytes_added=commit.bytes_added,
            bytes_removed=bytes_removed,
        )

    # ------------------------------------------------------------------ upsert

    def _upsert(self, request: WriteRequest) -> WriteResult:
        """Copy-on-write upsert: rewrite only the files that can hold an affected key."""
        table, key = request.table, str(request.key)
        version = int(request.expected_version)  # type: ignore[arg-type]
        snapshot = self.log(table).snapshot(version)
        affected = _affected(request, ds.spark_schema(snapshot))
        candidates, exact = _candidates(snapshot, affected, key, list(request.partition_columns))
        log.info("upsert into %s: %d of %d files can hold an affected key (%s keys)", table,
                 len(candidates), len(snapshot.files), "exact" if exact else "ranges of")
        rows = request.df
        if candidates:
            planned = self._planned(table, version, None, [f.key for f in candidates], snapshot)
            kept = self._load(table, version, ds.spark_schema(snapshot), None, planned)
            names = {c: f"__upsert_{i}" for i, c in enumerate(affected.columns)}
            right = affected.select(*[F.col(parts.quote_identifier(c)).alias(names[c]) for c in affected.columns])
            right = F.broadcast(right.distinct()) if exact else right
            on = [kept[parts.quote_identifier(c)].eqNullSafe(right[names[c]]) for c in request.partition_columns]
            on.append(kept[parts.quote_identifier(key)] == right[names[key]])
            kept = kept.join(right, on=reduce(lambda a, b: a & b, on), how="left_anti")
            rows = kept.unionByName(request.df.select(*[F.col(parts.quote_identifier(c)) for c in kept.columns]))
        return self._run_write(request, rows, "upsert", candidates)


def _file_key(item: Any) -> tuple[str, str | None]:
    """A file state's key from a FileAction, a FileEntry or a (path, dv id) pair."""
    found = getattr(item, "key", None)
    if isinstance(found, tuple):
        return found
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return (str(item[0]), item[1])
    raise LakehouseError(
        f"files= takes FileAction or FileEntry objects, or (path as in the log, deletion vector id) pairs; "
        f"got {item!r}"
    )


def _affected(request: WriteRequest, schema: StructType) -> DataFrame:
    """Partition columns and key of every affected row (of `df` and of `deletes`), typed as
    the table's columns."""
    types = {f.name: f.dataType for f in schema.fields}
    columns = [*request.partition_columns, str(request.key)]
    frames = [request.df] + ([request.deletes] if request.deletes is not None else [])
    selected = [
        frame.select(*[F.col(parts.quote_identifier(c)).cast(types[c]).alias(c) for c in columns]) for frame in frames
    ]
    return reduce(DataFrame.unionByName, selected)


def _candidates(
    snapshot: Snapshot, affected: DataFrame, key: str, partition_columns: list[str]
) -> tuple[list[FileAction], bool]:
    """The files of `snapshot` that can hold an affected key, and whether keys were exact.

    Up to `EXACT_KEYS_LIMIT` distinct (partition, key) pairs are collected as they are and
    looked up in each partition's files' key ranges; beyond, each partition's [min, max]
    key range is. Raises LakehouseError for null keys.
    """
    types = {f.name: f.dataType for f in ds.spark_schema(snapshot).fields}
    key_type = types[key].simpleString()
    canonical = parts.PartitionMatcher([], types, partition_columns)
    by_partition: dict[tuple, list[FileAction]] = {}
    for action in snapshot.files.values():
        by_partition.setdefault(canonical.key(action.partition_values, partition_columns), []).append(action)

    def partition_of(row: Any) -> tuple:
        values = {c: parts.to_partition_string(row[c], types[c], c) for c in partition_columns}
        return canonical.key(values, partition_columns)

    sample = affected.distinct().limit(EXACT_KEYS_LIMIT + 1).collect()
    exact = len(sample) <= EXACT_KEYS_LIMIT
    if exact:
        keys: dict[tuple, list[Any]] = {}
        for row in sample:
            keys.setdefault(partition_of(row), []).append(row[key])
        nulls = sum(1 for values in keys.values() for v in values if v is None)
        ranges: dict[tuple, keyranges.KeyRange] = {}
    else:
        q = parts.quote_identifier
        grouped = affected.groupBy(*[q(c) for c in partition_columns]).agg(
            F.min(q(key)).alias("__low"), F.max(q(key)).alias("__high"),
            F.sum(F.col(q(key)).isNull().cast("long")).alias("__nulls"),
        ).collect()
        nulls = sum(int(r["__nulls"] or 0) for r in grouped)
        ranges = {
            partition_of(r): keyranges.KeyRange(None, keyranges.stats_value(r["__low"]), keyranges.stats_value(r["__high"]))
            for r in grouped
        }
        keys = {}
    if nulls:
        raise LakehouseError(
            f"mode 'upsert' needs a key in every row: {nulls} row(s) to write or delete have a null {key!r}; "
            "drop or fix them before the write"
        )
    candidates: list[FileAction] = []
    for partition, values in keys.items():
        pool = by_partition.get(partition, [])
        candidates += keyranges.files_holding(pool, key, [], [(None, v) for v in values], key_type)
    for partition, wanted in ranges.items():
        candidates += keyranges.files_overlapping(by_partition.get(partition, []), key, [], [wanted], key_type)
    return candidates, exact


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
