"""A reader of the Delta transaction log itself, for planning that costs what the log costs.

Planning a nightly run needs the log, never the rows: which files a version holds, what
changed between two versions, the recorded watermark (a SetTransaction), who committed
what. This package reads `_delta_log/` directly with pyarrow's file systems, the same way
for every engine (delta-rs or the JVM connector wrote it), so:

* `changes(since, until)` reads only the commit files of versions since+1..until: its cost
  grows with what changed, not with the size of the table;
* `snapshot(version)` replays the newest usable checkpoint at or before `version`
  (classic, multi-part, or V2 with sidecars; `checkpoints`) plus the commits after it: no
  Spark job, no data file. A checkpoint that cannot be read (a part or sidecar missing, a
  truncated file) is skipped for an older one, or for the commits from version 0;
* `state(version)` is the same without the files (metadata, protocol, SetTransactions):
  it reads only those columns of the checkpoint and skips the commits' add/remove lines;
* `history(limit)` reads commitInfo only, newest first, and only as many commit files as
  asked for;
* deletion vectors are part of a file's identity (`FileAction.key`): a DELETE that only
  adds a deletion vector to a file shows up as that file removed and re-added with a new
  vector, so it is a change of exactly that file;
* column mapping is translated: file actions name partition values and statistics by
  column name (`FileAction.logical`).

It follows the Delta protocol (PROTOCOL.md in delta-io/delta). Nothing here imports pyspark.

Log cleanup (`delta.logRetentionDuration`) deletes the oldest commit files once a newer
checkpoint exists: `snapshot`/`state` of a version still work from a checkpoint at or
before it, `commit`/`changes` of a cleaned-up version raise `MissingLogError`, and
`history` ends at the oldest commit file kept.

Example:
    >>> log = DeltaLog("/lake/reviews")
    >>> log.latest_version()
    12
    >>> [c.operation for c in log.changes(10, 12).commits]
    ['WRITE', 'DELETE']
    >>> len(log.snapshot(12).files)
    40
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs

from spark_scoring.errors import LakehouseError, TableNotFoundError
from spark_scoring.lakehouse.deltalog.actions import (
    ColumnNames,
    Commit,
    FileAction,
    HistoryEntry,
    Protocol,
    TableMetadata,
    dv_id,
    history_entry,
    parse_commit,
    protocol,
    skip_file_actions,
    table_metadata,
)
from spark_scoring.lakehouse.deltalog.checkpoints import (
    CHECKPOINT_RE,
    FILE_ACTIONS,
    STATE_ACTIONS,
    complete_checkpoints,
    read_actions,
)

__all__ = [
    "Changes",
    "Commit",
    "DeltaLog",
    "FileAction",
    "HistoryEntry",
    "MissingLogError",
    "Protocol",
    "Snapshot",
    "TableMetadata",
    "TableState",
    "dv_id",
    "parse_commit",
]

_COMMIT_RE = re.compile(r"^(\d{20})\.json$")

FileKey = tuple[str, "str | None"]


class MissingLogError(LakehouseError):
    """A version's log entries are gone (log cleanup, VACUUM) or were never written."""


@dataclass(frozen=True)
class TableState:
    """The table as of one version without its files: metadata, protocol, SetTransactions.

    Attributes:
        version: the version.
        metadata, protocol: the table's metadata and protocol at that version.
        txns: app id -> the newest SetTransaction version recorded up to `version`.
        timestamp: the commit timestamp of `version` (ms), when known.
    """

    version: int
    metadata: TableMetadata
    protocol: Protocol
    txns: Mapping[str, int]
    timestamp: int | None = None

    def transaction_version(self, app_id: str) -> int | None:
        """The SetTransaction version recorded for `app_id`, or None."""
        return self.txns.get(app_id)


@dataclass(frozen=True)
class Snapshot(TableState):
    """The table as of one version, from the log alone (a `TableState` with its files).

    Attributes:
        files: the active files, keyed by `FileAction.key` (path + deletion vector id).
    """

    files: Mapping[FileKey, FileAction] = field(default_factory=dict)


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
    added: Mapping[FileKey, FileAction]
    removed: Mapping[FileKey, FileAction]

    @property
    def data_change(self) -> bool:
        """True when some commit of the range changed rows."""
        return any(c.data_change for c in self.commits) and bool(self.added or self.removed)

    @property
    def append_only(self) -> bool:
        """True when the range only added files (no file left the table)."""
        return not self.removed


@dataclass
class _Listing:
    commits: dict[int, str]
    mtimes: dict[int, int]
    checkpoints: dict[int, list[str]]


class DeltaLog:
    """The `_delta_log` of one table, read directly.

    Args:
        root: the table's root directory or URI (`/lake/t`, `file:///lake/t`, `s3://b/t`).
        table: how to name the table in messages (default: `root`).
        filesystem: a pyarrow file system for `root` (default: inferred from the URI).

    The listing of `_delta_log/` and the states read are cached per instance (versions
    never change): make a new `DeltaLog` (cheap) to see commits made after the first
    call, or call `refresh()`.
    """

    def __init__(self, root: str, *, table: str | None = None, filesystem: pafs.FileSystem | None = None):
        self.table = table or root
        if filesystem is not None:
            self._fs, self._root = filesystem, root.rstrip("/")
        elif "://" in root and not root.startswith("file:"):
            self._fs, self._root = pafs.FileSystem.from_uri(root.rstrip("/"))
        else:
            path = unquote(re.sub(r"^file:(//(localhost)?)?", "", root)) if root.startswith("file:") else root
            self._fs, self._root = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
        self.root = root.rstrip("/")
        self._log_dir = f"{self._root}/_delta_log"
        self._listing: _Listing | None = None
        self._states: dict[int, TableState] = {}

    # -- listing ------------------------------------------------------------------------

    def refresh(self) -> None:
        """Forget the cached listing of `_delta_log/` (and nothing else: versions are immutable)."""
        self._listing = None

    def _list(self) -> _Listing:
        if self._listing is None:
            try:
                infos = self._fs.get_file_info(pafs.FileSelector(self._log_dir, allow_not_found=True))
            except OSError as exc:
                raise LakehouseError(f"cannot list the Delta log of {self.table!r} ({self._log_dir}): {exc}") from exc
            listing = _Listing({}, {}, {})
            for info in infos:
                if info.type != pafs.FileType.File:
                    continue
                name = info.base_name
                match = _COMMIT_RE.match(name)
                if match:
                    version = int(match.group(1))
                    listing.commits[version] = info.path
                    if info.mtime_ns is not None:
                        listing.mtimes[version] = info.mtime_ns // 1_000_000
                    continue
                match = CHECKPOINT_RE.match(name)
                if match:
                    listing.checkpoints.setdefault(int(match.group(1)), []).append(info.path)
            self._listing = listing
        return self._listing

    def exists(self) -> bool:
        """True when the table has at least one commit or checkpoint."""
        listing = self._list()
        return bool(listing.commits or listing.checkpoints)

    def _require(self) -> _Listing:
        listing = self._list()
        if not listing.commits and not listing.checkpoints:
            raise TableNotFoundError(
                f"no Delta table at {self.table!r} (no commits in {self._log_dir}); check the path, or "
                "create the table with a first write"
            )
        return listing

    def latest_version(self) -> int:
        """The newest committed version."""
        listing = self._require()
        return max([*listing.commits, *listing.checkpoints])

    def earliest_version(self) -> int:
        """The oldest version whose state can still be rebuilt (a checkpoint or commit 0 onwards)."""
        listing = self._require()
        starts = [v for v, paths in listing.checkpoints.items() if complete_checkpoints(paths)]
        if 0 in listing.commits:
            starts.append(0)
        if not starts:
            raise MissingLogError(f"the Delta log of {self.table!r} has neither commit 0 nor a usable checkpoint")
        return min(starts)

    # -- commits ------------------------------------------------------------------------

    def _lines(self, version: int) -> list[str]:
        listing = self._require()
        path = listing.commits.get(version)
        if path is None:
            kept = sorted(listing.commits)
            raise MissingLogError(
                f"the Delta log of {self.table!r} has no commit file for version {version} "
                f"(commits kept: {f'{kept[0]}..{kept[-1]}' if kept else 'none'}); the log was cleaned up "
                "past it (delta.logRetentionDuration) or the version does not exist"
            )
        with self._fs.open_input_stream(path) as stream:
            return stream.read().decode("utf-8").splitlines()

    def commit(self, version: int) -> Commit:
        """The commit of `version`, from its commit file.

        File actions are named by the column names of the newest version (column mapping).

        Raises:
            MissingLogError: the commit file is gone (log cleanup) or does not exist.
        """
        commit = parse_commit(version, self._lines(version), self._list().mtimes.get(version))
        return _logical_commit(commit, self._names(self.latest_version()) if _has_names(commit) else None)

    def commits(self, start: int, end: int) -> list[Commit]:
        """The commits of versions start..end (both included), oldest first.

        Raises:
            MissingLogError: some version of the range has no commit file.
        """
        return [self.commit(v) for v in range(start, end + 1)]

    def iter_history(self, start: int | None = None) -> Iterator[HistoryEntry]:
        """The commits' commitInfo from version `start` (None: the latest) down to the
        oldest commit file kept, newest first, reading one commit file per step.

        Each commit file is read only up to its commitInfo (the first action, as both
        Delta writers put it, and as in-commit timestamps require), so a commit of 100,000
        files costs no more than a small one. The iteration ends at the first missing
        commit file: with log cleanup, history covers the versions whose commit files
        remain.
        """
        listing = self._require()
        version = self.latest_version() if start is None else start
        while version >= 0 and version in listing.commits:
            yield self._history_entry(version)
            version -= 1

    def _history_entry(self, version: int) -> HistoryEntry:
        """The commitInfo of `version`, reading its commit file only as far as needed."""
        listing = self._require()
        if version not in listing.commits:
            self._lines(version)  # raises the clear MissingLogError
        with self._fs.open_input_stream(listing.commits[version]) as stream:
            return history_entry(version, _lines_of(stream), listing.mtimes.get(version))

    def history(self, limit: int | None = None) -> list[HistoryEntry]:
        """The newest `limit` commits' commitInfo (None: every commit file kept), newest first."""
        return list(islice(self.iter_history(), limit))

    def changes(self, since: int, until: int) -> Changes:
        """The net file changes from version `since` (excluded) to `until` (included).

        Reads only the commit files of the range, so its cost grows with the change. File
        actions are named by the column names of version `until` (column mapping).

        Raises:
            MissingLogError: a commit of the range is gone: the caller cannot know what
                changed and must say so (a history gap).
        """
        if until < since:
            raise ValueError(f"changes({since}, {until}): until must be >= since")
        listing = self._require()
        raw = [parse_commit(v, self._lines(v), listing.mtimes.get(v)) for v in range(since + 1, until + 1)]
        names = self._names(until, raw) if any(_has_names(c) for c in raw) else None
        commits = [_logical_commit(c, names) for c in raw]
        added: dict[FileKey, FileAction] = {}
        removed: dict[FileKey, FileAction] = {}
        for commit in commits:
            for action in commit.removes:
                if added.pop(action.key, None) is None:
                    removed[action.key] = action
            for action in commit.adds:
                if removed.pop(action.key, None) is None:
                    added[action.key] = action
        return Changes(since, until, tuple(commits), added, removed)

    # -- states and snapshots -----------------------------------------------------------

    def state(self, version: int | None = None) -> TableState:
        """Metadata, protocol and SetTransactions as of `version` (None: the latest), without
        reading the table's file actions.

        Raises:
            MissingLogError: as `snapshot`.
        """
        version = self._check_version(version)
        if version not in self._states:
            self._states[version] = self._replay(version, with_files=False)
        return self._states[version]

    def missing_files(self, actions: Iterable[FileAction]) -> list[str]:
        """The data files of `actions` that no longer exist (e.g. removed by VACUUM)."""
        paths = [a.location(self._root) for a in actions]
        infos = self._fs.get_file_info(paths) if paths else []
        return [p for p, info in zip(paths, infos, strict=True) if info.type == pafs.FileType.NotFound]

    def snapshot(self, version: int | None = None) -> Snapshot:
        """The table as of `version` (None: the latest), from the log alone.

        Raises:
            MissingLogError: the state at `version` can no longer be rebuilt (no usable
                checkpoint at or before it and commit files missing), or the version does
                not exist.
        """
        snapshot = self._replay(self._check_version(version), with_files=True)
        assert isinstance(snapshot, Snapshot)
        self._states.setdefault(snapshot.version, snapshot)
        return snapshot

    def transaction_version(self, app_id: str, version: int | None = None) -> int | None:
        """The SetTransaction version `app_id` recorded up to `version` (None: latest), or None."""
        return self.state(version).transaction_version(app_id)

    def _check_version(self, version: int | None) -> int:
        latest = self.latest_version()
        version = latest if version is None else int(version)
        if version < 0 or version > latest:
            raise MissingLogError(f"version {version} of {self.table!r} does not exist (latest is {latest})")
        return version

    def _names(self, version: int, commits: list[Commit] | None = None) -> ColumnNames:
        """The physical -> logical column names at `version` ({} without column mapping)."""
        for commit in reversed(commits or []):
            if commit.version <= version and commit.metadata is not None:
                return commit.metadata.physical_names
        return self.state(version).metadata.physical_names

    def _replay(self, version: int, *, with_files: bool) -> TableState:
        """Rebuild the state at `version`: the newest readable checkpoint, then commits."""
        listing = self._require()
        wanted = (*STATE_ACTIONS, *FILE_ACTIONS) if with_files else STATE_ACTIONS
        problems: list[str] = []
        for base in sorted((v for v in listing.checkpoints if v <= version), reverse=True):
            for files in complete_checkpoints(listing.checkpoints[base]):
                try:
                    actions = read_actions(self._fs, self._log_dir, files, wanted)
                except (OSError, pa.ArrowException, ValueError, KeyError) as exc:
                    problems.append(f"checkpoint {os.path.basename(files[0])} is unreadable ({exc})")
                    continue
                return self._apply(version, base, actions, with_files, problems)
        if 0 in listing.commits:
            return self._apply(version, -1, {}, with_files, problems)
        raise MissingLogError(
            f"version {version} of {self.table!r} can no longer be rebuilt from its log: no usable "
            f"checkpoint at or before it and no commit 0{'; ' + '; '.join(problems) if problems else ''}"
        )

    def _apply(
        self, version: int, base: int, actions: Mapping[str, list[Any]], with_files: bool, problems: list[str]
    ) -> TableState:
        files: dict[FileKey, FileAction] = {a.key: a for a in actions.get("add", ())}
        txns: dict[str, int] = {str(raw["appId"]): int(raw["version"]) for raw in actions.get("txn", ())}
        metadata = next((table_metadata(raw) for raw in actions.get("metaData", ())), None)
        proto = next((protocol(raw) for raw in actions.get("protocol", ())), None)
        timestamp = None
        mtimes = self._list().mtimes
        for v in range(base + 1, version + 1):
            try:
                lines = self._lines(v)
            except MissingLogError as exc:
                raise MissingLogError(
                    f"version {version} of {self.table!r} can no longer be rebuilt from its log: {exc}"
                    f"{'; ' + '; '.join(problems) if problems else ''}"
                ) from exc
            # Without files, the (many) add/remove lines are skipped unparsed.
            commit = parse_commit(v, lines if with_files else skip_file_actions(lines), mtimes.get(v))
            for action in commit.removes:
                files.pop(action.key, None)
            for action in commit.adds:
                files[action.key] = action
            txns.update(commit.txns)
            metadata, proto, timestamp = commit.metadata or metadata, commit.protocol or proto, commit.timestamp
        if metadata is None or proto is None:
            raise MissingLogError(f"the Delta log of {self.table!r} has no metadata or protocol up to version {version}")
        if timestamp is None and version in self._list().commits:  # the state is the checkpoint's
            timestamp = self._history_entry(version).timestamp
        if not with_files:
            return TableState(version, metadata, proto, txns, timestamp)
        names = metadata.physical_names
        if names:
            files = {k: a.logical(names) for k, a in files.items()}
        return Snapshot(version, metadata, proto, txns, timestamp, files)


def _lines_of(stream: Any, chunk: int = 1 << 16) -> Iterator[str]:
    """The lines of a binary stream, read lazily in chunks (a consumer may stop early)."""
    pending = b""
    while True:
        data = stream.read(chunk)
        if not data:
            break
        pending += data
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.decode("utf-8")
    if pending:
        yield pending.decode("utf-8")


def _has_names(commit: Commit) -> bool:
    """True when a commit's file actions carry column names (partition values or stats)."""
    return any(a.partition_values or a.stats for a in (*commit.adds, *commit.removes))


def _logical_commit(commit: Commit, names: ColumnNames | None) -> Commit:
    if not names:
        return commit
    return replace(
        commit,
        adds=tuple(a.logical(names) for a in commit.adds),
        removes=tuple(a.logical(names) for a in commit.removes),
    )
