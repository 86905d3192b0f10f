"""The read side of the delta-rs data source: plan file groups, read them in parallel tasks.

`partitions()` (in Spark's planner process) takes the active files of the pinned version
from the Delta log (`deltalog`: checkpoints included), keeps only the files of the
requested partitions (a hash lookup per file on canonical typed values) or the file states
asked for, refuses files with deletion vectors, and packs them into InputPartitions of
about `max_bytes_per_task` bytes. When the driver already chose the files (`read(...,
files=...)`), it hands them over in the `planned` option and the planner reads no log.
`read()` (on the executors) opens only those Parquet files, projects the requested
columns, and adds the partition columns (which Delta data files do not hold) back with
their types.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql.datasource import DataSourceReader, InputPartition
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructType

from spark_scoring.errors import raised_for_driver
from spark_scoring.lakehouse import _partitions as parts
from spark_scoring.lakehouse._delta_rs.log import (
    check_readable,
    filesystem_for,
    pack_files,
    select_files,
    table_log,
    task_file,
)

DEFAULT_MAX_BYTES_PER_TASK = 128 * 1024 * 1024


class DeltaRsReader(DataSourceReader):
    """Reads the files of one pinned table version in parallel tasks.

    Options: `path`, `version`, `partitions` (JSON specs), `files` (JSON list of
    [log path, deletion vector id] keys), `planned` (JSON list of task files: planned on
    the driver already), `max_bytes_per_task`.
    """

    def __init__(self, options: Mapping[str, str], schema: StructType):
        self.path = options["path"]
        self.version = int(options["version"]) if options.get("version") is not None else None
        self.specs = json.loads(options["partitions"]) if options.get("partitions") else None
        keys = json.loads(options["files"]) if options.get("files") else None
        self.keys = None if keys is None else [(str(k[0]), k[1]) for k in keys]
        self.planned = json.loads(options["planned"]) if options.get("planned") else None
        self.max_bytes = int(options.get("max_bytes_per_task", DEFAULT_MAX_BYTES_PER_TASK))
        self.schema = schema

    def plan(self) -> list[list[Mapping[str, Any]]]:
        """The file groups the read will run, one per Spark task (also used by tests)."""
        if self.planned is not None:
            return pack_files(self.planned, self.max_bytes)
        log = table_log(self.path)
        snapshot = log.snapshot(self.version)
        files = select_files(snapshot, self.specs, self.keys, self.path)
        check_readable(snapshot, self.path, files)
        return pack_files([task_file(f, log.root) for f in files], self.max_bytes)

    def partitions(self) -> list[InputPartition]:
        with raised_for_driver():  # runs in Spark's planner process
            groups = self.plan()
        return [InputPartition(group) for group in groups]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        files = partition.value or []
        if not files:
            return
        arrow_schema = to_arrow_schema(self.schema, timezone="UTC")
        with raised_for_driver():
            yield from _read_files(files, self.schema, arrow_schema)


def _read_files(
    files: Sequence[Mapping[str, Any]], schema: StructType, arrow_schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    for f in files:
        fs, path = filesystem_for(f["location"])
        # Every partition column is a key of partitionValues (value null for null).
        values = f["partition_values"]
        typed = {
            field.name: parts.from_partition_string(values[field.name], field.dataType, field.name)
            for field in schema.fields
            if field.name in values
        }
        data_fields = [fld for fld in schema.fields if fld.name not in values]
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            in_file = set(parquet.schema_arrow.names)
            to_read = [fld.name for fld in data_fields if fld.name in in_file]
            if to_read:
                chunks: Iterator[Any] = parquet.iter_batches(batch_size=8192, columns=to_read)
            else:  # only partition columns asked for: just the row count matters
                total = parquet.metadata.num_rows
                chunks = iter([min(8192, total - start) for start in range(0, total, 8192)])
            for chunk in chunks:
                yield _assemble(chunk, arrow_schema, typed)


def _assemble(chunk: pa.RecordBatch | int, arrow_schema: pa.Schema, typed: Mapping[str, Any]) -> pa.RecordBatch:
    rows = chunk if isinstance(chunk, int) else chunk.num_rows
    names = set() if isinstance(chunk, int) else set(chunk.schema.names)
    arrays = []
    for target in arrow_schema:
        if target.name in typed:
            value = typed[target.name]
            arrays.append(pa.nulls(rows, target.type) if value is None else pa.repeat(pa.scalar(value, target.type), rows))
        elif target.name in names:
            column = chunk.column(target.name)
            arrays.append(column if column.type == target.type else column.cast(target.type))
        else:  # column added to the table after this file was written
            arrays.append(pa.nulls(rows, target.type))
    return pa.RecordBatch.from_arrays(arrays, schema=arrow_schema)
