"""The actions of a Delta log (PROTOCOL.md "Actions"), parsed into small frozen records.

A commit file holds one JSON action per line; a checkpoint holds the same actions as
Parquet rows. Both end up here, in one form: `FileAction` (add / remove), `TableMetadata`
(metaData), `Protocol`, `Commit` (one commit file) and `HistoryEntry` (its commitInfo).

Column mapping (`delta.columnMapping.mode` = name or id): the log names partition values
and statistics by the columns' *physical* names (`col-5f1c...`). `FileAction.logical`
renames them to the table's column names, so that everything above this package speaks
column names whatever the table's mode.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any
from urllib.parse import unquote

import pyarrow as pa


@dataclass(frozen=True)
class FileAction:
    """One `add` or `remove` action (a data file entering or leaving the table).

    Attributes:
        path: the path as the log stores it: relative to the table root and URI-encoded,
            or an absolute URI.
        partition_values: Delta string form per partition column (None for null), keyed
            by column name (column mapping translated).
        size: bytes (None when a remove did not record it).
        data_change: False for rewrites that change no row (OPTIMIZE, ...).
        stats: the statistics JSON of an add (None when absent), columns by name.
        deletion_vector: the deletion vector descriptor, or None.
        tags: the action's tags, or {}.
    """

    path: str
    partition_values: Mapping[str, str | None]
    size: int | None = None
    data_change: bool = True
    stats: str | None = None
    deletion_vector: Mapping[str, Any] | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str | None]:
        """The identity of this file *state*: its path and its deletion vector's id."""
        return (self.path, dv_id(self.deletion_vector))

    @cached_property
    def parsed_stats(self) -> dict[str, Any]:
        """The statistics as a dict ({} when there are none or they do not parse)."""
        if not self.stats:
            return {}
        try:
            parsed = json.loads(self.stats)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}

    @property
    def num_records(self) -> int | None:
        """Rows in the file (before its deletion vector), from the statistics."""
        value = self.parsed_stats.get("numRecords")
        return int(value) if isinstance(value, (int, float)) else None

    @property
    def deleted_rows(self) -> int:
        """Rows the deletion vector marks as deleted (0 without one)."""
        return int((self.deletion_vector or {}).get("cardinality") or 0)

    @property
    def live_records(self) -> int | None:
        """Rows of the file that are part of the table (its deletion vector applied)."""
        total = self.num_records
        return None if total is None else total - self.deleted_rows

    def location(self, root: str) -> str:
        """The file's absolute path or URI under the table root `root` (decoded)."""
        if "://" in self.path or self.path.startswith("file:"):
            return unquote(self.path) if self.path.startswith("file:") else self.path
        return f"{root.rstrip('/')}/{unquote(self.path)}"

    def logical(self, names: ColumnNames | None) -> FileAction:
        """This action with partition values and statistics keyed by column name.

        Args:
            names: the table's physical -> logical names (None or empty: no column mapping).
        """
        if not names:
            return self
        values = {names.get(k, (k, None))[0]: v for k, v in self.partition_values.items()}
        stats = self.stats
        if stats and self.parsed_stats:
            renamed = {k: _rename(v, names) if isinstance(v, dict) and k != "tightBounds" else v
                       for k, v in self.parsed_stats.items()}
            stats = json.dumps(renamed)
        return replace(self, partition_values=values, stats=stats)


#: physical name -> (logical name, the names of its struct's fields, or None)
ColumnNames = Mapping[str, "tuple[str, ColumnNames | None]"]


def _rename(values: Mapping[str, Any], names: ColumnNames | None) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        logical, nested = (names or {}).get(key, (key, None))
        out[logical] = _rename(value, nested) if isinstance(value, dict) else value
    return out


def dv_id(descriptor: Mapping[str, Any] | None) -> str | None:
    """A deletion vector's unique id (storage type + path or inline data + offset), or None."""
    if not descriptor:
        return None
    offset = descriptor.get("offset")
    ident = f"{descriptor.get('storageType')}{descriptor.get('pathOrInlineDv')}"
    return ident if offset is None else f"{ident}@{offset}"


@dataclass(frozen=True)
class TableMetadata:
    """A `metaData` action: the table id, schema and partitioning."""

    id: str
    schema_string: str
    partition_columns: tuple[str, ...]
    configuration: Mapping[str, str]
    created_time: int | None = None

    @cached_property
    def schema(self) -> dict[str, Any]:
        """The schema as Delta's (= Spark's StructType) JSON dict."""
        return json.loads(self.schema_string)

    @property
    def column_names(self) -> list[str]:
        return [f["name"] for f in self.schema.get("fields", [])]

    @property
    def column_mapping_mode(self) -> str:
        """`delta.columnMapping.mode`: "none", "name" or "id"."""
        return str(self.configuration.get("delta.columnMapping.mode") or "none").strip().lower()

    @cached_property
    def physical_names(self) -> ColumnNames:
        """physical -> logical column names (nested struct fields too); {} without column mapping."""
        if self.column_mapping_mode in ("", "none"):
            return {}
        return _physical_names(self.schema.get("fields", []))


def _physical_names(fields: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, Any]]:
    out: dict[str, tuple[str, Any]] = {}
    for f in fields:
        physical = (f.get("metadata") or {}).get("delta.columnMapping.physicalName") or f["name"]
        kind = f.get("type")
        nested = _physical_names(kind.get("fields", [])) if isinstance(kind, dict) and kind.get("type") == "struct" else None
        out[str(physical)] = (str(f["name"]), nested)
    return out


@dataclass(frozen=True)
class Protocol:
    """A `protocol` action."""

    min_reader_version: int
    min_writer_version: int
    reader_features: frozenset[str] = frozenset()
    writer_features: frozenset[str] = frozenset()

    @property
    def features(self) -> frozenset[str]:
        return self.reader_features | self.writer_features


@dataclass(frozen=True)
class HistoryEntry:
    """One commit's `commitInfo`, for history: read without parsing its file actions.

    Attributes:
        version: the table version.
        timestamp: milliseconds since the epoch: the in-commit timestamp where the table
            has them, else commitInfo's timestamp, else the commit file's modification
            time (what Delta-Spark's DESCRIBE HISTORY shows without in-commit timestamps).
        operation: commitInfo's operation, or "".
        info: the whole commitInfo action ({} when the commit has none).
    """

    version: int
    timestamp: int | None
    operation: str
    info: Mapping[str, Any]


@dataclass(frozen=True)
class Commit:
    """One version of the table: what its commit file says.

    Attributes:
        version: the table version.
        timestamp: milliseconds since the epoch (as `HistoryEntry.timestamp`), or None.
        operation: commitInfo's operation (`WRITE`, `DELETE`, `OPTIMIZE`, ...), or "".
        info: the whole commitInfo action ({} when absent).
        adds, removes: the file actions.
        txns: app id -> version of the SetTransactions in this commit.
        metadata, protocol: set when this commit changed them.
    """

    version: int
    timestamp: int | None
    operation: str
    info: Mapping[str, Any]
    adds: tuple[FileAction, ...] = ()
    removes: tuple[FileAction, ...] = ()
    txns: Mapping[str, int] = field(default_factory=dict)
    metadata: TableMetadata | None = None
    protocol: Protocol | None = None

    @property
    def data_change(self) -> bool:
        """True when some file action of this commit changes rows (not a pure rewrite)."""
        return any(a.data_change for a in (*self.adds, *self.removes))

    @property
    def bytes_added(self) -> int:
        return sum(a.size or 0 for a in self.adds)

    @property
    def bytes_removed(self) -> int:
        """Bytes of the removed files (a remove that did not record its size counts 0)."""
        return sum(a.size or 0 for a in self.removes)


# ------------------------------------------------------------------------------- parsing


def file_action(raw: Mapping[str, Any]) -> FileAction:
    """A `FileAction` from an add/remove action (a JSON line or a checkpoint row)."""
    stats = raw.get("stats")
    if not stats and raw.get("stats_parsed"):
        # Checkpoints written with delta.checkpoint.writeStatsAsJson=false hold only the
        # typed struct: turn it back into the JSON form every other reader sees.
        stats = json.dumps(raw["stats_parsed"], default=_stats_json_value)
    return FileAction(
        path=str(raw["path"]),
        partition_values=dict(raw.get("partitionValues") or {}),
        size=int(raw["size"]) if raw.get("size") is not None else None,
        data_change=bool(raw.get("dataChange", True)),
        stats=stats,
        deletion_vector=dict(raw["deletionVector"]) if raw.get("deletionVector") else None,
        tags=dict(raw.get("tags") or {}),
    )


def file_actions(column: pa.ChunkedArray | pa.Array) -> list[FileAction]:
    """`FileAction`s of a checkpoint's add/remove column (its non-null rows), column by
    column: several times faster than one dict per row for checkpoints of 100,000 files."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    names = {f.name for f in array.type}
    size = len(array)

    def values(name: str) -> list[Any]:
        return array.field(name).to_pylist() if name in names else [None] * size

    paths, sizes, changes = values("path"), values("size"), values("dataChange")
    partition_values, stats, dvs, tags = values("partitionValues"), values("stats"), values("deletionVector"), values("tags")
    typed = values("stats_parsed") if "stats_parsed" in names else None
    out = []
    for i in range(size):
        text = stats[i]
        if not text and typed is not None and typed[i]:
            text = json.dumps(typed[i], default=_stats_json_value)
        out.append(FileAction(
            path=paths[i],
            partition_values=dict(partition_values[i] or ()),
            size=sizes[i],
            data_change=True if changes[i] is None else changes[i],
            stats=text,
            deletion_vector=dvs[i] or None,
            tags=dict(tags[i] or ()),
        ))
    return out


def _stats_json_value(value: Any) -> Any:
    """Typed statistics values in Delta's JSON form (dates ISO, timestamps ISO in UTC, ms)."""
    if isinstance(value, dt.datetime):
        utc = value.astimezone(dt.timezone.utc) if value.tzinfo else value
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return None
    raise TypeError(f"statistics value {value!r} has no JSON form")


def table_metadata(raw: Mapping[str, Any]) -> TableMetadata:
    return TableMetadata(
        id=str(raw.get("id")),
        schema_string=str(raw.get("schemaString") or '{"type":"struct","fields":[]}'),
        partition_columns=tuple(raw.get("partitionColumns") or ()),
        configuration=dict(raw.get("configuration") or {}),
        created_time=raw.get("createdTime"),
    )


def protocol(raw: Mapping[str, Any]) -> Protocol:
    return Protocol(
        min_reader_version=int(raw.get("minReaderVersion") or 1),
        min_writer_version=int(raw.get("minWriterVersion") or 2),
        reader_features=frozenset(raw.get("readerFeatures") or ()),
        writer_features=frozenset(raw.get("writerFeatures") or ()),
    )


def _is_file_action_line(line: str) -> bool:
    # Both Delta writers serialise actions compactly: a cheap test that skips json.loads
    # for the (many) add/remove lines when only the other actions are wanted.
    return line.startswith('{"add"') or line.startswith('{"remove"') or line.startswith('{"cdc"')


def parse_commit(version: int, lines: Iterable[str], mtime: int | None = None) -> Commit:
    """A `Commit` from the lines of its commit file (one JSON action per line).

    Args:
        mtime: the commit file's modification time (ms), the timestamp of last resort.
    """
    info: dict[str, Any] = {}
    adds: list[FileAction] = []
    removes: list[FileAction] = []
    txns: dict[str, int] = {}
    metadata = proto = None
    for line in lines:
        line = line.strip()
        if not line:
            continue
        action = json.loads(line)
        if "add" in action:
            adds.append(file_action(action["add"]))
        elif "remove" in action:
            removes.append(file_action(action["remove"]))
        elif "commitInfo" in action:
            info = action["commitInfo"] or {}
        elif "txn" in action:
            txns[str(action["txn"]["appId"])] = int(action["txn"]["version"])
        elif "metaData" in action:
            metadata = table_metadata(action["metaData"])
        elif "protocol" in action:
            proto = protocol(action["protocol"])
    return Commit(
        version=version,
        timestamp=commit_timestamp(info, mtime),
        operation=str(info.get("operation") or ""),
        info=info,
        adds=tuple(adds),
        removes=tuple(removes),
        txns=txns,
        metadata=metadata,
        protocol=proto,
    )


def skip_file_actions(lines: Iterable[str]) -> Iterator[str]:
    """The lines of a commit file that are not add/remove/cdc actions (commitInfo, txn,
    metaData, protocol, ...), without parsing the others."""
    for line in lines:
        line = line.strip()
        if line and not _is_file_action_line(line):
            yield line


def history_entry(version: int, lines: Iterable[str], mtime: int | None = None) -> HistoryEntry:
    """The `HistoryEntry` of a commit file (its add/remove lines are never parsed)."""
    info: dict[str, Any] = {}
    for line in skip_file_actions(lines):
        action = json.loads(line)
        if "commitInfo" in action:
            info = action["commitInfo"] or {}
            break
    return HistoryEntry(version, commit_timestamp(info, mtime), str(info.get("operation") or ""), info)


def commit_timestamp(info: Mapping[str, Any], mtime: int | None = None) -> int | None:
    """A commit's timestamp (ms): in-commit timestamp, else commitInfo's, else the file's mtime."""
    stamp = info.get("inCommitTimestamp", info.get("timestamp"))
    return int(stamp) if stamp is not None else mtime
