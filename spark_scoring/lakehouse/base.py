"""The lakehouse interface every Delta backend implements.

Two backends exist: `delta-spark` (the JVM Delta connector, where its jars are on the
classpath) and `delta-rs` (the `deltalake` package behind Spark's Python Data Source API,
for pip-only installs). The pipeline only ever talks to this interface.

Partition values cross this interface in Delta's own string form (`"2024-05-01"`, `"7"`,
`None` for null), exactly as the Delta log stores them, so that no predicate is ever built
by pasting user data into SQL without escaping.
"""

from __future__ import annotations

import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from spark_scoring import tableref
from spark_scoring.errors import ConcurrentRunError, LakehouseError, TableNotFoundError
from spark_scoring.lakehouse import _partitions as parts
from spark_scoring.lakehouse.deltalog import Changes, DeltaLog, FileAction, HistoryEntry
from spark_scoring.tableref import is_catalog_name

log = logging.getLogger("spark_scoring.lakehouse")

#: Keys Delta writers (delta-rs, Delta-Spark) put in `commitInfo` themselves: never custom
#: commit metadata, so a write refuses them and history() leaves them out of `metadata`.
RESERVED_COMMIT_KEYS = frozenset(
    {
        "timestamp", "operation", "operationParameters", "engineInfo", "clientVersion", "version",
        "operationMetrics", "readVersion", "isolationLevel", "isBlindAppend", "userMetadata",
        "userId", "userName", "job", "notebook", "clusterId", "txnId", "inCommitTimestamp",
    }
)

class ProtectedTableError(LakehouseError):
    """A write would land on, inside, or around a table the caller protected (`protected=`)."""


def parse_user_metadata(user: Any) -> dict[str, Any]:
    """The custom commit metadata a commit's `userMetadata` holds (JSON written by `write`).

    Text that is not a JSON object comes back as `{"userMetadata": text}`; nothing as {}.
    """
    if not isinstance(user, str) or not user:
        return {}
    try:
        parsed = json.loads(user)
    except ValueError:
        parsed = None
    return dict(parsed) if isinstance(parsed, dict) else {"userMetadata": user}


def commit_metadata(info: Mapping[str, Any]) -> dict[str, Any]:
    """The custom metadata of one commitInfo: the keys Delta does not reserve (delta-rs
    writes custom metadata as top-level keys) plus the JSON in `userMetadata`."""
    metadata = {k: v for k, v in info.items() if k not in RESERVED_COMMIT_KEYS}
    metadata.update(parse_user_metadata(info.get("userMetadata")))
    return metadata


def commit_info(entry: HistoryEntry) -> CommitInfo:
    """The `CommitInfo` of a log history entry (timestamp in UTC, custom metadata parsed)."""
    stamp = entry.timestamp
    return CommitInfo(
        version=entry.version,
        timestamp=datetime.fromtimestamp(stamp / 1000, tz=timezone.utc) if stamp is not None else None,
        operation=entry.operation,
        metadata=commit_metadata(entry.info),
    )


PartitionValues = Mapping[str, "str | None"]
WriteMode = Literal["append", "overwrite", "replace_partitions", "upsert"]
WRITE_MODES: tuple[str, ...] = ("append", "overwrite", "replace_partitions", "upsert")

@dataclass(frozen=True)
class FileEntry:
    """One active data file of a table version.

    Attributes:
        path: the file's absolute path or URI (decoded).
        partition_values: Delta string form per partition column (None for null).
        size: bytes.
        num_records: the file's rows that are in the table (its deletion vector applied),
            when its statistics say.
        log_path: the path as the log stores it (table-relative and URI-encoded, or an
            absolute URI); None when unknown.
        dv_id: the id of the file's deletion vector (`deltalog.dv_id`), or None.
        action: the log's `add` action (statistics, deletion vector, tags), or None.
    """

    path: str
    partition_values: Mapping[str, str | None]
    size: int
    num_records: int | None = None
    log_path: str | None = None
    dv_id: str | None = None
    action: FileAction | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str | None]:
        """This file state's identity in the log (`FileAction.key`), as `read(files=...)` takes it."""
        return (self.log_path if self.log_path is not None else self.path, self.dv_id)

    @classmethod
    def from_action(cls, action: FileAction, root: str) -> FileEntry:
        """The entry of an `add` action of the table at `root`."""
        return cls(
            path=action.location(root),
            partition_values=dict(action.partition_values),
            size=int(action.size or 0),
            num_records=action.live_records,
            log_path=action.path,
            dv_id=action.key[1],
            action=action,
        )


@dataclass(frozen=True)
class CommitInfo:
    """One entry of a table's history."""

    version: int
    timestamp: datetime | None
    operation: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WriteResult:
    """What a write produced."""

    version: int | None  # None when the write was skipped (idempotent replay)
    files_added: int = 0
    rows_written: int | None = None
    files_removed: int = 0
    bytes_added: int = 0
    bytes_removed: int = 0


@dataclass(frozen=True)
class WriteRequest:
    """One write, validated by `Lakehouse.write` and handed to a backend's `_write`.

    Attributes:
        df, table, mode, partition_by, expected_version, app_id, txn_version: as given to
            `Lakehouse.write`.
        partitions: the partitions "replace_partitions" replaces (checked: they name only
            partition columns, with valid values of the columns' types).
        metadata: the custom commit metadata (checked: string keys that Delta does not
            reserve, string values).
        partition_columns: the partition columns of the table after the write: the
            existing table's, or `partition_by` when the write creates or overwrites it.
        key: the row key of "upsert".
        deletes: "upsert" only: the rows (key and partition columns) whose keys leave the
            table, or None.
    """

    df: DataFrame
    table: str
    mode: WriteMode
    partition_by: tuple[str, ...]
    partitions: tuple[dict[str, str | None], ...]
    expected_version: int | None
    app_id: str | None
    txn_version: int | None
    metadata: dict[str, str]
    partition_columns: tuple[str, ...]
    key: str | None = None
    deletes: DataFrame | None = None

    @property
    def table_exists(self) -> bool:
        """True when the table existed (at `expected_version`) when the write was checked."""
        # Lakehouse.write checked that the table is at expected_version, or absent when None.
        return self.expected_version is not None


class Lakehouse(ABC):
    """Read and write Delta tables through one backend.

    Table references are paths (any backend) or catalog names (JVM backend only).
    `write` is a template method: it checks a write the same way for every backend and
    leaves only the engine's part to the backend's `_write`.
    """

    #: "delta-rs" or "delta-spark"
    engine: str

    def __init__(self, spark: SparkSession):
        self.spark = spark

    # -- the Delta log -------------------------------------------------------------------

    def location(self, table: str) -> str:
        """The root path or URI of `table` (a catalog name resolved to its storage location).

        This default serves paths and URIs; a backend that knows catalog names overrides it.
        """
        if is_catalog_name(table):
            raise NotImplementedError(f"{type(self).__name__} cannot resolve catalog name {table!r}")
        if "://" in table:
            return table.rstrip("/")
        return os.path.abspath(os.path.expanduser(table))

    def log(self, table: str) -> DeltaLog:
        """The table's Delta log, read directly (`spark_scoring.lakehouse.deltalog`)."""
        return DeltaLog(self.location(table), table=table)

    def changes(self, table: str, since: int, until: int) -> Changes:
        """The net file changes from version `since` (excluded) to `until` (included),
        from the log's commit files only (cost grows with the change, not the table).

        Raises:
            MissingLogError: a commit of the range is gone from the log.
        """
        return self.log(table).changes(since, until)

    # Table metadata, from the Delta log alone (checkpoints included) on every engine: never
    # a Spark job, never a data file, and always at the version asked for.

    def exists(self, table: str) -> bool:
        """True when `table` is an existing Delta table (its log has a commit or checkpoint)."""
        try:
            return self.log(table).exists()
        except TableNotFoundError:
            return False

    def table_id(self, table: str) -> str:
        """The table's unique id (Delta metadata id): it changes when a table is recreated."""
        return self.log(table).state().metadata.id

    def latest_version(self, table: str) -> int:
        """The newest committed version. Raises TableNotFoundError."""
        return self.log(table).latest_version()

    def schema(self, table: str, version: int | None = None) -> StructType:
        """The Spark schema of the table at `version` (None: latest), partition columns included."""
        return StructType.fromJson(self.log(table).state(version).metadata.schema)

    def partition_columns(self, table: str, version: int | None = None) -> list[str]:
        """The table's partition columns at `version` (None: latest), in order."""
        return list(self.log(table).state(version).metadata.partition_columns)

    def files(self, table: str, version: int) -> list[FileEntry]:
        """The active data files of `version`, with their partition values, sorted by path."""
        log_ = self.log(table)
        entries = [FileEntry.from_action(a, log_.root) for a in log_.snapshot(version).files.values()]
        return sorted(entries, key=lambda e: (e.path, e.dv_id or ""))

    def transaction_version(self, table: str, app_id: str, version: int | None = None) -> int | None:
        """The SetTransaction version recorded for `app_id` (None if never), as of `version`."""
        return self.log(table).transaction_version(app_id, version)

    def history(self, table: str, limit: int | None = None) -> list[CommitInfo]:
        """Commits, newest first, with their custom commit metadata (`commit_metadata`).

        Reads only the newest `limit` commit files (None: every commit file the log keeps;
        after log cleanup the history starts at the oldest one kept).
        """
        return [commit_info(entry) for entry in self.log(table).history(limit)]

    @abstractmethod
    def read(
        self,
        table: str,
        version: int,
        *,
        partitions: Sequence[PartitionValues] | None = None,
        files: Iterable[FileAction | tuple[str, str | None]] | None = None,
        columns: Sequence[str] | None = None,
    ) -> DataFrame:
        """Read `table` as of `version`, keeping only the listed partitions (None: all).

        Args:
            partitions: keep only the files of these partitions (None: every partition).
            files: read only these file states of `version`: `FileAction` objects or their
                keys `(path as in the log, deletion vector id)` (None: every file). A key
                that is not a file state of `version` is an error. Combined with
                `partitions`, a file must satisfy both.
            columns: the columns to read (None: all).

        The read is lazy and parallel; the version is pinned, so later commits are not seen.
        """

    def write(
        self,
        df: DataFrame,
        table: str,
        *,
        mode: WriteMode,
        partition_by: Sequence[str] = (),
        partitions: Sequence[PartitionValues] = (),
        expected_version: int | None = None,
        app_id: str | None = None,
        txn_version: int | None = None,
        metadata: Mapping[str, str] | None = None,
        key: str | None = None,
        deletes: DataFrame | None = None,
        protected: Sequence[str] = (),
    ) -> WriteResult:
        """Write `df` in ONE atomic Delta commit.

        Args:
            mode: "append"; "overwrite" (replace the whole table, schema included);
                "replace_partitions" (remove exactly the files of `partitions`, add the new
                rows, which must all fall inside `partitions`); "upsert" (by `key`: the
                table's rows whose key is in `df` or in `deletes` leave it, the rows of
                `df` enter it; every other row stays where it is. The engine rewrites only
                the files holding such keys (copy-on-write), or marks them with deletion
                vectors where the table has them enabled (merge-on-read, JVM engine)).
            key: the row key column ("upsert" only; keys are unique in the table and in df,
                never null).
            deletes: "upsert" only: rows with the key (and partition columns, when the
                table has them) of rows to remove; None: remove none. On a partitioned
                table a row is matched by its partition values AND its key: a row moving
                to another partition needs its old partition values in `deletes` (else
                its old row stays). `df` and `deletes` are evaluated more than once (their
                keys first, to find the files to rewrite): persist them when costly.
            partition_by: partition columns when the table is created by this write.
            partitions: the partitions replaced by "replace_partitions".
            expected_version: the table version the caller planned against (None: the table
                must not exist yet). If another commit landed since, raise
                ConcurrentRunError and publish nothing.
            app_id, txn_version: record a SetTransaction in the same commit.
            metadata: custom commit metadata (string values).
            protected: tables (paths, URIs or catalog names) this write must not touch:
                the write is refused when its table's location equals, lies inside, or
                contains one of theirs (compared as real paths: `./`, `..`, trailing
                slashes, symlinks and `file:` URIs resolved; catalog names through
                `location`). A last line of defence behind the job config's own check.

        Raises:
            ConcurrentRunError: another writer committed since `expected_version`.
            ProtectedTableError: the table overlaps a `protected` one; nothing was written.
            LakehouseError: the write failed; nothing was published.
        """
        # Template method: everything that does not depend on the engine is checked here,
        # once, in this order; the backend's `_write` only writes and commits.
        checked_metadata = _check_write_arguments(mode, app_id, txn_version, metadata)
        self._check_not_protected(table, protected)
        latest = self.latest_version(table) if self.exists(table) else None
        if self._write_preconditions(
            table, latest=latest, expected_version=expected_version, app_id=app_id, txn_version=txn_version,
        ):
            return WriteResult(version=None)
        request = WriteRequest(
            key=key,
            deletes=deletes,
            df=df,
            table=table,
            mode=mode,
            partition_by=tuple(partition_by),
            partitions=tuple(dict(p) for p in partitions),
            expected_version=expected_version,
            app_id=app_id,
            txn_version=txn_version,
            metadata=checked_metadata,
            partition_columns=(
                tuple(self.partition_columns(table))
                if latest is not None and mode != "overwrite"
                else tuple(partition_by)
            ),
        )
        if mode == "replace_partitions":
            _check_replaced_partitions(request)
        _check_upsert_arguments(request)
        return self._write(request)

    def _check_not_protected(self, table: str, protected: Sequence[str]) -> None:
        """Refuse a write to `table` when its location overlaps a protected table's."""
        if not protected:
            return

        def where(t: str) -> str | None:
            # A catalog name not created yet has no location to compare (its first write
            # puts it under the catalog's own warehouse); a path always has one.
            return None if is_catalog_name(t) and not self.exists(t) else self.location(t)

        target = where(table)
        if target is None:
            return
        for other in protected:
            location = where(other)
            how = None if location is None else tableref.overlap(target, location)
            if how is None:
                continue
            relation = {"same": "is the same table as", "inside": "lies inside", "contains": "contains"}[how]
            raise ProtectedTableError(
                f"refusing to write {table!r} (at {target}): it {relation} the protected table {other!r} "
                f"(at {location}), so the write would overwrite it or lose its files and log to a VACUUM. "
                "Nothing was written. Point the write at a location outside every protected table (for a "
                "job: output.table and errors.quarantine_table must not overlap source.table or each other)."
            )

    @abstractmethod
    def _write(self, request: WriteRequest) -> WriteResult:
        """Write and commit a checked request in ONE atomic Delta commit (engine code only).

        `write` has checked the arguments, that the table is at `request.expected_version`
        (absent when None) and that the SetTransaction is not recorded yet. The commit must
        still fail with ConcurrentRunError when another writer commits meanwhile.
        """

    def _write_preconditions(
        self,
        table: str,
        *,
        latest: int | None,
        expected_version: int | None,
        app_id: str | None,
        txn_version: int | None,
    ) -> bool:
        """Optimistic concurrency and idempotence, the same for every backend.

        Args:
            latest: the table's current version (None: no table).

        Returns:
            True when `app_id` already recorded `txn_version` (or later): skip the write.

        Raises:
            ConcurrentRunError: the table is not at the version the caller planned against.
                This is checked FIRST, so a run that lost a race fails loudly even when the
                winner recorded the same watermark.
        """
        check_planned_version(table, expected_version, latest)
        if latest is not None and app_id is not None:
            recorded = self.transaction_version(table, app_id)
            if recorded is not None and txn_version is not None and recorded >= txn_version:
                log.info("skipping write to %s: app %s already committed txn version %s (asked %s)",
                         table, app_id, recorded, txn_version)
                return True
        return False


def check_planned_version(table: str, expected_version: int | None, latest: int | None) -> None:
    """Raise ConcurrentRunError unless `table` is at the version the caller planned against.

    Checked before a write starts (`Lakehouse.write`) and again at commit time by a backend
    that commits itself (delta-rs), since other writers may commit while the tasks run.

    Args:
        expected_version: the planned version (None: the table must not exist).
        latest: the table's current version (None: there is no table).
    """
    if latest is None:
        if expected_version is not None:
            raise ConcurrentRunError(
                f"output table {table!r} was expected at version {expected_version} but does not "
                "exist; another process removed it; rerun"
            )
        return
    if expected_version is None:
        raise ConcurrentRunError(
            f"output table {table!r} exists (version {latest}) but the write expected no "
            "table; another run created it; rerun"
        )
    if latest != expected_version:
        raise ConcurrentRunError(
            f"output table {table!r} moved from version {expected_version} to {latest} while "
            "this run was running; another run committed; rerun"
        )


def _check_write_arguments(
    mode: str, app_id: str | None, txn_version: int | None, metadata: Mapping[str, str] | None
) -> dict[str, str]:
    """Check the arguments of a write that need no table; return the commit metadata as a dict."""
    if mode not in WRITE_MODES:
        raise LakehouseError(f"write mode {mode!r} is not supported; use one of {list(WRITE_MODES)}")
    if (app_id is None) != (txn_version is None):
        raise LakehouseError("give app_id and txn_version together (or neither)")
    checked = dict(metadata or {})
    bad = [
        k for k, v in checked.items()
        if not isinstance(k, str) or k in RESERVED_COMMIT_KEYS or not isinstance(v, str)
    ]
    if bad:
        raise LakehouseError(
            f"commit metadata keys {bad} are reserved by Delta or have non-string values; use "
            "your own keys (e.g. 'spark_scoring.run_id') with string values"
        )
    return checked


def _check_upsert_arguments(request: WriteRequest) -> None:
    """What "upsert" needs (a key column in the rows and the deletes), and that only it gets them."""
    if request.mode != "upsert":
        if request.key is not None or request.deletes is not None:
            raise LakehouseError(f"key and deletes are arguments of mode 'upsert' only, not of {request.mode!r}")
        return
    if not request.key:
        raise LakehouseError("mode 'upsert' needs the key column (key=...), whose values identify rows")
    needed = [*request.partition_columns, request.key] if request.table_exists else [request.key]
    for what, frame in (("rows to write", request.df), ("deletes", request.deletes)):
        if frame is None:
            continue
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise LakehouseError(
                f"mode 'upsert': columns {missing} are not columns of the {what} {frame.columns}; give the key "
                "and the table's partition columns"
            )


def _check_replaced_partitions(request: WriteRequest) -> None:
    """What "replace_partitions" needs: a partitioned table and valid partitions to replace."""
    if not request.partition_columns:
        raise LakehouseError(
            f"mode 'replace_partitions' needs a partitioned table; {request.table!r} has no partition "
            "columns: use mode 'overwrite'"
        )
    if not request.partitions:
        raise LakehouseError("mode 'replace_partitions' needs the partitions to replace; none were given")
    columns = request.df.columns
    missing = [c for c in request.partition_columns if c not in columns]
    if missing:
        raise LakehouseError(f"partition columns {missing} are not columns of the rows to write {columns}")
    for spec in request.partitions:
        parts.check_partition_values(spec, request.partition_columns, request.df.schema)
