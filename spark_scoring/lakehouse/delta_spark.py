"""The delta-spark backend: the JVM Delta Lake connector (Databricks, EMR, clusters with the jars).

Uses only Delta's documented reader/writer options: `versionAsOf` for pinned reads,
`replaceWhere` for atomic partition replacement (one commit; Delta checks that the new rows
satisfy the predicate), `overwriteSchema` for full overwrites, `txnAppId`/`txnVersion` for
idempotent writes (the connector skips a version <= the recorded one) and `userMetadata`
for the commit metadata (JSON), which DESCRIBE HISTORY returns. Paths and catalog names
both work.

The Delta jars cannot be installed on the development machines (no Maven access), so this
module is exercised on clusters; the shared contract tests skip it elsewhere.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Sequence
from urllib.parse import unquote, urlparse

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from spark_scoring.contract import WRITE_ID_KEY
from spark_scoring.errors import (
    ConcurrentRunError,
    LakehouseError,
    TableNotFoundError,
    first_line,
    from_spark,
)
from spark_scoring.lakehouse import _partitions as parts
from spark_scoring.lakehouse.base import (
    CommitInfo,
    FileEntry,
    Lakehouse,
    PartitionValues,
    WriteRequest,
    WriteResult,
    is_catalog_name,
    parse_user_metadata,
)

log = logging.getLogger("spark_scoring.lakehouse")


class DeltaSparkLakehouse(Lakehouse):
    """Delta tables (paths or catalog names) through the JVM Delta connector."""

    engine = "delta-spark"

    def __init__(self, spark: SparkSession):
        super().__init__(spark)
        from delta.tables import DeltaTable  # the Python API of delta-spark (no jars inside)

        self._delta_table_cls = DeltaTable

    # ------------------------------------------------------------------ references

    @staticmethod
    def _is_name(table: str) -> bool:
        return is_catalog_name(table)

    def _delta_table(self, table: str):
        try:
            if self._is_name(table):
                return self._delta_table_cls.forName(self.spark, table)
            return self._delta_table_cls.forPath(self.spark, table)
        except Exception as exc:
            if _looks_not_found(exc):
                raise TableNotFoundError(
                    f"no Delta table {table!r}; check the path or name, or create the table with a "
                    "first write"
                ) from exc
            raise LakehouseError(f"Delta table {table!r} cannot be opened: {exc}") from exc

    def _reader_at(self, table: str, version: int) -> DataFrame:
        if self._is_name(table):
            return self.spark.read.option("versionAsOf", int(version)).table(table)
        return self.spark.read.format("delta").option("versionAsOf", int(version)).load(table)

    def _location(self, table: str) -> str:
        """The storage location of a table (a path table is its own location)."""
        if not self._is_name(table):
            return table
        detail = self.spark.sql(f"DESCRIBE DETAIL {table}").select("location").first()
        return str(detail["location"])

    # ------------------------------------------------------------------ metadata

    def exists(self, table: str) -> bool:
        try:
            if self._is_name(table):
                if not self.spark.catalog.tableExists(table):
                    return False
                fmt = self.spark.sql(f"DESCRIBE DETAIL {table}").select("format").first()
                return fmt is not None and str(fmt["format"]).lower() == "delta"
            return bool(self._delta_table_cls.isDeltaTable(self.spark, table))
        except Exception:
            return False

    def table_id(self, table: str) -> str:
        target = table if self._is_name(table) else f"delta.`{table.replace('`', '``')}`"
        return str(self.spark.sql(f"DESCRIBE DETAIL {target}").select("id").first()["id"])

    def latest_version(self, table: str) -> int:
        row = self._delta_table(table).history(1).select("version").first()
        if row is None:
            raise TableNotFoundError(f"Delta table {table!r} has no commits")
        return int(row["version"])

    def schema(self, table: str, version: int | None = None) -> StructType:
        if version is None:
            return self._delta_table(table).toDF().schema
        return self._reader_at(table, version).schema

    def partition_columns(self, table: str, version: int | None = None) -> list[str]:
        # DESCRIBE DETAIL describes the latest version; partitioning rarely changes and
        # only an overwrite with a new partitionBy can change it.
        self._delta_table(table)  # raises TableNotFoundError
        target = table if self._is_name(table) else f"delta.`{table.replace('`', '``')}`"
        row = self.spark.sql(f"DESCRIBE DETAIL {target}").select("partitionColumns").first()
        return list(row["partitionColumns"] or []) if row is not None else []

    def files(self, table: str, version: int) -> list[FileEntry]:
        part_cols = self.partition_columns(table)
        df = self._reader_at(table, version)
        types = {f.name: f.dataType for f in df.schema.fields}
        grouped = (
            df.select(
                F.col("_metadata.file_path").alias("__path"),
                F.col("_metadata.file_size").alias("__size"),
                *[F.col(parts.quote_identifier(c)) for c in part_cols],
            )
            .groupBy("__path", "__size", *[parts.quote_identifier(c) for c in part_cols])
            .count()
            .collect()
        )
        entries = []
        for row in grouped:
            entries.append(
                FileEntry(
                    path=_local_path(row["__path"]),
                    partition_values={
                        c: parts.to_partition_string(row[c], types[c], c) for c in part_cols
                    },
                    size=int(row["__size"]),
                    num_records=int(row["count"]),
                )
            )
        return sorted(entries, key=lambda e: e.path)

    def transaction_version(self, table: str, app_id: str, version: int | None = None) -> int | None:
        """The SetTransaction version of `app_id`, read from the table's `_delta_log`."""
        if version is None:
            version = self.latest_version(table)
        try:
            log_dir = self._location(table).rstrip("/") + "/_delta_log"
        except Exception as exc:  # noqa: BLE001 - catalogs that hide locations
            log.warning("cannot locate the log of %s (%s); transaction version unknown", table, exc)
            return None
        candidates: list[tuple[int, int]] = []  # (commit version, txn version)
        candidates += self._txn_rows(log_dir + "/*.json", "json", app_id, version)
        candidates += self._txn_rows(log_dir + "/*.checkpoint*.parquet", "parquet", app_id, version)
        if not candidates:
            return None
        return max(candidates)[1]

    def _txn_rows(self, pattern: str, fmt: str, app_id: str, version: int) -> list[tuple[int, int]]:
        try:
            frame = self.spark.read.format(fmt).load(pattern)
        except Exception:  # no such files (e.g. no checkpoint yet)
            return []
        if "txn" not in frame.columns:
            return []
        name = F.regexp_extract(F.input_file_name(), r"/(\d{20})\.[^/]*$", 1)
        rows = (
            frame.where(F.col("txn.appId") == F.lit(app_id))
            .select(name.cast("long").alias("commit"), F.col("txn.version").alias("txn"))
            .where(F.col("commit") <= F.lit(int(version)))
            .collect()
        )
        return [(int(r["commit"]), int(r["txn"])) for r in rows if r["commit"] is not None]

    def history(self, table: str, limit: int | None = None) -> list[CommitInfo]:
        delta_table = self._delta_table(table)
        frame = delta_table.history(limit) if limit is not None else delta_table.history()
        commits = []
        for row in frame.select("version", "timestamp", "operation", "userMetadata").collect():
            metadata = parse_user_metadata(row["userMetadata"])
            stamp = row["timestamp"]
            if isinstance(stamp, dt.datetime) and stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=dt.timezone.utc)
            commits.append(CommitInfo(int(row["version"]), stamp, str(row["operation"]), metadata))
        commits.sort(key=lambda c: c.version, reverse=True)
        return commits

    # ------------------------------------------------------------------ read

    def read(
        self,
        table: str,
        version: int,
        *,
        partitions: Sequence[PartitionValues] | None = None,
        columns: Sequence[str] | None = None,
    ) -> DataFrame:
        self._delta_table(table)  # clear TableNotFoundError before Spark's analysis error
        df = self._reader_at(table, version)
        if partitions is not None:
            if not partitions:
                df = df.where(F.lit(False))
            else:
                predicate = parts.partition_predicate(partitions, df.schema, self.partition_columns(table))
                df = df.where(predicate)  # partition filters: Delta prunes files by them
        if columns is not None:
            missing = [c for c in columns if c not in df.columns]
            if missing or not columns:
                raise LakehouseError(
                    f"columns {missing or list(columns)} cannot be read from {table!r} (version "
                    f"{version}); its columns are {df.columns}"
                )
            df = df.select(*[F.col(parts.quote_identifier(c)) for c in columns])
        return df

    # ------------------------------------------------------------------ write

    def _write(self, request: WriteRequest) -> WriteResult:
        df, table, mode = request.df, request.table, request.mode
        exists, partition_by = request.table_exists, request.partition_by

        write_id = uuid.uuid4().hex
        user_metadata = json.dumps({**request.metadata, WRITE_ID_KEY: write_id}, sort_keys=True)
        writer = df.write.format("delta").option("userMetadata", user_metadata)
        if request.app_id is not None:
            writer = writer.option("txnAppId", request.app_id).option("txnVersion", str(int(request.txn_version)))  # type: ignore[arg-type]
        if mode == "append":
            writer = writer.mode("append")
            if not exists and partition_by:
                writer = writer.partitionBy(*partition_by)
        elif mode == "overwrite":
            writer = writer.mode("overwrite").option("overwriteSchema", "true")
            if partition_by:
                writer = writer.partitionBy(*partition_by)
        else:  # replace_partitions: write() checked the partitions against the table's columns
            predicate = parts.partition_predicate(request.partitions, df.schema, request.partition_columns)
            writer = writer.mode("overwrite").option("replaceWhere", predicate)
            if not exists:
                writer = writer.partitionBy(*request.partition_columns)
        try:
            if self._is_name(table):
                writer.saveAsTable(table)
            else:
                writer.save(table)
        except Exception as exc:
            known = from_spark(exc)  # e.g. a model error of a scoring task this write ran
            if known is not None:
                raise known from exc
            if "Concurrent" in type(exc).__name__ or "Concurrent" in str(exc)[:2000]:
                raise ConcurrentRunError(
                    f"another writer committed to {table!r} while this run was writing; nothing was "
                    f"published; rerun ({first_line(exc)})"
                ) from exc
            raise LakehouseError(f"writing to {table!r} failed; nothing was published: {exc}") from exc
        return self._find_write(table, write_id)

    def _find_write(self, table: str, write_id: str) -> WriteResult:
        frame = self._delta_table(table).history(20)
        for row in frame.select("version", "userMetadata", "operationMetrics").collect():
            try:
                found = json.loads(row["userMetadata"] or "{}").get(WRITE_ID_KEY) == write_id
            except (ValueError, AttributeError):
                found = False
            if found:
                metrics = row["operationMetrics"] or {}
                return WriteResult(
                    version=int(row["version"]),
                    files_added=int(metrics.get("numFiles", 0) or 0),
                    rows_written=int(metrics["numOutputRows"]) if metrics.get("numOutputRows") else None,
                )
        # The connector skips a txnVersion it has already recorded (a replay racing us).
        log.info("no commit carries write %s in %s: the connector skipped it", write_id, table)
        return WriteResult(version=None)


def _looks_not_found(exc: Exception) -> bool:
    text = str(exc)
    return any(
        marker in text
        for marker in ("is not a Delta table", "DELTA_MISSING_DELTA_TABLE", "TABLE_OR_VIEW_NOT_FOUND",
                       "Path does not exist", "DELTA_TABLE_NOT_FOUND")
    )


def _local_path(uri: str) -> str:
    """A local file path for file: URIs (decoded); other URIs unchanged but decoded."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return unquote(parsed.path)
    return unquote(uri)


