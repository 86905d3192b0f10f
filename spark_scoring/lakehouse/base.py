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
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from spark_scoring.errors import ConcurrentRunError, LakehouseError
from spark_scoring.lakehouse import _partitions as parts
from spark_scoring.lakehouse.deltalog import Changes, DeltaLog

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


PartitionValues = Mapping[str, "str | None"]
WriteMode = Literal["append", "overwrite", "replace_partitions", "upsert"]
WRITE_MODES: tuple[str, ...] = ("append", "overwrite", "replace_partitions", "upsert")

_CATALOG_NAME_RE = re.compile(r"^`?[A-Za-z_][\w-]*`?(\.`?[A-Za-z_][\w-]*`?){1,2}$")


def is_catalog_name(table: str) -> bool:
    """True when `table` reads as a catalog name (`db.table`, `catalog.db.table`), not a path.

    Anything with a slash, a URI scheme, or that exists on the local disk is a path; so is a
    bare word (a relative directory).
    """
    if "/" in table or "\\" in table or "://" in table or os.path.exists(table):
        return False
    return bool(_CATALOG_NAME_RE.match(table))


@dataclass(frozen=True)
class FileEntry:
    """One active data file of a table version."""

    path: str
    partition_values: Mapping[str, str | None]
    size: int
    num_records: int | None = None


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

    @abstractmethod
    def exists(self, table: str) -> bool:
        """True when `table` is an existing Delta table."""

    @abstractmethod
    def table_id(self, table: str) -> str:
        """The table's unique id (Delta metadata id): it changes when a table is recreated."""

    @abstractmethod
    def latest_version(self, table: str) -> int:
        """The newest committed version. Raises TableNotFoundError."""

    @abstractmethod
    def schema(self, table: str, version: int | None = None) -> StructType:
        """The Spark schema of the table (partition columns included)."""

    @abstractmethod
    def partition_columns(self, table: str, version: int | None = None) -> list[str]:
        """The table's partition columns, in order."""

    @abstractmethod
    def read(
        self,
        table: str,
        version: int,
        *,
        partitions: Sequence[PartitionValues] | None = None,
        columns: Sequence[str] | None = None,
    ) -> DataFrame:
        """Read `table` as of `version`, keeping only the listed partitions (None: all).

        The read is lazy and parallel; the version is pinned, so later commits are not seen.
        """

    @abstractmethod
    def files(self, table: str, version: int) -> list[FileEntry]:
        """The active data files of `version`, with their partition values."""

    @abstractmethod
    def transaction_version(self, table: str, app_id: str, version: int | None = None) -> int | None:
        """The SetTransaction version recorded for `app_id` (None if never), as of `version`."""

    @abstractmethod
    def history(self, table: str, limit: int | None = None) -> list[CommitInfo]:
        """Commits, newest first, with their custom commit metadata."""

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
            key: the row key column ("upsert" only; keys are unique in the table and in df).
            deletes: "upsert" only: rows with the key (and partition columns, when the
                table has them) of rows to remove; None: remove none.
            partition_by: partition columns when the table is created by this write.
            partitions: the partitions replaced by "replace_partitions".
            expected_version: the table version the caller planned against (None: the table
                must not exist yet). If another commit landed since, raise
                ConcurrentRunError and publish nothing.
            app_id, txn_version: record a SetTransaction in the same commit.
            metadata: custom commit metadata (string values).

        Raises:
            ConcurrentRunError: another writer committed since `expected_version`.
            LakehouseError: the write failed; nothing was published.
        """
        # Template method: everything that does not depend on the engine is checked here,
        # once, in this order; the backend's `_write` only writes and commits.
        checked_metadata = _check_write_arguments(mode, app_id, txn_version, metadata)
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
        return self._write(request)

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
