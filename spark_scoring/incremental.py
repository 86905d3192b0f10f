"""Incremental planning: what a nightly run must score, carry over, and replace.

Progress lives with the data. The watermark (the last source version scored) is a Delta
SetTransaction in the OUTPUT table's own log, under an app id made from the job name and
the model identity, committed in the same commit as the scored rows. So no side file can
disagree with the data, and a crash before the commit leaves the old watermark in place:
the next run simply plans the same work again.

Finding what changed:
1. the affected partitions are those whose files were added or removed between the
   watermark and the pinned source version (a diff of the two versions' file lists);
2. inside them, a key-level comparison of the source rows with the output rows decides,
   per key: new or changed input (input hash differs) -> score; unchanged -> carry the
   output row over as it is (same `run_id`, `scored_at`); gone from the source -> drop.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from spark_scoring.contract import INPUT_HASH, MODE_RUN, NIGHTLY_MODES, CommitRecord
from spark_scoring.errors import HistoryGapError, ScoringError
from spark_scoring.lakehouse.base import CommitInfo, Lakehouse

log = logging.getLogger(__name__)

PlanKind = Literal["full", "incremental", "nothing", "backfill"]
Partition = Mapping[str, "str | None"]


def model_identity(model_hash: str, options: Mapping[str, Any], precision: str) -> str:
    """Everything that changes predictions: the resolved model, its task options, precision.

    Batch settings are left out on purpose: predictions do not depend on packing.
    """
    blob = json.dumps({"model": model_hash, "options": dict(options), "precision": precision}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def app_id(job_name: str, identity: str) -> str:
    """The SetTransaction app id holding a job's watermark for one model identity."""
    return f"spark-scoring:{job_name}:{identity}"


def input_hash(columns: Sequence[str]) -> Column:
    """A stable hash of a row's model inputs (null and empty string hash differently)."""
    return F.sha2(F.to_json(F.struct(*[F.col(c) for c in columns])), 256)


def last_job_commit(history: Sequence[CommitInfo], job: str, modes: Sequence[str] = NIGHTLY_MODES) -> CommitInfo | None:
    """The newest commit a nightly run (not a backfill) of `job` made."""
    for commit in history:
        record = CommitRecord.from_metadata(commit.metadata)
        if record is not None and record.job == job and record.mode in modes:
            return commit
    return None


@dataclass(frozen=True)
class Plan:
    """What one run will do.

    Attributes:
        kind: "full" (score everything, overwrite), "incremental" (replace `partitions`),
            "backfill" (rescore every row of `partitions`), "nothing" (no commit).
        partitions: the source/output partitions affected (Delta string form); None: the
            whole table (a full plan, or an incremental plan on an unpartitioned table).
        since_version: the watermark the plan starts from (None: from scratch).
        source_version: the pinned source version.
        output_version: the output version the plan was made against (None: no table).
        reason: one line a person can read.
        mode: the commit's mode (`contract.MODE_*`): run, full-refresh or backfill.
        record_watermark: whether the commit records the watermark (nightly runs do, unless
            the version is already recorded; backfills never do).
    """

    kind: PlanKind
    source_version: int
    output_version: int | None
    since_version: int | None = None
    partitions: tuple[Partition, ...] | None = None
    reason: str = ""
    mode: str = MODE_RUN
    record_watermark: bool = True

    @property
    def write_mode(self) -> str:
        """The lakehouse write mode this plan commits with."""
        return "overwrite" if self.partitions is None else "replace_partitions"


#: Delta operations that rewrite or annotate files without changing any row.
DATA_NEUTRAL_OPERATIONS = frozenset(
    {"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES", "UNSET TBLPROPERTIES",
     "ADD CONSTRAINT", "DROP CONSTRAINT", "CHECKPOINT"}
)


def _only_data_neutral_commits(lake: Lakehouse, table: str, since: int, until: int) -> list[str]:
    """The operations of versions since+1..until when ALL of them leave the rows unchanged
    (OPTIMIZE, VACUUM, ...), else []: a compaction must not cost a rescore or a commit."""
    wanted = until - since
    commits = [c for c in lake.history(table, limit=wanted + 50) if since < c.version <= until]
    if len(commits) != wanted:
        return []  # history incomplete: let the file diff decide
    operations = sorted({c.operation.upper() for c in commits})
    return operations if all(op in DATA_NEUTRAL_OPERATIONS for op in operations) else []


def changed_partitions(
    lake: Lakehouse, table: str, since_version: int, until_version: int, partition_by: Sequence[str]
) -> list[dict[str, str | None]]:
    """Partitions whose files were added or removed between two versions of `table`.

    Raises:
        HistoryGapError: `since_version` can no longer be read (log cleaned up / vacuumed).
    """
    try:
        before = lake.files(table, since_version)
    except Exception as exc:  # noqa: BLE001 - any failure to load the old version is a gap
        raise HistoryGapError(
            f"source table {table!r}: version {since_version} (the last version this job scored) "
            f"can no longer be read, so the changes since then are unknown ({type(exc).__name__}: {exc}). "
            "The table's log was probably cleaned up or vacuumed past the watermark. Nothing was "
            "published. Run once with --full-refresh to rescore from the current version, and keep "
            "delta.logRetentionDuration longer than the interval between runs."
        ) from exc
    after = lake.files(table, until_version)
    before_paths = {f.path: f for f in before}
    after_paths = {f.path: f for f in after}
    touched = [f for p, f in after_paths.items() if p not in before_paths]
    touched += [f for p, f in before_paths.items() if p not in after_paths]
    seen: dict[tuple, dict[str, str | None]] = {}
    for f in touched:
        values = {c: f.partition_values.get(c) for c in partition_by}
        seen.setdefault(tuple(values.items()), values)
    return sorted(seen.values(), key=lambda v: [(x is None, x or "") for x in v.values()])


def make_plan(
    lake: Lakehouse,
    *,
    source_table: str,
    partition_by: Sequence[str],
    source_version: int,
    output_exists: bool,
    output_version: int | None,
    watermark: int | None,
    previous: CommitInfo | None,
    identity: str,
    on_change: str,
    full_refresh: bool,
    source_table_id: str | None = None,
) -> Plan:
    """Decide what a nightly run does. Pure planning: reads only Delta logs, no rows."""
    base = {"source_version": source_version, "output_version": output_version}
    last = CommitRecord.from_metadata(previous.metadata) if previous is not None else None
    recorded_id = last.source_table_id if last is not None else None
    if not full_refresh and output_exists and recorded_id and source_table_id and recorded_id != source_table_id:
        raise HistoryGapError(
            f"source table {source_table!r} was recreated since the last run (table id {recorded_id} "
            f"is now {source_table_id}), so its version numbers no longer continue from the watermark. "
            "Nothing was published. Run with --full-refresh to rescore it from scratch."
        )
    if full_refresh:
        return Plan("full", reason="--full-refresh: rescoring every row", **base)
    if not output_exists:
        return Plan("full", reason="output table does not exist yet: scoring every row", **base)
    if previous is None and watermark is None:
        return Plan("full", reason="no earlier nightly run of this job on the output table: scoring every row", **base)

    old_identity = last.model_identity if last is not None else identity
    if old_identity != identity:
        # The last nightly run used another model identity. A watermark recorded under the
        # current identity (if any) is stale: other models scored rows since then.
        assert last is not None  # invariant: old_identity came from it
        old_uri = last.model_uri or "?"
        if on_change == "fail":
            raise ScoringError(
                f"the model changed since the last run (was {old_uri} [{old_identity}], now [{identity}]) "
                "and model.on_change is 'fail'. Nothing was published. To rescore every row with the new "
                "model set model.on_change=rescore (or run --full-refresh); to score only new and changed "
                "rows with it set model.on_change=new-rows-only."
            )
        if on_change == "rescore":
            return Plan("full", reason=f"model changed (was {old_uri}): rescoring every row (model.on_change=rescore)", **base)
        since = last.source_version
        if since is None:
            return Plan("full", reason="model changed and the last run's source version is unknown: scoring every row", **base)
    elif watermark is not None:
        since = watermark
    else:
        assert last is not None  # invariant: both None returned above
        since = last.source_version
        if since is None:
            return Plan("full", reason="the last run's source version is unknown: scoring every row", **base)

    assert since is not None
    if since > source_version:
        raise HistoryGapError(
            f"source table {source_table!r} is at version {source_version}, older than version {since} "
            "this job already scored: the source was recreated or restored. Nothing was published. "
            "Run with --full-refresh to rescore it from scratch."
        )
    if since == source_version:
        return Plan("nothing", since_version=since, reason=f"source unchanged since version {since}: nothing to do", **base)
    neutral = _only_data_neutral_commits(lake, source_table, since, source_version)
    if neutral:
        return Plan(
            "nothing", since_version=since,
            reason=f"versions {since + 1}..{source_version} changed no data ({', '.join(neutral)})", **base,
        )
    parts = changed_partitions(lake, source_table, since, source_version, partition_by)
    if not parts:
        return Plan(
            "nothing", since_version=since, reason=f"versions {since + 1}..{source_version} changed no data files", **base
        )
    return Plan(
        "incremental",
        since_version=since,
        # An unpartitioned table is one partition: compare every key, rewrite the table.
        partitions=tuple(parts) if partition_by else None,
        reason=f"{len(parts)} partition(s) changed in source versions {since + 1}..{source_version}",
        **base,
    )


def split_rows(
    source: DataFrame,
    output: DataFrame,
    *,
    key: str,
    passthrough_columns: Sequence[str],
    output_columns: Sequence[str],
    rescore_model_uri: str | None = None,
) -> tuple[DataFrame, DataFrame]:
    """Split the affected source rows into (rows to score, output rows carried over).

    A source row is carried over only when the output holds a row for its key with the
    same input hash, no error (a failed row is retried, as a full refresh would), and
    (with `rescore_model_uri`) the same model. Everything else is scored; output keys
    that left the source simply vanish.

    Args:
        source: affected source rows with an `input_hash` column.
        output: the output rows of the same partitions.
        key: the row key.
        passthrough_columns: key, partition and passthrough columns: taken from the
            source for carried rows too, so a full refresh would produce the same row.
        output_columns: columns the model and lineage produce (taken from the output).
        rescore_model_uri: when set, carried rows scored by another model are rescored.
    """
    prev = output.select(
        F.col(key).alias("__key"),
        F.col(INPUT_HASH).alias("__prev_hash"),
        *[F.col(c).alias(f"__prev_{c}") for c in output_columns],
    )
    # One previous row per key, whatever happened before: a duplicate in the output must
    # never be carried twice (the newest scoring wins).
    newest = Window.partitionBy("__key").orderBy(F.col("__prev_scored_at").desc_nulls_last(), F.col("__prev_run_id"))
    prev = prev.withColumn("__rank", F.row_number().over(newest)).filter(F.col("__rank") == 1).drop("__rank")
    joined = source.join(prev, source[key] == prev["__key"], "left")
    same = F.col("__key").isNotNull() & F.col("__prev_hash").eqNullSafe(F.col(INPUT_HASH)) & F.col("__prev_error").isNull()
    if rescore_model_uri is not None:
        same = same & F.col("__prev_model_uri").eqNullSafe(F.lit(rescore_model_uri))
    same = F.coalesce(same, F.lit(False))  # never let a null drop a row from both sides
    to_score = joined.filter(~same).select(*source.columns)
    carried = joined.filter(same).select(
        *[F.col(c) for c in passthrough_columns],
        *[F.col(f"__prev_{c}").alias(c) for c in output_columns],
        F.col(INPUT_HASH),
    )
    return to_score, carried
