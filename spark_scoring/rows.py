"""The rows a plan reads, and how they split into rows to score, keep and delete.

One function per plan kind, each reading as little as the plan allows:

* full and backfill: every source row (of the backfilled partitions), all scored;
* append: only the rows of the source files the night added; their keys must be new to
  the output (looked up in the output files whose key statistics can hold them);
* upsert: the source and output rows of the plan's region (partitions and key ranges,
  read from only the files whose statistics overlap it), compared key by key
  (`incremental.reconcile`).

Every mode makes the checks a full refresh makes: no null key, no key twice in the source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import DataFrame

from spark_scoring import checks
from spark_scoring import incremental as inc
from spark_scoring.context import RunContext
from spark_scoring.contract import INPUT_HASH
from spark_scoring.incremental import Plan
from spark_scoring.lakehouse import keyranges
from spark_scoring.lakehouse.deltalog import FileAction


@dataclass(frozen=True)
class Work:
    """What one run writes.

    Attributes:
        to_score: source rows to score (passthrough and input columns, `input_hash`).
        kept: output rows rewritten with their predictions (upsert only), or None.
        deletes: key and partition columns of output rows that leave the table (upsert
            only), or None.
        unchanged: keys whose output rows stay as they are (upsert only), or None.
    """

    to_score: DataFrame
    kept: DataFrame | None = None
    deletes: DataFrame | None = None
    unchanged: DataFrame | None = None


def gather(ctx: RunContext, plan: Plan) -> Work:
    """The rows of `plan` (see the module docstring)."""
    if plan.kind == "append":
        return _append(ctx, plan)
    if plan.kind == "upsert":
        return _upsert(ctx, plan)
    return _everything(ctx, plan)


def _source(ctx: RunContext, **read) -> DataFrame:
    cfg = ctx.cfg
    rows = ctx.lake.read(cfg.source.table, ctx.source_version, columns=checks.source_columns(cfg), **read)
    return rows.withColumn(INPUT_HASH, inc.input_hash(cfg.model.input))


def _everything(ctx: RunContext, plan: Plan) -> Work:
    cfg = ctx.cfg
    source = _source(ctx, partitions=plan.partitions)
    # A backfill sees only some partitions; a key must also be unique across the rest.
    everywhere = None
    if plan.partitions is not None:
        everywhere = ctx.lake.read(cfg.source.table, ctx.source_version, columns=[cfg.source.key])
    checks.check_unique_keys(cfg, source, everywhere)
    return Work(source)


def _append(ctx: RunContext, plan: Plan) -> Work:
    cfg = ctx.cfg
    checks.check_output_schema(
        cfg, ctx.lake.schema(cfg.source.table, ctx.source_version), ctx.lake.schema(cfg.output.table, ctx.output_version)
    )
    source = _source(ctx, files=[f.key for f in plan.added_files])
    checks.check_unique_keys(cfg, source)
    key_type = _key_type(ctx)
    ranges = [keyranges.file_range(f, cfg.source.key, (), key_type) for f in plan.added_files]
    checks.check_new_keys(cfg, source, _output_keys(ctx, ranges))
    return Work(source)


def _upsert(ctx: RunContext, plan: Plan) -> Work:
    cfg, lake = ctx.cfg, ctx.lake
    checks.check_output_schema(
        cfg, lake.schema(cfg.source.table, ctx.source_version), lake.schema(cfg.output.table, ctx.output_version)
    )
    source = _region_rows(ctx, cfg.source.table, ctx.source_version, plan.region, checks.source_columns(cfg))
    source = source.withColumn(INPUT_HASH, inc.input_hash(cfg.model.input))
    checks.check_unique_keys(cfg, source)
    output = _region_rows(ctx, cfg.output.table, ctx.output_version, plan.region, None)
    passthrough = checks.passthrough_columns(cfg)
    fixed = {*passthrough, INPUT_HASH}
    out_schema = lake.schema(cfg.output.table, ctx.output_version)
    split = inc.reconcile(
        source,
        output,
        key=cfg.source.key,
        passthrough_columns=passthrough,
        partition_columns=cfg.source.partition_by,
        output_columns=[f.name for f in out_schema.fields if f.name not in fixed],
        rescore_model_uri=ctx.model.resolved_uri if cfg.model.on_change == "rescore" else None,
    )
    if plan.region is not None:
        # A key new to the region must not be anywhere else in the output either (it would
        # then be in the source twice: the output holds every source key of the watermark).
        new = split.to_score.join(output.select(inc.col(cfg.source.key)), cfg.source.key, "left_anti")
        anywhere = [keyranges.KeyRange(None, r.low, r.high) for r in plan.region]
        checks.check_new_keys(cfg, new, _output_keys(ctx, anywhere, outside=plan.region))
    return Work(split.to_score, split.kept, split.deletes, split.unchanged)


def _snapshot_files(ctx: RunContext, table: str, version: int) -> list[FileAction]:
    return list(ctx.lake.log(table).snapshot(version).files.values())


def _key_type(ctx: RunContext) -> str:
    return ctx.lake.schema(ctx.cfg.source.table, ctx.source_version)[ctx.cfg.source.key].dataType.simpleString()


def _files_in(ctx: RunContext, table: str, version: int, region: Sequence[keyranges.KeyRange]) -> list[FileAction]:
    cfg = ctx.cfg
    return keyranges.files_overlapping(
        _snapshot_files(ctx, table, version), cfg.source.key, cfg.source.partition_by, region, _key_type(ctx)
    )


def _region_rows(
    ctx: RunContext, table: str, version: int, region: Sequence[keyranges.KeyRange] | None, columns: list[str] | None
) -> DataFrame:
    """The rows of `region` (None: all rows), read from only the files that can hold them."""
    if region is None:
        return ctx.lake.read(table, version, columns=columns)
    files = _files_in(ctx, table, version, region)
    rows = ctx.lake.read(table, version, files=[f.key for f in files], columns=columns)
    return rows.filter(inc.region_predicate(region, ctx.cfg.source.key, rows.schema))


def _output_keys(
    ctx: RunContext, ranges: Sequence[keyranges.KeyRange], outside: Sequence[keyranges.KeyRange] | None = None
) -> DataFrame | None:
    """The output's keys in the files whose statistics overlap `ranges`, leaving out the
    rows of region `outside` (None when no output file can hold such a key)."""
    if not ctx.output_exists or not ranges:
        return None
    cfg = ctx.cfg
    key = cfg.source.key
    files = keyranges.files_overlapping(
        _snapshot_files(ctx, cfg.output.table, ctx.output_version), key, cfg.source.partition_by, ranges, _key_type(ctx)
    )
    if not files:
        return None
    keys = ctx.lake.read(cfg.output.table, ctx.output_version, files=[f.key for f in files],
                         columns=[key, *cfg.source.partition_by])
    if outside is not None:
        keys = keys.filter(~inc.region_predicate(outside, key, keys.schema))
    return keys.select(inc.col(key))
