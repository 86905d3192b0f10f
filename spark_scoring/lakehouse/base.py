"""The lakehouse interface every Delta backend implements.

Two backends exist: `delta-spark` (the JVM Delta connector, where its jars are on the
classpath) and `delta-rs` (the `deltalake` package behind Spark's Python Data Source API,
for pip-only installs). The pipeline only ever talks to this interface.

Partition values cross this interface in Delta's own string form (`"2024-05-01"`, `"7"`,
`None` for null), exactly as the Delta log stores them, so that no predicate is ever built
by pasting user data into SQL without escaping.
"""

from __future__ import annotations

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

from spark_scoring.errors import ConcurrentRunError

log = logging.getLogger("spark_scoring.lakehouse")

#: Commit-metadata key holding the unique id of one write (to find its commit afterwards).
WRITE_ID_KEY = "spark_scoring.write_id"

PartitionValues = Mapping[str, "str | None"]
WriteMode = Literal["append", "overwrite", "replace_partitions"]
WRITE_MODES: tuple[str, ...] = ("append", "overwrite", "replace_partitions")

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


class Lakehouse(ABC):
    """Read and write Delta tables through one backend.

    Table references are paths (any backend) or catalog names (JVM backend only).
    """

    #: "delta-rs" or "delta-spark"
    engine: str

    def __init__(self, spark: SparkSession):
        self.spark = spark

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

    @abstractmethod
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
    ) -> WriteResult:
        """Write `df` in ONE atomic Delta commit.

        Args:
            mode: "append"; "overwrite" (replace the whole table, schema included);
                "replace_partitions" (remove exactly the files of `partitions`, add the new
                rows, which must all fall inside `partitions`).
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
        if latest is None:
            if expected_version is not None:
                raise ConcurrentRunError(
                    f"output table {table!r} was expected at version {expected_version} but does not "
                    "exist; another process removed it; rerun"
                )
            return False
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
        if app_id is not None:
            recorded = self.transaction_version(table, app_id)
            if recorded is not None and txn_version is not None and recorded >= txn_version:
                log.info("skipping write to %s: app %s already committed txn version %s (asked %s)",
                         table, app_id, recorded, txn_version)
                return True
        return False
