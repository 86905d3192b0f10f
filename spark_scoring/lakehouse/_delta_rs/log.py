"""The delta-rs engine's view of a table's log: features, files, selection, task packing.

Everything here runs on the driver (the planner and the commit process included) and reads
the log through `deltalog` (the one log reader of the package: checkpoints, deletion
vectors, column mapping); `deltalake` is used only to commit (`open_table`). Nothing here
starts a Spark job.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow.fs as pafs
from pyspark.sql.types import StructType

from spark_scoring.contract import WRITE_ID_KEY
from spark_scoring.errors import (
    LakehouseError,
    TableNotFoundError,
    UnsupportedTableFeatureError,
)
from spark_scoring.lakehouse import _partitions as parts
from spark_scoring.lakehouse.deltalog import DeltaLog, FileAction, Snapshot, TableState

_ADVICE = {
    "deletionVectors": (
        "deletion vectors (delta.enableDeletionVectors): rows deleted through a deletion "
        "vector would come back"
    ),
    "columnMapping": (
        "column mapping (delta.columnMapping.mode): Parquet column names are not the "
        "table's column names"
    ),
}
#: Reader features whose tables plain Parquet reads get right (deletion vectors and column
#: mapping have their own checks). Any other reader feature is refused: never wrong rows.
_READABLE_FEATURES = frozenset(
    {"deletionVectors", "columnMapping", "timestampNtz", "typeWidening", "typeWidening-preview",
     "v2Checkpoint", "vacuumProtocolCheck", "variantType"}  # variantType: refused where a column uses it
)
#: Writer features whose duties this engine's commits meet (or that `_used_features`
#: checks by use). Any other (rowTracking, clustering, domainMetadata, inCommitTimestamp,
#: identityColumns, typeWidening, icebergCompat*, catalogManaged, ...) is refused.
_WRITABLE_FEATURES = frozenset(
    {"appendOnly", "invariants", "checkConstraints", "changeDataFeed", "generatedColumns",
     "timestampNtz", "v2Checkpoint", "vacuumProtocolCheck", "variantType"}
)


def table_log(path: str, table: str | None = None) -> DeltaLog:
    """The Delta log of the table at `path` (named `table` in messages)."""
    return DeltaLog(path, table=table or path)


def open_table(path: str, version: int | None = None, table: str | None = None):
    """`deltalake.DeltaTable` at `version` (latest: None), for committing, with our error classes."""
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
        raise LakehouseError(f"Delta table {name!r} cannot be opened: {exc}") from exc


def table_exists(path: str) -> bool:
    """True when `path` holds a Delta table."""
    try:
        return DeltaLog(path).exists()
    except LakehouseError:
        return False


def _deletion_vectors_on(state: TableState) -> bool:
    enabled = str(state.metadata.configuration.get("delta.enableDeletionVectors", "")).lower() == "true"
    return enabled or "deletionVectors" in state.protocol.features


def check_readable(state: TableState, table: str, files: Iterable[FileAction] = ()) -> None:
    """Refuse to read what plain Parquet reads would get wrong: a table with column mapping,
    or files that carry deletion vectors (files without one read correctly, DVs enabled or not)."""
    found = sorted(state.protocol.reader_features - _READABLE_FEATURES)
    found += [f for f in _used_features(state) if f == "variantType"]  # deltalake lists it on every table
    if state.metadata.column_mapping_mode not in ("none", ""):
        found.append("columnMapping")
    if _deletion_vectors_on(state):
        with_dv = [f.path for f in files if f.deletion_vector]
        if with_dv:
            found.append("deletionVectors")
    _refuse(found, table)


def check_writable(state: TableState, table: str) -> None:
    """Refuse to write tables with deletion vectors or column mapping enabled, with a table
    feature whose writer duties these commits do not meet (row ids, clustering, in-commit
    timestamps, ...), or with constraints, invariants, generated or identity columns in use
    (plain Parquet writes would not enforce or fill them)."""
    found = ["deletionVectors"] if _deletion_vectors_on(state) else []
    if state.metadata.column_mapping_mode not in ("none", ""):
        found.append("columnMapping")
    found += sorted(state.protocol.features - _WRITABLE_FEATURES - {"deletionVectors", "columnMapping"})
    found += _used_features(state)
    _refuse(found, table, "write")


def _used_features(state: TableState) -> list[str]:
    """Features the table uses, whatever its protocol lists: CHECK constraints, invariants,
    generated and identity columns, variant columns (plain Parquet reads and writes would
    not decode, enforce or fill them)."""
    found = []
    if any(k.startswith("delta.constraints.") for k in state.metadata.configuration):
        found.append("checkConstraints")
    keys: set[str] = set()
    types: set[str] = set()
    stack: list = list(state.metadata.schema.get("fields", []))
    while stack:
        item = stack.pop()
        if isinstance(item, dict) and "name" in item:  # a field
            keys.update(item.get("metadata") or {})
            item = item.get("type")
        if isinstance(item, str):
            types.add(item)
        elif isinstance(item, dict):
            stack.extend(item.get("fields", []))
            stack.extend(item[k] for k in ("elementType", "keyType", "valueType") if k in item)
    for prefix, feature in (("delta.invariants", "invariants"), ("delta.generationExpression", "generatedColumns"),
                            ("delta.identity.", "identityColumns")):
        if any(k.startswith(prefix) for k in keys):
            found.append(feature)
    if "variant" in types:
        found.append("variantType")
    return found


def _refuse(found: Sequence[str], table: str, action: str = "read") -> None:
    if not found:
        return
    found = list(dict.fromkeys(found))
    raise UnsupportedTableFeatureError(
        f"Delta table {table!r} uses {' and '.join(_ADVICE.get(f, f'table feature {f!r}') for f in found)} "
        f"(table features: {', '.join(found)}); the delta-rs engine refuses such tables rather than "
        f"{action} wrong data. Run with engine 'delta-spark' "
        "(the JVM Delta connector), or rewrite the table without the feature (e.g. REORG TABLE "
        "... APPLY (PURGE) and ALTER TABLE ... SET TBLPROPERTIES ('delta.enableDeletionVectors' "
        "= 'false'))."
    )


def spark_schema(state: TableState) -> StructType:
    """The Spark schema of a table state (Delta's schema JSON is Spark's StructType JSON)."""
    return StructType.fromJson(state.metadata.schema)


def partition_columns(state: TableState) -> list[str]:
    """The table's partition columns, in order."""
    return list(state.metadata.partition_columns)


def filesystem_for(root: str) -> tuple[pafs.FileSystem, str]:
    """(file system, path inside it) for a table root path or URI."""
    if "://" in root:
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), os.path.abspath(root)


def task_file(action: FileAction, root: str) -> dict[str, Any]:
    """What a read task needs of one file (small: it is pickled into the task)."""
    return {
        "location": action.location(root),
        "size": int(action.size or 0),
        "partition_values": dict(action.partition_values),
    }


def select_files(
    snapshot: Snapshot,
    specs: Sequence[Mapping[str, str | None]] | None,
    keys: Iterable[tuple[str, str | None]] | None = None,
    table: str | None = None,
) -> list[FileAction]:
    """The files of `snapshot` in any of `specs` (None: every partition) and, when `keys` is
    given, among those file states (a key the version does not hold is an error)."""
    files: Iterable[FileAction] = snapshot.files.values()
    if keys is not None:
        wanted = list(dict.fromkeys(keys))
        missing = [k for k in wanted if k not in snapshot.files]
        if missing:
            raise LakehouseError(
                f"{len(missing)} of the {len(wanted)} file states asked for are not files of version "
                f"{snapshot.version} of {table or 'the table'!r} (first: {missing[0]}); list them from the "
                "same version's log (snapshot(version).files or files(table, version))"
            )
        files = [snapshot.files[k] for k in wanted]
    if specs is None:
        return list(files)
    types = {f.name: f.dataType for f in spark_schema(snapshot).fields}
    matcher = parts.PartitionMatcher(specs, types, partition_columns(snapshot))
    return [f for f in files if matcher.matches(f.partition_values)]


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
    """The version of the commit carrying `write_id` (newer than `after`), or None.

    Reads commitInfo only, newest first, down to version after+1.
    """
    log = DeltaLog(path)
    if not log.exists():
        return None
    for entry in log.iter_history():
        if after is not None and entry.version <= after:
            break
        user = entry.info.get("userMetadata")
        if entry.info.get(WRITE_ID_KEY) == write_id or (isinstance(user, str) and write_id in user):
            return entry.version
    return None
