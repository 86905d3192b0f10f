"""The write side of the delta-rs data source: Parquet files in tasks, ONE Delta commit.

Every task (`write`, on the executors) writes Hive-style partitioned Parquet files
(partition columns left out of the file data) and returns their AddAction fields with
Delta statistics; `commit()` on the driver makes exactly ONE Delta commit with the adds,
the explicit RemoveActions of the replaced partitions, the SetTransaction and the commit
metadata, after checking that the table is still at the version the caller planned
against. `abort()` deletes the files the tasks wrote.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.sql.datasource import DataSourceArrowWriter, WriterCommitMessage
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import (
    BooleanType,
    DataType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from spark_scoring.contract import WRITE_ID_KEY
from spark_scoring.errors import ConcurrentRunError, LakehouseError, ScoringError, for_executor
from spark_scoring.lakehouse import _partitions as parts
from spark_scoring.lakehouse._delta_rs.log import (
    check_writable,
    committed_version,
    filesystem_for,
    open_table,
    partition_columns,
    spark_schema,
    table_exists,
    table_log,
)
from spark_scoring.lakehouse.base import check_planned_version

log = logging.getLogger("spark_scoring.lakehouse")

_STRING_STATS_PREFIX = 32  # Delta-Spark's dataSkippingStringPrefixLength default
#: Parquet files one write task keeps open at most (see `DeltaRsWriter`).
MAX_OPEN_FILES = 32


@dataclass
class DeltaRsCommitMessage(WriterCommitMessage):
    """What one write task produced: AddAction fields of its files."""

    adds: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0


class _ColumnStats:
    """Running Delta statistics (min, max, null count) of one primitive column."""

    def __init__(self, data_type: DataType):
        self.data_type = data_type
        self.nulls = 0
        self.min: Any = None
        self.max: Any = None
        self.min_max_ok = not isinstance(data_type, BooleanType)

    def update(self, array: pa.Array) -> None:
        self.nulls += array.null_count
        if not self.min_max_ok or array.null_count == len(array):
            return
        if isinstance(self.data_type, (FloatType, DoubleType)) and pc.any(pc.is_nan(array)).as_py():
            self.min_max_ok = False  # NaN has no place in min/max; leave them out
            return
        extremes = pc.min_max(array)
        try:
            low, high = extremes["min"].as_py(), extremes["max"].as_py()
        except UnicodeDecodeError:  # a string column holding bytes that are not UTF-8
            self.min_max_ok = False  # no bounds: readers then treat the file as holding any value
            return
        self.min = low if self.min is None else min(self.min, low)
        self.max = high if self.max is None else max(self.max, high)

    def json_values(self) -> tuple[Any, Any]:
        """(min, max) as Delta stats JSON values; None where a bound cannot be given safely."""
        if not self.min_max_ok or self.min is None:
            return None, None
        low, high = self.min, self.max
        if isinstance(self.data_type, StringType):
            # A prefix is still a lower bound; a truncated max would not be an upper bound.
            return low[:_STRING_STATS_PREFIX], (high if len(high) <= _STRING_STATS_PREFIX else None)
        if isinstance(self.data_type, (FloatType, DoubleType)):
            if math.isinf(low) or math.isinf(high):
                return None, None
            return low, high
        if isinstance(self.data_type, DecimalType):
            return float(low), float(high)
        if isinstance(self.data_type, DateType):
            return low.isoformat(), high.isoformat()
        if isinstance(self.data_type, TimestampType):
            # Delta stats hold milliseconds: round the min down and the max up so they stay bounds.
            low_utc = low.astimezone(dt.timezone.utc) if low.tzinfo else low
            high_utc = high.astimezone(dt.timezone.utc) if high.tzinfo else high
            low_ms = low_utc.replace(microsecond=low_utc.microsecond // 1000 * 1000)
            high_ms = high_utc.replace(microsecond=high_utc.microsecond // 1000 * 1000)
            if high_ms != high_utc:
                high_ms += dt.timedelta(milliseconds=1)
            fmt = "%Y-%m-%dT%H:%M:%S.{ms:03d}Z"
            return (
                low_ms.strftime(fmt).format(ms=low_ms.microsecond // 1000),
                high_ms.strftime(fmt).format(ms=high_ms.microsecond // 1000),
            )
        if isinstance(low, (int, float)):
            return low, high
        return None, None


_STATS_TYPES = ("string", "byte", "short", "integer", "long", "float", "double", "boolean", "date", "timestamp", "decimal")


class _PartitionFile:
    """One open Parquet file of one partition in one task."""

    def __init__(self, fs: pafs.FileSystem, root: str, rel_dir: str, values: dict[str, str | None],
                 data_fields: Sequence[StructField], task_id: int):
        name = f"part-{task_id:05d}-{uuid.uuid4()}.c000.snappy.parquet"
        self.relative = f"{rel_dir}/{name}" if rel_dir else name
        self.location = f"{root}/{self.relative}"
        self.fs = fs
        self.values = values
        self.rows = 0
        self.writer: pq.ParquetWriter | None = None
        self.stats = {
            f.name: _ColumnStats(f.dataType) for f in data_fields if f.dataType.typeName() in _STATS_TYPES
        }

    def write(self, batch: pa.RecordBatch) -> None:
        if self.writer is None:
            parent = self.location.rsplit("/", 1)[0]
            self.fs.create_dir(parent, recursive=True)
            self.writer = pq.ParquetWriter(
                self.location, batch.schema, filesystem=self.fs, compression="snappy"
            )
        self.writer.write_batch(batch)
        self.rows += batch.num_rows
        for name, stats in self.stats.items():
            stats.update(batch.column(name))

    def close(self) -> dict[str, Any]:
        if self.writer is not None:
            self.writer.close()
        mins, maxs, nulls = {}, {}, {}
        for name, stats in self.stats.items():
            nulls[name] = stats.nulls
            low, high = stats.json_values()
            if low is not None:
                mins[name] = low
            if high is not None:
                maxs[name] = high
        return {
            # delta-rs URI-encodes AddAction/RemoveAction paths itself: give the plain path.
            "path": self.relative,
            "location": self.location,
            "size": self.fs.get_file_info(self.location).size,
            "partition_values": self.values,
            "modification_time": int(time.time() * 1000),
            "stats": json.dumps(
                {"numRecords": self.rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls}
            ),
            "rows": self.rows,
        }


class DeltaRsWriter(DataSourceArrowWriter):
    """Tasks write Parquet files; `commit` publishes all of them in ONE Delta commit.

    Options (strings): `path`; `mode` (append | overwrite | replace_partitions | upsert);
    `partition_by` (JSON list: the table's partition columns, or those of a new table);
    `partitions` (JSON list of specs replaced by replace_partitions, checked in the tasks);
    `remove` (replace_partitions, upsert: JSON list of {path (as in the log), size,
    partition_values} of the files the commit removes, chosen by the driver at
    `expected_version`, which is the only version the commit can land on);
    `expected_version` (int, or absent: the table must not exist); `app_id` +
    `txn_version`; `metadata` (JSON object of strings); `write_id` (unique token stored in
    the commit metadata); `max_open_files` (per task, default `MAX_OPEN_FILES`).

    A task keeps at most `max_open_files` Parquet files open: when it needs one more, it
    closes the one it wrote to least recently (that partition gets another file if more of
    its rows come). Rows sorted by partition (as Spark's own file writer sorts them, and as
    the pipeline does) thus get one file per partition and task, unsorted rows at most one
    per partition and Arrow batch, and a write of any number of partitions stays far below
    the process's open-file limit.
    """

    def __init__(self, options: Mapping[str, str], schema: StructType):
        self.path = options["path"]
        self.table_name = options.get("table_name", self.path)
        self.mode = options.get("mode", "append")
        self.partition_by: list[str] = json.loads(options.get("partition_by") or "[]")
        self.specs: list[dict[str, str | None]] = json.loads(options.get("partitions") or "[]")
        self.remove: list[dict[str, Any]] = json.loads(options.get("remove") or "[]")
        expected = options.get("expected_version")
        self.expected_version = int(expected) if expected not in (None, "", "none") else None
        self.app_id = options.get("app_id") or None
        txn = options.get("txn_version")
        self.txn_version = int(txn) if txn not in (None, "", "none") else None
        self.metadata: dict[str, str] = json.loads(options.get("metadata") or "{}")
        self.write_id = options.get("write_id") or uuid.uuid4().hex
        self.max_open_files = max(1, int(options.get("max_open_files") or MAX_OPEN_FILES))
        self.schema = schema

    # ---- executors

    def write(self, iterator: Iterator[pa.RecordBatch]) -> DeltaRsCommitMessage:
        from pyspark import TaskContext

        context = TaskContext.get()
        task_id = context.partitionId() if context is not None else 0
        fs, root = filesystem_for(self.path)
        types = {f.name: f.dataType for f in self.schema.fields}
        data_fields = [f for f in self.schema.fields if f.name not in self.partition_by]
        names = [f.name for f in data_fields]
        inside = (
            parts.PartitionMatcher(self.specs, types, self.partition_by) if self.mode == "replace_partitions" else None
        )
        open_files: OrderedDict[tuple, _PartitionFile] = OrderedDict()  # least recently written first
        created: list[_PartitionFile] = []
        adds: list[dict[str, Any]] = []
        try:
            for batch in iterator:
                if batch.num_rows == 0:
                    continue
                for values, rows in self._split(batch, types):
                    key = tuple(values.items())
                    target = open_files.get(key)
                    if target is None:
                        if inside is not None and not inside.matches(values):
                            self._outside_replaced(values)
                        if len(open_files) >= self.max_open_files:
                            adds.append(open_files.popitem(last=False)[1].close())
                        target = _PartitionFile(fs, root, parts.partition_dir(list(key)), values, data_fields, task_id)
                        open_files[key] = target
                        created.append(target)
                    else:
                        open_files.move_to_end(key)
                    target.write(rows.select(names))
            while open_files:
                adds.append(open_files.popitem(last=False)[1].close())
        except BaseException as exc:
            for f in created:  # leave nothing behind from a failed task
                try:
                    if f.writer is not None:
                        f.writer.close()
                    fs.delete_file(f.location)
                except Exception:  # noqa: S110 - best effort cleanup; the task error matters
                    pass
            if isinstance(exc, ScoringError):  # typed, for the driver (errors.from_spark)
                raise for_executor(exc) from exc
            raise
        return DeltaRsCommitMessage(adds=adds, rows=sum(a["rows"] for a in adds))

    def _split(self, batch: pa.RecordBatch, types: Mapping[str, DataType]):
        """Yield (partition values in Delta string form, rows) for each partition in `batch`."""
        if not self.partition_by:
            yield {}, batch
            return
        codes = np.zeros(batch.num_rows, dtype=np.int64)
        for name in self.partition_by:
            encoded = pc.dictionary_encode(batch.column(name), null_encoding="encode")
            indices = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
            codes = codes * max(len(encoded.dictionary), 1) + indices
        for code in np.unique(codes):
            rows = batch.filter(pa.array(codes == code))
            values = {
                name: parts.to_partition_string(rows.column(name)[0].as_py(), types[name], name)
                for name in self.partition_by
            }
            yield values, rows

    def _outside_replaced(self, values: Mapping[str, str | None]) -> None:
        raise LakehouseError(
            f"a row of partition {dict(values)} falls outside the partitions being replaced "
            f"{self.specs}; replace_partitions only writes rows of the partitions it "
            "replaces: add the partition to `partitions` or filter the rows"
        )

    # ---- driver

    def commit(self, messages: list[DeltaRsCommitMessage | None]) -> None:
        try:
            self._commit(messages)
        except ScoringError as exc:  # commit() runs in a Python worker: typed, for the driver
            raise for_executor(exc) from exc
        except Exception as exc:
            # A failure after the commit landed (e.g. in a post-commit checkpoint hook) is
            # not a failed write: the data is published and abort() must not delete it.
            if self._landed():
                return
            raise for_executor(LakehouseError(f"the Delta commit to {self.table_name!r} failed: {exc}")) from exc

    def _landed(self) -> bool | None:
        """True if our commit is in the log, False if not, None if the log cannot be read."""
        try:
            return committed_version(self.path, self.write_id, self.expected_version) is not None
        except Exception:
            return None

    def _commit(self, messages: list[DeltaRsCommitMessage | None]) -> None:
        from deltalake import Schema as DeltaSchema
        from deltalake.exceptions import CommitFailedError
        from deltalake.transaction import (
            AddAction,
            CommitProperties,
            Transaction,
            create_table_with_add_actions,
        )

        if any(m is None for m in messages):
            raise LakehouseError("a write task failed; nothing was committed")
        added = [a for m in messages if m is not None for a in m.adds]
        adds = [
            AddAction(a["path"], a["size"], a["partition_values"], a["modification_time"], True, a["stats"])
            for a in added
        ]
        rows = sum(a["rows"] for a in added)
        metadata = {**self.metadata, WRITE_ID_KEY: self.write_id}
        custom: dict[str, Any] = {
            **metadata,
            # Delta-Spark shows userMetadata in DESCRIBE HISTORY; both backends read it back.
            "userMetadata": json.dumps(metadata, sort_keys=True),
        }
        transactions = [Transaction(self.app_id, self.txn_version)] if self.app_id and self.txn_version is not None else None

        delta_log = table_log(self.path, self.table_name)
        latest = delta_log.latest_version() if delta_log.exists() else None
        # Again, now: other writers may have committed while the tasks ran.
        check_planned_version(self.table_name, self.expected_version, latest)
        if latest is None:
            custom["operationMetrics"] = _metrics(len(adds), 0, rows)
            schema = DeltaSchema.from_arrow(to_arrow_schema(_as_nullable(self.schema), timezone="UTC"))
            try:
                create_table_with_add_actions(
                    self.path,
                    schema,
                    adds,
                    mode="error",
                    partition_by=self.partition_by or None,
                    commit_properties=CommitProperties(custom_metadata=custom, app_transactions=transactions),
                )
            except Exception as exc:
                if table_exists(self.path):
                    raise ConcurrentRunError(
                        f"output table {self.table_name!r} was created by another writer while this "
                        "run was running; rerun"
                    ) from exc
                raise
            return

        state = delta_log.state(latest)
        check_writable(state, self.table_name)
        # deltalake's table object pinned at the planned version: with no retries it can
        # only write version latest+1.
        table = open_table(self.path, latest, table=self.table_name)

        def pinned_commit(actions: list, mode: str, schema, partition_by: list[str]) -> None:
            # No retries: delta-rs may then only write version expected+1. Had another writer
            # taken it between the check above and now, a retry would land our removes on top
            # of rows we never saw (delta-rs does not detect such conflicts): fail instead.
            properties = CommitProperties(
                custom_metadata=custom, app_transactions=transactions, max_commit_retries=0
            )
            try:
                table.create_write_transaction(
                    actions, mode=mode, schema=schema, partition_by=partition_by or None,
                    commit_properties=properties,
                )
            except CommitFailedError as exc:
                now = table_log(self.path).latest_version()
                raise ConcurrentRunError(
                    f"output table {self.table_name!r} moved from version {self.expected_version} to "
                    f"{now} while this run was committing; another run committed; rerun"
                ) from exc

        if self.mode == "overwrite":
            custom["operationMetrics"] = _metrics(len(adds), table.get_add_actions(flatten=False).num_rows, rows)
            schema = DeltaSchema.from_arrow(to_arrow_schema(_as_nullable(self.schema), timezone="UTC"))
            if list(self.partition_by) != partition_columns(state):
                # A new partitioning needs new table metadata: CREATE OR REPLACE in one
                # commit (removes of every active file + adds), keeping the table properties.
                create_table_with_add_actions(
                    self.path, schema, adds, mode="overwrite", partition_by=self.partition_by or None,
                    configuration=dict(state.metadata.configuration),
                    commit_properties=CommitProperties(custom_metadata=custom, app_transactions=transactions),
                )
                return
            # delta-rs turns mode="overwrite" without filters into removes of every active
            # file of the loaded (= expected) version, in the same commit as the adds.
            pinned_commit(adds, "overwrite", schema, self.partition_by)
            return

        removes = self._removes()
        custom["operationMetrics"] = _metrics(len(adds), len(removes), rows)
        schema = DeltaSchema.from_arrow(to_arrow_schema(spark_schema(state), timezone="UTC"))
        pinned_commit([*adds, *removes], "append", schema, partition_columns(state))

    def _removes(self) -> list:
        """RemoveActions of the files the driver chose (replaced partitions, upserted files)."""
        from deltalake.transaction import RemoveAction

        now = int(time.time() * 1000)
        # delta-rs URI-encodes the paths of actions itself: give it the decoded path.
        return [
            RemoveAction(parts.uri_decode_path(f["path"]), True, now, f["size"], dict(f["partition_values"]))
            for f in self.remove
        ]

    def abort(self, messages: list[DeltaRsCommitMessage | None]) -> None:
        landed = self._landed()
        if landed is None:
            # Unknown: keeping orphan files is harmless, deleting files of a landed commit
            # would corrupt the table. Orphans go with the next VACUUM.
            log.warning("could not tell whether write %s to %s was committed; keeping its files",
                        self.write_id, self.path)
            return
        if landed:  # never delete files a commit references
            return
        fs, _ = filesystem_for(self.path)
        for message in messages:
            if message is None:
                continue
            for add in message.adds:
                with contextlib.suppress(FileNotFoundError):
                    fs.delete_file(add["location"])


def _metrics(files: int, removed: int, rows: int) -> dict[str, str]:
    # Delta-Spark's names for a WRITE commit, so both engines report alike.
    return {"numFiles": str(files), "numRemovedFiles": str(removed), "numOutputRows": str(rows)}


def _as_nullable(schema: StructType) -> StructType:
    """Every column nullable, as Delta-Spark creates tables from DataFrames."""
    return StructType([StructField(f.name, f.dataType, True, f.metadata) for f in schema.fields])
