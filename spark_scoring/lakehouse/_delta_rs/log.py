"""The delta-rs table log: open a table, check its features, list and select its files.

Everything here runs on the driver (the planner and the commit process included), with
`deltalake` reading the Delta log; nothing here starts a Spark job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
from pyspark.sql.types import StructType

from spark_scoring.contract import WRITE_ID_KEY
from spark_scoring.errors import (
    LakehouseError,
    TableNotFoundError,
    UnsupportedTableFeatureError,
)
from spark_scoring.lakehouse import _partitions as parts
from spark_scoring.lakehouse.base import RESERVED_COMMIT_KEYS, parse_user_metadata


def open_table(path: str, version: int | None = None, table: str | None = None):
    """`deltalake.DeltaTable` at `version` (latest: None), with our error classes."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError as _DlNotFound

    name = table or path
    try:
        return DeltaTable(path, version=version)
    except _DlNotFound as exc:
        raise TableNotFoundError(
            f"no Delta table at {name!r} (no _delta_log there); check the path, or create the "
            "table with a first write"
        ) from exc
    except Exception as exc:
        if version is not None and "version" in str(exc).lower():
            raise LakehouseError(
                f"version {version} of Delta table {name!r} cannot be loaded ({exc}); the version "
                "may not exist yet or its log may have been cleaned up; pick a version listed by "
                "history()"
            ) from exc
        raise LakehouseError(f"Delta table {name!r} cannot be opened: {exc}") from exc


def table_exists(path: str) -> bool:
    """True when `path` holds a Delta table."""
    from deltalake import DeltaTable

    try:
        return bool(DeltaTable.is_deltatable(path))
    except Exception:
        return False


def unsupported_features(delta_table) -> list[str]:
    """The features of the table that this backend cannot read or write correctly."""
    found: list[str] = []
    protocol = delta_table.protocol()
    features = set(protocol.reader_features or []) | set(protocol.writer_features or [])
    config = delta_table.metadata().configuration or {}
    if "deletionVectors" in features or str(config.get("delta.enableDeletionVectors", "")).lower() == "true":
        found.append("deletionVectors")
    mapping_mode = str(config.get("delta.columnMapping.mode", "none")).strip().lower()
    if mapping_mode not in ("none", ""):
        found.append("columnMapping")
    return found


def check_supported(delta_table, table: str) -> None:
    """Refuse tables that delta-rs would read wrongly through plain Parquet files."""
    found = unsupported_features(delta_table)
    if not found:
        return
    advice = {
        "deletionVectors": (
            "deletion vectors (delta.enableDeletionVectors): rows deleted through a deletion "
            "vector would come back"
        ),
        "columnMapping": (
            "column mapping (delta.columnMapping.mode): Parquet column names are not the "
            "table's column names"
        ),
    }
    raise UnsupportedTableFeatureError(
        f"Delta table {table!r} uses {' and '.join(advice[f] for f in found)}; the delta-rs "
        "engine refuses such tables rather than read wrong data. Run with engine 'delta-spark' "
        "(the JVM Delta connector), or rewrite the table without the feature (e.g. REORG TABLE "
        "... APPLY (PURGE) and ALTER TABLE ... SET TBLPROPERTIES ('delta.enableDeletionVectors' "
        "= 'false'))."
    )


def spark_schema(delta_table) -> StructType:
    """The Spark schema of a delta-rs table (Delta's schema JSON is Spark's StructType JSON)."""
    return StructType.fromJson(json.loads(delta_table.schema().to_json()))


def partition_columns(delta_table) -> list[str]:
    """The table's partition columns, in order."""
    return list(delta_table.metadata().partition_columns)


def table_root(delta_table) -> str:
    """The table's root as a path pyarrow's file systems understand (no trailing slash)."""
    uri = delta_table.table_uri.rstrip("/")
    if uri.startswith("file://"):
        return parts.uri_decode_path(uri[len("file://") :]) or "/"
    return uri


def filesystem_for(root: str) -> tuple[pafs.FileSystem, str]:
    """(file system, path inside it) for a table root path or URI."""
    if "://" in root:
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), os.path.abspath(root)


def active_files(delta_table) -> list[dict[str, Any]]:
    """Every active file of the loaded version: log path, file path, size, rows, partition values."""
    actions = pa.table(delta_table.get_add_actions(flatten=False))
    columns = actions.column_names
    root = table_root(delta_table)
    # delta-rs hands partition values back typed (a date, an int); everything above this
    # function works with Delta's string form, so convert them back.
    types = {f.name: f.dataType for f in spark_schema(delta_table).fields}
    files = []
    for row in actions.to_pylist():
        log_path = row["path"]
        # Absolute paths (with a scheme) are allowed by the protocol; relative ones are URIs.
        location = log_path if "://" in log_path else f"{root}/{parts.uri_decode_path(log_path)}"
        files.append(
            {
                "log_path": log_path,
                "location": location,
                "size": int(row["size_bytes"]),
                "num_records": row.get("num_records"),
                "partition_values": {
                    col: value if value is None or isinstance(value, str)
                    else parts.to_partition_string(value, types[col], col)
                    for col, value in (row["partition"] or {}).items()
                } if "partition" in columns else {},
            }
        )
    return files


def select_files(
    files: Sequence[Mapping[str, Any]],
    specs: Sequence[Mapping[str, str | None]] | None,
    schema: StructType,
    partition_cols: Sequence[str],
) -> list[Mapping[str, Any]]:
    """The files whose partition values match any of `specs` (all files when specs is None)."""
    if specs is None:
        return list(files)
    types = {f.name: f.dataType for f in schema.fields}
    checked = [parts.check_partition_spec(spec, partition_cols) for spec in specs]
    return [
        f for f in files if any(parts.spec_matches(spec, f["partition_values"], types) for spec in checked)
    ]


def pack_files(files: Sequence[Mapping[str, Any]], max_bytes: int) -> list[list[Mapping[str, Any]]]:
    """Group files into tasks of about `max_bytes` (a bigger file gets a task of its own)."""
    groups: list[list[Mapping[str, Any]]] = []
    current: list[Mapping[str, Any]] = []
    current_bytes = 0
    for f in sorted(files, key=lambda f: f["location"]):
        if current and current_bytes + f["size"] > max_bytes:
            groups.append(current)
            current, current_bytes = [], 0
        current.append(f)
        current_bytes += f["size"]
    if current:
        groups.append(current)
    return groups


def committed_version(path: str, write_id: str, after: int | None) -> int | None:
    """The version of the commit carrying `write_id` (newer than `after`), or None."""
    if not table_exists(path):
        return None
    table = open_table(path)
    latest = table.version()
    start = -1 if after is None else after
    for entry in table.history(max(latest - start, 1)):
        if entry.get(WRITE_ID_KEY) == write_id or write_id in str(entry.get("userMetadata", "")):
            return int(entry["version"])
    return None


def commit_metadata(entry: Mapping[str, Any]) -> dict[str, Any]:
    """Custom metadata of one commitInfo entry: extra keys plus the JSON in `userMetadata`."""
    metadata = {k: v for k, v in entry.items() if k not in RESERVED_COMMIT_KEYS}
    metadata.update(parse_user_metadata(entry.get("userMetadata")))
    return metadata
