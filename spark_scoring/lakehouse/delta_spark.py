"""The delta-spark backend: the JVM Delta Lake connector (Databricks, EMR, clusters with the jars).

Planning reads only the Delta log, as on the delta-rs engine: table metadata, files,
watermarks and history come from `deltalog` (the base class), never from a Spark job
over the table. Table references may be catalog names: `location` resolves a name to its
storage location once (DESCRIBE DETAIL, cached per name). Where the driver cannot read that
storage with pyarrow (a scheme it does not know, such as `s3a://`, or credentials only
Spark's Hadoop configuration holds), the same log files are read through the driver JVM's
Hadoop file system instead (`_spark_fs`): still only the log.

Writes use Delta's documented interfaces, in ONE commit each: `replaceWhere` for partition
replacement, `overwriteSchema` for full overwrites, MERGE for "upsert" (rows whose key is
in the rows or the deletes leave, the rows enter; deletion vectors instead of rewritten
files where the table enables them), `txnAppId`/`txnVersion` for idempotent writes (as
writer options, or as the SQL confs MERGE reads), and `userMetadata` (JSON) for the commit
metadata.

The planned version (`expected_version`) and Delta's own transaction: `Lakehouse.write`
checks the version before the write starts, but Delta's transaction only begins when the
write command runs, and a commit landing in between would be read by that transaction as
its starting point, not as a conflict. So every write also carries a one-task guard (a
zero-row partition of the written rows) that checks the log again *inside* the Delta
transaction: the job that computes the rows runs after the transaction took its snapshot,
so a guard that sees the planned version as the latest proves the transaction started
from it. Commits after the guard are Delta's own conflict detection's to judge; our writes
carry the job's SetTransaction, so two runs of one job always conflict there
(ConcurrentTransactionException), and a replay of an applied version is skipped by Delta.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import uuid
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_scoring.contract import WRITE_ID_KEY
from spark_scoring.errors import (
    ConcurrentRunError,
    LakehouseError,
    TableNotFoundError,
    first_line,
    from_spark,
    raised_for_driver,
)
from spark_scoring.lakehouse import _partitions as parts
from spark_scoring.lakehouse import _spark_fs, keyranges
from spark_scoring.lakehouse.base import (
    Lakehouse,
    PartitionValues,
    WriteRequest,
    WriteResult,
    check_planned_version,
    is_catalog_name,
)
from spark_scoring.lakehouse.deltalog import DeltaLog, FileAction

log = logging.getLogger("spark_scoring.lakehouse")

#: The SQL confs Delta's MERGE reads for idempotence and commit metadata (session-wide:
#: set and unset around each MERGE, under the session's write lock).
TXN_APP_ID_CONF = "spark.databricks.delta.write.txnAppId"
TXN_VERSION_CONF = "spark.databricks.delta.write.txnVersion"
USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"
#: The column marking each MERGE source row as an upsert or a delete.
_OP = "__spark_scoring_op"
#: More (partition, key range) terms than this in a MERGE condition: coarser ones.
_MAX_RANGE_TERMS = 256
#: Up to this many affected keys are collected and looked up in the target files' key
#: statistics; beyond, each partition's [min, max] key range is.
_EXACT_KEYS = 10_000
#: Delta exceptions that mean "another writer committed first".
_CONFLICTS = ("Concurrent", "MetadataChangedException", "ProtocolChangedException", "DELTA_CONCURRENT")

#: One lock per SparkSession: MERGE takes its idempotence and metadata from session-wide
#: SQL confs, which another write of the same session must neither see nor change.
_WRITE_LOCKS: weakref.WeakKeyDictionary[SparkSession, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def _write_lock(spark: SparkSession) -> threading.Lock:
    with _LOCKS_LOCK:
        return _WRITE_LOCKS.setdefault(spark, threading.Lock())


class DeltaSparkLakehouse(Lakehouse):
    """Delta tables (paths or catalog names) through the JVM Delta connector.

    Args:
        spark: the session (its classpath has the Delta connector).
        log_access: how the driver reads Delta logs: "auto" (pyarrow where it can reach
            the storage, else Spark's Hadoop file system), "direct" or "spark".
    """

    engine = "delta-spark"

    def __init__(self, spark: SparkSession, *, log_access: str = "auto"):
        super().__init__(spark)
        from delta.tables import DeltaTable  # the Python API of delta-spark (no jars inside)

        if log_access not in ("auto", "direct", "spark"):
            raise LakehouseError(f"log_access {log_access!r} is unknown; use 'auto', 'direct' or 'spark'")
        self._delta_table_cls = DeltaTable
        self._log_access = log_access
        self._locations: dict[str, str] = {}  # catalog name -> location (DESCRIBE DETAIL)
        self._spark_read: dict[str, bool] = {}  # table root -> its log is read through Spark

    # ------------------------------------------------------------------ references

    def location(self, table: str) -> str:
        """The table's root: a local path for local tables, else its URI.

        A catalog name is resolved once (DESCRIBE DETAIL) and cached per name.
        """
        if not is_catalog_name(table):
            return _local_path(super().location(table))
        found = self._locations.get(table)
        if found is None:
            if not self.spark.catalog.tableExists(table):
                raise TableNotFoundError(
                    f"no table {table!r} in the catalog; check the name, or create the table with a first write"
                )
            detail = self.spark.sql(f"DESCRIBE DETAIL {table}").select("format", "location").first()
            if detail is None or str(detail["format"]).lower() != "delta":
                raise LakehouseError(
                    f"catalog table {table!r} is not a Delta table (format {detail and detail['format']!r}); "
                    "spark-scoring reads and writes Delta tables only"
                )
            found = self._locations[table] = _local_path(str(detail["location"]))
        return found

    def log(self, table: str) -> DeltaLog:
        """The table's Delta log, read directly or, where pyarrow cannot reach it, through Spark."""
        root = self.location(table)
        if self._reads_log_through_spark(root):
            return DeltaLog(root, table=table, filesystem=_spark_fs.spark_filesystem(self.spark))
        return DeltaLog(root, table=table)

    def _reads_log_through_spark(self, root: str) -> bool:
        """Whether the log at `root` is read through Spark's Hadoop file system (decided once)."""
        if self._log_access != "auto":
            return self._log_access == "spark"
        if _spark_fs.is_local(root):
            return False
        found = self._spark_read.get(root)
        if found is None:
            why = _spark_fs.direct_access_error(root)
            if why is not None:
                log.info("reading the Delta log of %s through Spark's Hadoop file system: pyarrow cannot (%s)",
                         root, why)
            found = self._spark_read[root] = why is not None
        return found

    def exists(self, table: str) -> bool:
        if is_catalog_name(table):
            try:
                self.location(table)
            except (TableNotFoundError, LakehouseError):
                return False
        return super().exists(table)

    def _delta_table(self, table: str):
        if is_catalog_name(table):
            return self._delta_table_cls.forName(self.spark, table)
        return self._delta_table_cls.forPath(self.spark, self.location(table))

    def _reader_at(self, table: str, version: int) -> DataFrame:
        if is_catalog_name(table):
            return self.spark.read.option("versionAsOf", int(version)).table(table)
        return self.spark.read.format("delta").option("versionAsOf", int(version)).load(self.location(table))

    # ------------------------------------------------------------------ read

    def read(
        self,
        table: str,
        version: int,
        *,
        partitions: Sequence[PartitionValues] | None = None,
        files: Iterable[FileAction | tuple[str, str | None]] | None = None,
        columns: Sequence[str] | None = None,
    ) -> DataFrame:
        log_ = self.log(table)
        state = log_.state(version)  # raises TableNotFoundError / MissingLogError first, clearly
        part_cols = list(state.metadata.partition_columns)
        df = self._reader_at(table, version)
        if partitions is not None:
            if not partitions:
                df = df.where(F.lit(False))
            else:  # partition filters: Delta prunes files by them
                df = df.where(parts.partition_predicate(partitions, df.schema, part_cols))
        if files is not None:
            df = self._only_files(df, log_, version, files, part_cols)
        if columns is not None:
            missing = [c for c in columns if c not in df.columns]
            if missing or not columns:
                raise LakehouseError(
                    f"columns {missing or list(columns)} cannot be read from {table!r} (version "
                    f"{version}); its columns are {df.columns}"
                )
            df = df.select(*[F.col(parts.quote_identifier(c)) for c in columns])
        return df

    def _only_files(
        self,
        df: DataFrame,
        log_: DeltaLog,
        version: int,
        files: Iterable[FileAction | tuple[str, str | None]],
        part_cols: list[str],
    ) -> DataFrame:
        """The rows of `df` (the table at `version`) that come from the given file states.

        Filtering on `_metadata.file_path` keeps Delta's own scan, so the version's deletion
        vectors apply. Spark does not prune files by that filter, so the files' partition
        values are added as a partition filter (Delta prunes by it).
        """
        active = log_.snapshot(version).files
        wanted: list[FileAction] = []
        for item in files:
            key = item.key if isinstance(item, FileAction) else (str(item[0]), item[1])
            action = active.get(key)
            if action is None:
                raise LakehouseError(
                    f"file {key[0]!r} (deletion vector {key[1]!r}) is not a file of version {version} of "
                    f"{log_.table!r}; list files from the same version (log().snapshot({version}).files)"
                )
            wanted.append(action)
        if not wanted:
            return df.where(F.lit(False))
        uris = sorted({_scanned_path(a, log_.root) for a in wanted})
        path = F.url_decode(F.replace(df.metadataColumn("_metadata").getField("file_path"), F.lit("+"), F.lit("%2B")))
        df = df.where(path.isin(uris))
        if part_cols:
            specs = {tuple(sorted(a.partition_values.items(), key=str)): dict(a.partition_values) for a in wanted}
            df = df.where(parts.partition_predicate(list(specs.values()), df.schema, part_cols))
        return df

    # ------------------------------------------------------------------ write

    def _write(self, request: WriteRequest) -> WriteResult:
        table = request.table
        root = self.location(table) if (request.table_exists or not is_catalog_name(table)) else None
        write_id = uuid.uuid4().hex
        user_metadata = json.dumps({**request.metadata, WRITE_ID_KEY: write_id}, sort_keys=True)
        with _write_lock(self.spark):
            try:
                if request.mode == "upsert" and request.table_exists:
                    self._merge(request, root, user_metadata)  # type: ignore[arg-type]
                else:
                    if request.mode == "upsert":  # creates the table: still no null key
                        _affected(request.df, request.key, [])  # type: ignore[arg-type]
                    self._save(request, root, user_metadata)
            except Exception as exc:
                raise _write_error(exc, table) from exc
        return self._find_write(request, write_id)

    def _guarded(self, df: DataFrame, request: WriteRequest, root: str | None) -> DataFrame:
        """`df` plus one empty partition whose task checks, inside Delta's transaction, that
        the table is still at the planned version (see the module docstring)."""
        if root is None:  # a catalog table that does not exist yet: Delta's create conflicts decide
            return df
        if self._reads_log_through_spark(root):
            log.warning(
                "the Delta log of %s is out of pyarrow's reach, so the write cannot check the planned "
                "version inside Delta's transaction; Delta's conflict detection and the SetTransaction "
                "still apply", request.table,
            )
            return df
        check = functools.partial(_guard_task, root, request.table, request.expected_version)
        guard = self.spark.range(0, 1, 1, 1).mapInArrow(check, df.schema)
        return df.unionByName(guard)

    def _save(self, request: WriteRequest, root: str | None, user_metadata: str) -> None:
        """append / overwrite / replace_partitions (and "upsert" creating the table)."""
        df = self._guarded(request.df, request, root)
        mode, exists = request.mode, request.table_exists
        writer = df.write.format("delta").option("userMetadata", user_metadata)
        if request.app_id is not None:
            writer = writer.option("txnAppId", request.app_id).option("txnVersion", str(int(request.txn_version)))  # type: ignore[arg-type]
        if mode in ("append", "upsert"):
            writer = writer.mode("append")
            if not exists and request.partition_columns:
                writer = writer.partitionBy(*request.partition_columns)
        elif mode == "overwrite":
            writer = writer.mode("overwrite").option("overwriteSchema", "true")
            if request.partition_by:
                writer = writer.partitionBy(*request.partition_by)
        else:  # replace_partitions: write() checked the partitions against the table's columns
            predicate = parts.partition_predicate(request.partitions, request.df.schema, request.partition_columns)
            writer = writer.mode("overwrite").option("replaceWhere", predicate)
            if not exists:
                writer = writer.partitionBy(*request.partition_columns)
        if is_catalog_name(request.table):
            writer.saveAsTable(request.table)
        else:
            writer.save(root)

    def _merge(self, request: WriteRequest, root: str, user_metadata: str) -> None:
        """"upsert" into an existing table: ONE Delta MERGE (see `Lakehouse.write`)."""
        key, part_cols = request.key, list(request.partition_columns)
        assert key is not None  # checked by Lakehouse.write
        target_cols = [f.name for f in self.schema(request.table, request.expected_version).fields]
        _check_same_columns(request.df, target_cols, request.table)
        match_cols = [*part_cols, key]
        source = request.df.select(*[_col(c) for c in target_cols]).withColumn(_OP, F.lit("u"))
        if request.deletes is not None:
            # A key both deleted and written is written (its match is the upsert row).
            gone = (request.deletes.select(*[_col(c) for c in match_cols]).distinct()
                    .join(request.df.select(*[_col(c) for c in match_cols]), match_cols, "left_anti"))
            types = {f.name: f.dataType for f in request.df.schema.fields}
            source = source.unionByName(gone.select(
                *[_col(c) if c in match_cols else F.lit(None).cast(types[c]).alias(c) for c in target_cols],
                F.lit("d").alias(_OP),
            ))
        condition = _match_condition(match_cols)
        snapshot = self.log(request.table).snapshot(request.expected_version)
        types = {f.name: f.dataType for f in request.df.schema.fields}
        hint = _target_hint(source, key, part_cols, snapshot.files.values(), types)
        if hint is not None:
            condition = condition & hint
        source = self._guarded(source, request, root)
        assignments = {parts.quote_identifier(c): F.col(f"s.{parts.quote_identifier(c)}") for c in target_cols}
        merge = (
            self._delta_table(request.table).alias("t")
            .merge(source.alias("s"), condition)
            .whenMatchedDelete(condition=F.col(f"s.{_OP}") == F.lit("d"))
            .whenMatchedUpdate(set=assignments)
            .whenNotMatchedInsert(condition=F.col(f"s.{_OP}") == F.lit("u"), values=assignments)
        )
        confs = {USER_METADATA_CONF: user_metadata}
        if request.app_id is not None:
            confs.update({TXN_APP_ID_CONF: request.app_id, TXN_VERSION_CONF: str(int(request.txn_version))})  # type: ignore[arg-type]
        with _session_confs(self.spark, confs):
            merge.execute()

    def _find_write(self, request: WriteRequest, write_id: str) -> WriteResult:
        """The commit carrying `write_id`, counted from its own actions; or a skipped write."""
        log_ = self.log(request.table)
        after = -1 if request.expected_version is None else request.expected_version
        found = None
        for entry in log_.iter_history():
            if entry.version <= after:
                break
            if json.loads(entry.info.get("userMetadata") or "{}").get(WRITE_ID_KEY) == write_id:
                found = entry.version
                break
        if found is None:
            if request.app_id is not None:
                recorded = log_.transaction_version(request.app_id)
                if recorded is not None and recorded >= int(request.txn_version):  # type: ignore[arg-type]
                    # Another run of this app committed the same version first; Delta skipped ours.
                    log.info("Delta skipped the write to %s: app %s already committed txn version %s",
                             request.table, request.app_id, recorded)
                    return WriteResult(version=None)
            log.info("the write to %s changed nothing, so Delta recorded no commit", request.table)
            return WriteResult(version=None, rows_written=0)
        if found != after + 1:
            log.warning("another writer committed to %s while this write ran (versions %s..%s); Delta found "
                        "no conflict and committed this write as version %s", request.table, after + 1,
                        found - 1, found)
        return _commit_result(log_, found)


# ---------------------------------------------------------------------------------- helpers


def _commit_result(log_: DeltaLog, version: int) -> WriteResult:
    """Files and bytes a commit added and removed, from its actions.

    A file removed and added again in the same commit with a new deletion vector (a DELETE,
    UPDATE or MERGE by deletion vectors) is neither: its bytes were not rewritten.
    """
    commit = log_.commit(version)
    again = {a.path for a in commit.adds} & {r.path for r in commit.removes}
    added = [a for a in commit.adds if a.path not in again]
    removed = [r for r in commit.removes if r.path not in again]
    metrics = commit.info.get("operationMetrics") or {}
    if "numTargetRowsInserted" in metrics:  # MERGE: the rows that entered (not the rows copied along)
        rows: int | None = int(metrics["numTargetRowsInserted"]) + int(metrics.get("numTargetRowsUpdated", 0))
    elif "numOutputRows" in metrics:
        rows = int(metrics["numOutputRows"])
    else:
        rows = None
    return WriteResult(
        version=version,
        files_added=len(added),
        rows_written=rows,
        files_removed=len(removed),
        bytes_added=sum(a.size or 0 for a in added),
        bytes_removed=sum(r.size or 0 for r in removed),
    )


def _guard_task(root: str, table: str, expected: int | None, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The guard's task (a Python worker): fail unless the log is still at `expected`."""
    for _ in batches:
        pass
    with raised_for_driver():
        log_ = DeltaLog(root, table=table)
        check_planned_version(table, expected, log_.latest_version() if log_.exists() else None)
    return iter(())


class _session_confs:  # noqa: N801 - used as a context manager, like contextlib's
    """Set SQL confs for a block and restore them after, whatever happens."""

    def __init__(self, spark: SparkSession, confs: dict[str, str]):
        self._spark, self._confs = spark, confs
        self._before: dict[str, Any] = {}

    def __enter__(self) -> None:
        for key, value in self._confs.items():
            self._before[key] = self._spark.conf.get(key, None)
            self._spark.conf.set(key, value)

    def __exit__(self, *exc: object) -> None:
        for key, value in self._before.items():
            if value is None:
                self._spark.conf.unset(key)
            else:
                self._spark.conf.set(key, value)


def _col(name: str) -> Column:
    return F.col(parts.quote_identifier(name))


def _match_condition(columns: Sequence[str]) -> Column:
    """t.c <=> s.c for every column (partition columns and the key)."""
    condition = None
    for c in columns:
        q = parts.quote_identifier(c)
        term = F.col(f"t.{q}").eqNullSafe(F.col(f"s.{q}"))
        condition = term if condition is None else condition & term
    return condition  # type: ignore[return-value]


def _affected(source: DataFrame, key: str, part_cols: Sequence[str]) -> tuple[list[Any] | None, list[Any]]:
    """The (partition values..., key) rows of the MERGE source: all of them when there are at
    most `_EXACT_KEYS` (else None), and per partition the key's min and max. Refuses null
    keys (a null key matches nothing and would enter as a row no later upsert finds)."""
    q = parts.quote_identifier
    columns = [*part_cols, key]
    exact = source.select(*[_col(c) for c in columns]).limit(_EXACT_KEYS + 1).collect()
    if len(exact) <= _EXACT_KEYS:
        nulls = sum(1 for r in exact if r[key] is None)
        grouped: list[Any] = []
    else:
        exact = None  # type: ignore[assignment]
        grouped = source.groupBy(*[_col(c) for c in part_cols]).agg(
            F.min(_col(key)).alias("lo"), F.max(_col(key)).alias("hi"),
            F.sum(F.col(q(key)).isNull().cast("long")).alias("nulls"),
        ).collect()
        nulls = sum(int(r["nulls"] or 0) for r in grouped)
    if nulls:
        raise LakehouseError(
            f"mode 'upsert' needs a key in every row: {nulls} row(s) to write or delete have a null {key!r}; "
            "drop or fix them before the write"
        )
    return exact, grouped


def _target_hint(
    source: DataFrame, key: str, part_cols: Sequence[str], files: Iterable[FileAction], types: dict[str, Any]
) -> Column | None:
    """A predicate on the target alone that every target row an affected key can match
    satisfies: the partitions and key ranges of the target files whose statistics can hold
    an affected key. Delta's MERGE reads only the files it lets through (data skipping).
    """
    key_type = types[key].simpleString()
    exact, grouped = _affected(source, key, part_cols)
    # Partition values compared typed, in canonical form (the rows' values are typed, the
    # log's are strings some other writer formatted), so each file is grouped under its
    # partition's canonical key, as each affected row is.
    canonical = parts.PartitionMatcher([], types, part_cols)
    by_partition: dict[tuple, list[FileAction]] = {}
    for f in files:
        by_partition.setdefault(canonical.key(f.partition_values, part_cols), []).append(f)

    def partition_of(row: Any) -> tuple:
        return canonical.key({c: parts.to_partition_string(row[c], types[c], c) for c in part_cols}, part_cols)

    candidates: list[FileAction] = []
    if exact is not None:
        keys: dict[tuple, list[Any]] = {}
        for row in exact:
            keys.setdefault(partition_of(row), []).append((None, row[key]))
        for partition, wanted in keys.items():
            candidates += keyranges.files_holding(by_partition.get(partition, []), key, [], wanted, key_type)
    else:
        for row in grouped:
            wanted_range = keyranges.KeyRange(None, keyranges.stats_value(row["lo"]), keyranges.stats_value(row["hi"]))
            candidates += keyranges.files_overlapping(by_partition.get(partition_of(row), []), key, [], [wanted_range],
                                                      key_type)
    region = keyranges.merge(keyranges.file_range(f, key, part_cols, key_type) for f in candidates)
    if len(region) > _MAX_RANGE_TERMS:  # too long a predicate: each partition's whole range
        region = keyranges.merge(keyranges.KeyRange(r.partition) for r in region)
    if len(region) > _MAX_RANGE_TERMS:
        return None
    q = parts.quote_identifier
    hint = F.lit(False)  # no candidate file: nothing to match, no target file to read
    for r in region:
        term = F.lit(True)
        for c, value in r.partition or ():
            target = F.col(f"t.{q(c)}")
            typed = parts.from_partition_string(value, types[c], c)
            term = term & (target.isNull() if typed is None else target == F.lit(typed).cast(types[c]))
        target = F.col(f"t.{q(key)}")
        if r.low is not None:
            term = term & (target >= F.lit(r.low).cast(types[key]))
        if r.high is not None:
            term = term & (target <= F.lit(r.high).cast(types[key]))
        hint = hint | term
    return hint


def _check_same_columns(df: DataFrame, target_cols: list[str], table: str) -> None:
    """The rows of an upsert must have exactly the table's columns (names; types are Delta's to check)."""
    have, want = set(df.columns), set(target_cols)
    if have != want:
        raise LakehouseError(
            f"the rows to upsert into {table!r} do not have the table's columns: missing {sorted(want - have)}, "
            f"extra {sorted(have - want)}; write rows with the table's columns, or use mode 'overwrite' to "
            "replace the table and its schema"
        )


def _write_error(exc: Exception, table: str) -> Exception:
    """The error a failed write raises: ours when the tasks raised one, ConcurrentRunError
    for Delta's conflicts, else LakehouseError."""
    known = from_spark(exc)  # e.g. the guard, or a model error of a scoring task this write ran
    if known is not None:
        return known
    text = f"{type(exc).__name__} {str(exc)[:4000]}"
    if any(marker in text for marker in _CONFLICTS):
        return ConcurrentRunError(
            f"another writer committed to {table!r} while this run was writing; nothing was published; "
            f"rerun ({first_line(exc)})"
        )
    return LakehouseError(f"writing to {table!r} failed; nothing was published: {exc}")


def _local_path(uri: str) -> str:
    """A local file path for `file:` URIs (decoded); anything else unchanged."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    return uri


def _scanned_path(action: FileAction, root: str) -> str:
    """A file's `_metadata.file_path` as Spark reports it for the table at `root`, URI-decoded.

    Spark's path is the file's URI (`file:/lake/t/day=x/part-0.parquet`) with the characters
    a URI cannot hold %-encoded; the log's path is an RFC 2396 URI, relative to the root or
    absolute. Both sides are compared decoded.
    """
    if "://" in action.path or action.path.startswith("file:"):
        decoded = unquote(action.path)
    else:
        base = "file:" + root if _spark_fs.is_local(root) and not root.startswith("file:") else root
        decoded = f"{base.rstrip('/')}/{unquote(action.path)}"
    return re.sub(r"^file:(//(localhost)?)?/", "file:/", decoded)
