"""What a run does, and how the rows it reads split into rows to score, keep and drop.

Progress lives with the data. The watermark (the last source version scored) is a Delta
SetTransaction in the OUTPUT table's own log, committed in the same commit as the scored
rows, and every commit also carries a `contract.CommitRecord` saying which source (table id,
version, commit timestamp), model identity and app id it reflects. So no side file can
disagree with the data, and a crash before the commit leaves the old watermark in place:
the next run simply plans the same work again. (The planner itself is
`spark_scoring.planner`; this module holds the pieces it and the pipeline share.)

A night's cost follows what changed:

* append-only nights (the source versions since the watermark only added files) score the
  rows of the added files and append them: no output file is removed;
* any other change is turned into a *region*: the partitions and key ranges (from the
  Delta log's file statistics, `lakehouse.keyranges`) of the source files that were
  removed, added or got deletion vectors, plus those of output files another writer
  touched. Inside the region, source and output rows are compared key by key
  (`reconcile`): new or changed input (input hash) or a failed row -> score; unchanged ->
  keep (the output row is not even rewritten); key gone from the source -> delete. The
  commit is an upsert by key: the engine rewrites only the output files holding affected
  keys, or marks them with deletion vectors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DataType, StructType

from spark_scoring.config import ModelConfig
from spark_scoring.contract import ERROR, INPUT_HASH, MODE_RUN, MODEL_URI, RUN_ID, SCORED_AT
from spark_scoring.lakehouse import _partitions as parts
from spark_scoring.lakehouse.deltalog import FileAction
from spark_scoring.lakehouse.keyranges import KeyRange

PlanKind = Literal["full", "append", "upsert", "nothing", "backfill"]
Partition = Mapping[str, "str | None"]


def model_identity(model_hash: str, model: ModelConfig) -> str:
    """Everything that changes predictions: the resolved model, the task, the input columns,
    the task options (e.g. return_all_scores, max_new_tokens) and the precision.

    Batch settings and the device are left out on purpose: predictions do not depend on
    packing, and moving a job between CPU and GPU must not rescore the table.
    """
    blob = json.dumps(
        {
            "model": model_hash,
            "task": model.task,
            "input": list(model.input),
            "options": dict(model.options),
            "precision": model.precision,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def app_id(job_name: str, identity: str, epoch: int = 0) -> str:
    """The SetTransaction app id holding a job's watermark for one model identity.

    `epoch` counts watermark resets (a source recreated behind the watermark): Delta never
    lets a SetTransaction version go down, so a reset records under a new app id.
    """
    base = f"spark-scoring:{job_name}:{identity}"
    return base if not epoch else f"{base}:{epoch}"


def col(name: str) -> Column:
    """A column by its exact name (dots, spaces, backticks are part of the name)."""
    return F.col(parts.quote_identifier(name))


def input_hash(columns: Sequence[str]) -> Column:
    """A stable hash of a row's model inputs (null and empty string hash differently)."""
    return F.sha2(F.to_json(F.struct(*[col(c).alias(c) for c in columns])), 256)


@dataclass(frozen=True)
class Plan:
    """What one run will do.

    Attributes:
        kind: "full" (score everything, overwrite), "append" (score the rows of
            `added_files`, append them), "upsert" (reconcile the `region`, commit an upsert
            by key), "backfill" (rescore every row of `partitions`), "nothing" (no commit).
        source_version: the pinned source version.
        output_version: the output version the plan was made against (None: no table).
        since_version: the watermark the plan starts from (None: from scratch).
        partitions: the partitions a backfill rescores.
        added_files: the source file states an append plan scores.
        region: the key ranges an upsert plan reconciles; None: the whole table.
        reason: one line a person can read.
        mode: the commit's mode (`contract.MODE_*`): run, full-refresh or backfill.
        record_watermark: whether the commit records the watermark (nightly runs do, unless
            the version is already recorded; backfills never do).
        app_id: the app id the watermark is recorded under.
        epoch: the epoch of `app_id` (see `app_id()`).
        mixed_models: whether the output may hold rows of other model identities after
            the commit.
    """

    kind: PlanKind
    source_version: int
    output_version: int | None
    since_version: int | None = None
    partitions: tuple[Partition, ...] | None = None
    added_files: tuple[FileAction, ...] = ()
    region: tuple[KeyRange, ...] | None = None
    reason: str = ""
    mode: str = MODE_RUN
    record_watermark: bool = True
    app_id: str | None = None
    epoch: int = 0
    mixed_models: bool = False

    @property
    def touched_partitions(self) -> int | None:
        """How many partitions the plan reads and may write (None: all of them, or unpartitioned)."""
        if self.kind == "backfill":
            return len(self.partitions or ())
        if self.kind == "append":
            found = {tuple(sorted(f.partition_values.items())) for f in self.added_files}
            return len(found) if any(found) else None
        if self.kind == "upsert" and self.region is not None:
            found = {r.partition for r in self.region}
            return None if None in found else len(found)
        return None

    @property
    def write_mode(self) -> str:
        """The lakehouse write mode this plan commits with."""
        return {"full": "overwrite", "append": "append", "upsert": "upsert", "backfill": "replace_partitions"}[
            self.kind
        ]


# ------------------------------------------------------------------------------- regions


def region_predicate(region: Sequence[KeyRange], key: str, schema: StructType) -> Column:
    """A row filter selecting exactly the rows of `region` (partition values typed)."""
    types = {f.name: f.dataType for f in schema.fields}
    terms = []
    for r in region:
        term = F.lit(True)
        for column, value in r.partition or ():
            term = term & _partition_equals(column, value, types[column])
        if r.low is not None:
            term = term & (col(key) >= _key_literal(r.low, types[key]))
        if r.high is not None:
            term = term & (col(key) <= _key_literal(r.high, types[key]))
        terms.append(term)
    if not terms:
        return F.lit(False)
    out = terms[0]
    for term in terms[1:]:
        out = out | term
    return out


def _partition_equals(column: str, value: str | None, data_type: DataType) -> Column:
    if value is None:
        return col(column).isNull()
    return col(column) == F.lit(parts.from_partition_string(value, data_type, column))


def _key_literal(value: Any, data_type: DataType) -> Column:
    # Statistics hold dates as ISO strings: cast them back to the key's type.
    return F.lit(value).cast(data_type)


# ------------------------------------------------------------------------------- splitting


@dataclass(frozen=True)
class Split:
    """How the rows of a region split.

    Attributes:
        to_score: source rows to score (new keys, changed input, failed before).
        kept: output rows kept with their predictions but rewritten with the source's current
            passthrough values (a passthrough or partition column changed, the inputs did
            not), in output columns.
        deletes: key and partition columns of output rows that leave the table (key gone
            from the source, moved to another partition, or duplicated in the output).
        unchanged: output rows that stay exactly as they are (not written): for counting.
    """

    to_score: DataFrame
    kept: DataFrame
    deletes: DataFrame
    unchanged: DataFrame


def reconcile(
    source: DataFrame,
    output: DataFrame,
    *,
    key: str,
    passthrough_columns: Sequence[str],
    partition_columns: Sequence[str],
    output_columns: Sequence[str],
    rescore_model_uri: str | None = None,
) -> Split:
    """Compare the source and output rows of one region key by key (see `Split`).

    An output row is kept only when it is the only output row of its key, its input hash
    equals the source row's, and it has no error (a failed row is retried, as a full refresh
    would). A key whose output row sits in another partition than its source row now is
    deleted there and written in its new partition.

    Args:
        source: the region's source rows (passthrough and input columns, `input_hash`).
        output: the region's output rows (all output columns).
        key: the row key.
        passthrough_columns: key, partition and passthrough columns (from the source).
        partition_columns: the partition columns (a subset of the passthrough columns).
        output_columns: the columns the model and lineage produce (from the output).
        rescore_model_uri: when set, output rows scored by another model are rescored
            (`model.on_change: rescore`, after a backfill with another model).
    """
    ranked = output.withColumn(
        "__n", F.count(F.lit(1)).over(Window.partitionBy(col(key)))
    ).withColumn(
        "__rank",
        F.row_number().over(Window.partitionBy(col(key)).orderBy(col(SCORED_AT).desc_nulls_last(), col(RUN_ID))),
    )
    prev = ranked.select(
        col(key).alias("__key"),
        F.col("__n"),
        F.col("__rank"),
        *[col(c).alias(f"__prev_{c}") for c in (*passthrough_columns, *output_columns, INPUT_HASH)],
    )
    newest = prev.filter(F.col("__rank") == 1)
    joined = source.join(newest, col(key) == F.col("__key"), "left")
    clean = (
        F.col("__key").isNotNull()
        & (F.col("__n") == 1)
        & F.col(f"__prev_{INPUT_HASH}").eqNullSafe(col(INPUT_HASH))
        & F.col(f"__prev_{ERROR}").isNull()
    )
    if rescore_model_uri is not None:
        clean = clean & F.col(f"__prev_{MODEL_URI}").eqNullSafe(F.lit(rescore_model_uri))
    clean = F.coalesce(clean, F.lit(False))  # never let a null drop a row from both sides
    same_values = F.lit(True)
    for c in passthrough_columns:
        same_values = same_values & F.col(f"__prev_{c}").eqNullSafe(col(c))
    to_score = joined.filter(~clean).select(*[col(c) for c in source.columns])
    kept = joined.filter(clean & ~same_values).select(
        *[col(c) for c in passthrough_columns],
        *[F.col(f"__prev_{c}").alias(c) for c in output_columns],
        col(INPUT_HASH),
    )
    unchanged = joined.filter(clean & same_values).select(col(key))
    # Output rows to delete: every row of a key the source no longer has in this region;
    # every extra row of a duplicated key; a row whose key moved to another partition.
    src_keys = source.select(col(key).alias("__src_key"), *[col(p).alias(f"__src_{p}") for p in partition_columns])
    with_src = prev.join(src_keys, F.col("__key") == F.col("__src_key"), "left")
    moved = F.lit(False)
    for p in partition_columns:
        moved = moved | ~F.col(f"__prev_{p}").eqNullSafe(F.col(f"__src_{p}"))
    gone = F.col("__src_key").isNull() | (F.col("__n") > 1) | moved
    deletes = with_src.filter(gone).select(
        F.col("__key").alias(key), *[F.col(f"__prev_{p}").alias(p) for p in partition_columns]
    ).distinct()
    return Split(to_score, kept, deletes, unchanged)
