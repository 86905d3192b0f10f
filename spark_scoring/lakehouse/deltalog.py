"""A reader of the Delta transaction log itself, for planning that costs what the log costs.

Planning a nightly run needs the log, never the rows: which files a version holds, what
changed between two versions, the recorded watermark (a SetTransaction), who committed
what. This module reads `_delta_log/` directly with pyarrow's file systems, the same way
for every engine (delta-rs or the JVM connector wrote it), so:

* `changes(since, until)` reads only the commit files of versions since+1..until: its cost
  grows with what changed, not with the size of the table;
* `snapshot(version)` replays the newest checkpoint at or before `version` (classic,
  multi-part, or V2 with sidecars) plus the commits after it: no Spark job, no data file;
* deletion vectors are part of a file's identity (`FileAction.key`): a DELETE that only
  adds a deletion vector to a file shows up as that file removed and re-added with a new
  vector, so it is a change of exactly that file.

It follows the Delta protocol (PROTOCOL.md in delta-io/delta): commit files
`%020d.json` (one action per line), checkpoints `%020d.checkpoint.parquet`,
`%020d.checkpoint.%010d.%010d.parquet` or `%020d.checkpoint.<uuid>.(json|parquet)`, and
`_last_checkpoint`. Nothing here imports pyspark.

Example:
    >>> log = DeltaLog("/lake/reviews")
    >>> log.latest_version()
    12
    >>> [c.operation for c in log.changes(10, 12)]
    ['WRITE', 'DELETE']
    >>> len(log.snapshot(12).files)
    40
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import unquote

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from spark_scoring.errors import LakehouseError, TableNotFoundError

_COMMIT_RE = re.compile(r"^(\d{20})\.json$")
_CHECKPOINT_RE = re.compile(r"^(\d{20})\.checkpoint(?:\.(\d{10})\.(\d{10})|\.([0-9a-fA-F-]{36}))?\.(parquet|json)$")


class MissingLogError(LakehouseError):
    """A version's log entries are gone (log cleanup, VACUUM) or were never written."""


# ------------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class FileAction:
    """One `add` or `remove` action (a data file entering or leaving the table).

    Attributes:
        path: the path as the log stores it: relative to the table root and URI-encoded,
            or an absolute URI.
        partition_values: Delta string form per partition column (None for null).
        size: bytes (None when a remove did not record it).
        data_change: False for rewrites that change no row (OPTIMIZE, ...).
        stats: the raw statistics JSON of an add (None when absent).
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

    def location(self, root: str) -> str:
        """The file's absolute path or URI under the table root `root` (decoded)."""
        if "://" in self.path:
            return unquote(self.path) if self.path.startswith("file:") else self.path
        return f"{root.rstrip('/')}/{unquote(self.path)}"


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
class Commit:
    """One version of the table: what its commit file says.

    Attributes:
        version: the table version.
        timestamp: milliseconds since the epoch (the in-commit timestamp where the table
            has them, else commitInfo's timestamp), or None.
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


@dataclass(frozen=True)
class Snapshot:
    """The table as of one version, from the log alone.

    Attributes:
        version: the version.
        metadata, protocol: the table's metadata and protocol at that version.
        files: the active files, keyed by `FileAction.key` (path + deletion vector id).
        txns: app id -> the newest SetTransaction version recorded up to `version`.
        timestamp: the commit timestamp of `version` (ms), when known.
    """

    version: int
    metadata: TableMetadata
    protocol: Protocol
    files: Mapping[tuple[str, str | None], FileAction]
    txns: Mapping[str, int]
    timestamp: int | None = None

    def transaction_version(self, app_id: str) -> int | None:
        """The SetTransaction version recorded for `app_id`, or None."""
        return self.txns.get(app_id)


@dataclass(frozen=True)
class Changes:
    """What happened between two versions, from their commit files only.

    Attributes:
        since, until: the range (since excluded, until included).
        commits: every commit of the range, oldest first.
        added, removed: the net file changes, keyed by `FileAction.key`: a file added and
            removed again inside the range is in neither.
    """

    since: int
    until: int
    commits: tuple[Commit, ...]
    added: Mapping[tuple[str, str | None], FileAction]
    removed: Mapping[tuple[str, str | None], FileAction]

    @property
    def data_change(self) -> bool:
        """True when some commit of the range changed rows."""
        return any(c.data_change for c in self.commits) and bool(self.added or self.removed)

    @property
    def append_only(self) -> bool:
        """True when the range only added files (no file left the table)."""
        return not self.removed


# ------------------------------------------------------------------------------- parsing


def _file_action(raw: Mapping[str, Any]) -> FileAction:
    return FileAction(
        path=str(raw["path"]),
        partition_values=dict(raw.get("partitionValues") or {}),
        size=int(raw["size"]) if raw.get("size") is not None else None,
        data_change=bool(raw.get("dataChange", True)),
        stats=raw.get("stats"),
        deletion_vector=dict(raw["deletionVector"]) if raw.get("deletionVector") else None,
        tags=dict(raw.get("tags") or {}),
    )


def _metadata(raw: Mapping[str, Any]) -> TableMetadata:
    return TableMetadata(
        id=str(raw.get("id")),
        schema_string=str(raw.get("schemaString") or '{"type":"struct","fields":[]}'),
        partition_columns=tuple(raw.get("partitionColumns") or ()),
        configuration=dict(raw.get("configuration") or {}),
        created_time=raw.get("createdTime"),
    )


def _protocol(raw: Mapping[str, Any]) -> Protocol:
    return Protocol(
        min_reader_version=int(raw.get("minReaderVersion") or 1),
        min_writer_version=int(raw.get("minWriterVersion") or 2),
        reader_features=frozenset(raw.get("readerFeatures") or ()),
        writer_features=frozenset(raw.get("writerFeatures") or ()),
    )


def parse_commit(version: int, lines: Iterable[str]) -> Commit:
    """A `Commit` from the lines of its commit file (one JSON action per line)."""
    info: dict[str, Any] = {}
    adds: list[FileAction] = []
    removes: list[FileAction] = []
    txns: dict[str, int] = {}
    metadata = protocol = None
    for line in lines:
        line = line.strip()
        if not line:
            continue
        action = json.loads(line)
        if "add" in action:
            adds.append(_file_action(action["add"]))
        elif "remove" in action:
            removes.append(_file_action(action["remove"]))
        elif "commitInfo" in action:
            info = action["commitInfo"] or {}
        elif "txn" in action:
            txns[str(action["txn"]["appId"])] = int(action["txn"]["version"])
        elif "metaData" in action:
            metadata = _metadata(action["metaData"])
        elif "protocol" in action:
            protocol = _protocol(action["protocol"])
    stamp = info.get("inCommitTimestamp", info.get("timestamp"))
    return Commit(
        version=version,
        timestamp=int(stamp) if stamp is not None else None,
        operation=str(info.get("operation") or ""),
        info=info,
        adds=tuple(adds),
        removes=tuple(removes),
        txns=txns,
        metadata=metadata,
        protocol=protocol,
    )


# ------------------------------------------------------------------------------- the log


class DeltaLog:
    """The `_delta_log` of one table, read directly.

    Args:
        root: the table's root directory or URI (`/lake/t`, `file:///lake/t`, `s3://b/t`).
        table: how to name the table in messages (default: `root`).
        filesystem: a pyarrow file system for `root` (default: inferred from the URI).

    The listing of `_delta_log/` is cached per instance: make a new `DeltaLog` (cheap) to
    see commits made after the first call, or call `refresh()`.
    """

    def __init__(self, root: str, *, table: str | None = None, filesystem: pafs.FileSystem | None = None):
        self.table = table or root
        if filesystem is not None:
            self._fs, self._root = filesystem, root.rstrip("/")
        elif "://" in root and not root.startswith("file://"):
            self._fs, self._root = pafs.FileSystem.from_uri(root.rstrip("/"))
        else:
            path = unquote(root[len("file://") :]) if root.startswith("file://") else root
            self._fs, self._root = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
        self.root = root.rstrip("/")
        self._log_dir = f"{self._root}/_delta_log"
        self._listing: tuple[dict[int, str], dict[int, list[str]]] | None = None

    # -- listing ------------------------------------------------------------------------

    def refresh(self) -> None:
        """Forget the cached listing of `_delta_log/`."""
        self._listing = None

    def _list(self) -> tuple[dict[int, str], dict[int, list[str]]]:
        if self._listing is None:
            try:
                infos = self._fs.get_file_info(pafs.FileSelector(self._log_dir, allow_not_found=True))
            except OSError as exc:
                raise LakehouseError(f"cannot list the Delta log of {self.table!r} ({self._log_dir}): {exc}") from exc
            commits: dict[int, str] = {}
            checkpoints: dict[int, list[str]] = {}
            for info in infos:
                if info.type != pafs.FileType.File:
                    continue
                name = info.base_name
                match = _COMMIT_RE.match(name)
                if match:
                    commits[int(match.group(1))] = info.path
                    continue
                match = _CHECKPOINT_RE.match(name)
                if match:
                    checkpoints.setdefault(int(match.group(1)), []).append(info.path)
            self._listing = (commits, checkpoints)
        return self._listing

    def exists(self) -> bool:
        """True when the table has at least one commit or checkpoint."""
        commits, checkpoints = self._list()
        return bool(commits or checkpoints)

    def _require(self) -> tuple[dict[int, str], dict[int, list[str]]]:
        commits, checkpoints = self._list()
        if not commits and not checkpoints:
            raise TableNotFoundError(
                f"no Delta table at {self.table!r} (no commits in {self._log_dir}); check the path, or "
                "create the table with a first write"
            )
        return commits, checkpoints

    def latest_version(self) -> int:
        """The newest committed version."""
        commits, checkpoints = self._require()
        return max([*commits, *checkpoints])

    def earliest_version(self) -> int:
        """The oldest version whose state can still be rebuilt (a checkpoint or commit 0 onwards)."""
        commits, checkpoints = self._require()
        starts = [v for v in checkpoints if self._checkpoint_parts(v)]
        if 0 in commits:
            starts.append(0)
        if not starts:
            raise MissingLogError(f"the Delta log of {self.table!r} has neither commit 0 nor a usable checkpoint")
        return min(starts)

    # -- commits ------------------------------------------------------------------------

    def _read_text(self, path: str) -> str:
        with self._fs.open_input_stream(path) as stream:
            return stream.read().decode("utf-8")

    def commit(self, version: int) -> Commit:
        """The commit of `version`, from its commit file.

        Raises:
            MissingLogError: the commit file is gone (log cleanup) or does not exist.
        """
        commits, _ = self._require()
        path = commits.get(version)
        if path is None:
            latest = max(commits) if commits else None
            raise MissingLogError(
                f"the Delta log of {self.table!r} has no commit file for version {version} "
                f"(commits kept: {min(commits) if commits else '-'}..{latest if latest is not None else '-'}); "
                "the log was cleaned up past it (delta.logRetentionDuration) or the version does not exist"
            )
        return parse_commit(version, self._read_text(path).splitlines())

    def commits(self, start: int, end: int) -> list[Commit]:
        """The commits of versions start..end (both included), oldest first.

        Raises:
            MissingLogError: some version of the range has no commit file.
        """
        return [self.commit(v) for v in range(start, end + 1)]

    def changes(self, since: int, until: int) -> Changes:
        """The net file changes from version `since` (excluded) to `until` (included).

        Reads only the commit files of the range, so its cost grows with the change.

        Raises:
            MissingLogError: a commit of the range is gone: the caller cannot know what
                changed and must say so (a history gap).
        """
        if until < since:
            raise ValueError(f"changes({since}, {until}): until must be >= since")
        commits = self.commits(since + 1, until)
        added: dict[tuple[str, str | None], FileAction] = {}
        removed: dict[tuple[str, str | None], FileAction] = {}
        for commit in commits:
            for action in commit.removes:
                if added.pop(action.key, None) is None:
                    removed[action.key] = action
            for action in commit.adds:
                if removed.pop(action.key, None) is None:
                    added[action.key] = action
        return Changes(since, until, tuple(commits), added, removed)

    def missing_files(self, actions: Iterable[FileAction]) -> list[str]:
        """The data files of `actions` that no longer exist (e.g. removed by VACUUM)."""
        paths = [a.location(self._root) for a in actions]
        infos = self._fs.get_file_info(paths) if paths else []
        return [p for p, info in zip(paths, infos, strict=True) if info.type == pafs.FileType.NotFound]

    # -- snapshots ----------------------------------------------------------------------

    def _checkpoint_parts(self, version: int) -> list[str] | None:
        """The files of one complete checkpoint of `version`, or None (none or incomplete)."""
        _, checkpoints = self._list()
        names = checkpoints.get(version, [])
        singles = [n for n in names if re.search(r"\.checkpoint\.parquet$", n)]
        if singles:
            return singles[:1]
        v2 = [n for n in names if re.search(r"\.checkpoint\.[0-9a-fA-F-]{36}\.(json|parquet)$", n)]
        if v2:
            return sorted(v2)[:1]
        parts: dict[int, dict[int, str]] = {}
        for name in names:
            match = _CHECKPOINT_RE.match(name.rsplit("/", 1)[-1])
            if match and match.group(2):
                parts.setdefault(int(match.group(3)), {})[int(match.group(2))] = name
        for total, found in parts.items():
            if len(found) == total:
                return [found[i] for i in sorted(found)]
        return None

    def _checkpoint_rows(self, files: Sequence[str]) -> Iterator[dict[str, Any]]:
        """Action rows of a checkpoint (sidecars of a V2 checkpoint followed)."""
        for path in files:
            if path.endswith(".json"):
                rows: Iterable[dict[str, Any]] = (json.loads(line) for line in self._read_text(path).splitlines() if line.strip())
            else:
                with self._fs.open_input_file(path) as handle:
                    table = pq.read_table(handle)
                rows = _non_null_actions(table.to_pylist())
            for row in rows:
                if "sidecar" in row:
                    sidecar = str(row["sidecar"]["path"])
                    target = sidecar if "://" in sidecar else f"{self._log_dir}/_sidecars/{unquote(sidecar)}"
                    with self._fs.open_input_file(target) as handle:
                        yield from _non_null_actions(pq.read_table(handle).to_pylist())
                else:
                    yield row

    def snapshot(self, version: int | None = None) -> Snapshot:
        """The table as of `version` (None: the latest), from the log alone.

        Raises:
            MissingLogError: the state at `version` can no longer be rebuilt (no checkpoint
                at or before it and commit files missing), or the version does not exist.
        """
        commits, checkpoints = self._require()
        latest = self.latest_version()
        version = latest if version is None else int(version)
        if version < 0 or version > latest:
            raise MissingLogError(f"version {version} of {self.table!r} does not exist (latest is {latest})")
        base = max((v for v in checkpoints if v <= version and self._checkpoint_parts(v)), default=None)
        files: dict[tuple[str, str | None], FileAction] = {}
        txns: dict[str, int] = {}
        metadata: TableMetadata | None = None
        protocol: Protocol | None = None
        if base is not None:
            for row in self._checkpoint_rows(self._checkpoint_parts(base) or []):
                if row.get("add"):
                    action = _file_action(row["add"])
                    files[action.key] = action
                elif row.get("txn"):
                    txns[str(row["txn"]["appId"])] = int(row["txn"]["version"])
                elif row.get("metaData"):
                    metadata = _metadata(row["metaData"])
                elif row.get("protocol"):
                    protocol = _protocol(row["protocol"])
            start = base + 1
        else:
            start = 0
        timestamp = None
        try:
            replay = self.commits(start, version)
        except MissingLogError as exc:
            raise MissingLogError(
                f"version {version} of {self.table!r} can no longer be rebuilt from its log: {exc}"
            ) from exc
        for commit in replay:
            for action in commit.removes:
                files.pop(action.key, None)
            for action in commit.adds:
                files[action.key] = action
            txns.update(commit.txns)
            metadata = commit.metadata or metadata
            protocol = commit.protocol or protocol
            timestamp = commit.timestamp
        if metadata is None or protocol is None:
            raise MissingLogError(f"the Delta log of {self.table!r} has no metadata or protocol up to version {version}")
        return Snapshot(version, metadata, protocol, files, txns, timestamp)


def _non_null_actions(rows: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """Checkpoint rows hold one action each, the other action columns null: drop those."""
    for row in rows:
        yield {k: v for k, v in row.items() if v is not None}

