"""The error budget and the quarantine table.

Rows that fail to score keep an `error` and a null prediction; the budget
(`errors.max_error_rate`, `errors.max_errors`) decides, before anything is written,
whether the run may publish. Failed rows can be kept in a quarantine table for inspection.

The quarantine table gets each source version's failed rows once: its commits record a
SetTransaction (`quarantine_app_id`) whose version is the source version, so a rerun at
that version (over its budget again, or published after the budget was raised) finds
them there and appends nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_scoring.checks import passthrough_columns
from spark_scoring.config import ErrorsConfig
from spark_scoring.context import RunContext
from spark_scoring.contract import (
    ERROR,
    MODE_QUARANTINE,
    RUN_ID,
    SCORED_AT,
    SOURCE_VERSION,
    CommitRecord,
)
from spark_scoring.incremental import col

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failures:
    """How many scored rows failed, and the commonest reasons (with sample keys)."""

    scored: int
    failed: int
    top: Sequence[dict[str, Any]] = ()

    @property
    def rate(self) -> float:
        return self.failed / self.scored if self.scored else 0.0


def top_errors(scored: DataFrame, key: str, limit: int = 5) -> list[dict[str, Any]]:
    """The commonest error messages: `{"error", "rows", "sample_keys"}`, most rows first."""
    rows = (
        scored.filter(F.col(ERROR).isNotNull())
        .groupBy(ERROR)
        .agg(F.count(F.lit(1)).alias("rows"), F.slice(F.collect_list(col(key).cast("string")), 1, 5).alias("sample_keys"))
        .orderBy(F.desc("rows"))
        .limit(limit)
        .collect()
    )
    return [{"error": r[ERROR], "rows": int(r["rows"]), "sample_keys": list(r["sample_keys"])} for r in rows]


def over_budget(errors: ErrorsConfig, failures: Failures) -> str | None:
    """None within the error budget, else the message saying how many rows failed, why and which."""
    if not failures.failed:
        return None
    over_rate = failures.rate > errors.max_error_rate
    over_count = errors.max_errors is not None and failures.failed > errors.max_errors
    if not (over_rate or over_count):
        log.warning("%d of %d rows failed (%.2f%%), within the error budget",
                    failures.failed, failures.scored, 100 * failures.rate)
        return None
    limits = f"errors.max_error_rate={errors.max_error_rate}"
    if errors.max_errors is not None:
        limits += f", errors.max_errors={errors.max_errors}"
    lines = [
        f"{failures.failed} of {failures.scored} scored rows failed ({100 * failures.rate:.2f}%), over the error "
        f"budget ({limits}). Nothing was published; the output table is unchanged.",
        "Most common errors:",
    ]
    for e in failures.top:
        lines.append(f"  {e['rows']:>6} x {e['error']}  (keys: {', '.join(e['sample_keys'])})")
    lines.append(
        "Fix the inputs or the model and rerun"
        + (f"; failed rows are in {errors.quarantine_table}" if errors.quarantine_table else
           "; set errors.quarantine_table to keep the failed rows for inspection")
        + ", or raise the budget if these failures are expected."
    )
    return "\n".join(lines)


def quarantine_app_id(ctx: RunContext) -> str:
    """The SetTransaction app id of a job's quarantine writes: per job, model identity and
    source table (a recreated source is another table, whose versions start again at 0)."""
    return f"spark-scoring-quarantine:{ctx.cfg.name}:{ctx.identity}:{ctx.source_table_id}"


def quarantine(ctx: RunContext, scored: DataFrame) -> bool:
    """Append the failed rows of `scored` to the quarantine table, once per source version.

    One commit of its own, recording (`quarantine_app_id`, the source version); when that
    version is already recorded, nothing is written.

    Returns:
        True when rows were appended; False when this source version's failures were
        already there.
    """
    cfg, lake = ctx.cfg, ctx.lake
    table = cfg.errors.quarantine_table
    if table is None:
        raise ValueError("quarantine() needs errors.quarantine_table")  # invariant: callers check
    cols = dict.fromkeys([*passthrough_columns(cfg), *cfg.model.input, ERROR, RUN_ID, SCORED_AT, SOURCE_VERSION])
    failed = scored.filter(F.col(ERROR).isNotNull()).select(*[col(c) for c in cols])
    latest = lake.latest_version(table) if lake.exists(table) else None
    if latest is not None:
        failed = _not_yet_quarantined(ctx, failed, table, latest)
    written = lake.write(
        failed, table, mode="append",
        expected_version=latest,
        app_id=quarantine_app_id(ctx), txn_version=ctx.source_version,
        protected=[cfg.source.table, cfg.output.table],
        metadata=CommitRecord(job=cfg.name, mode=MODE_QUARANTINE, source_version=ctx.source_version,
                              source_table_id=ctx.source_table_id, model_identity=ctx.identity).to_metadata(),
    )
    if written.version is None:
        log.warning("the failed rows of source version %s are already in quarantine table %s",
                    ctx.source_version, table)
        return False
    log.warning("failed rows appended to quarantine table %s (version %s)", table, written.version)
    return True


def _not_yet_quarantined(ctx: RunContext, failed: DataFrame, table: str, version: int) -> DataFrame:
    """The failed rows the quarantine table does not hold yet: a row that fails again with
    the same key, inputs and error (retried by a later night, or a rerun at a newer source
    version after an over-budget run) is already there, with the version it first failed at."""
    same = [ctx.cfg.source.key, *dict.fromkeys(ctx.cfg.model.input), ERROR]
    # Positional names for the table's side: no clash with (or ambiguity about) user names.
    seen = ctx.lake.read(table, version, columns=same).toDF(*[f"__quarantined_{i}" for i in range(len(same))])
    match = [col(c).eqNullSafe(F.col(f"__quarantined_{i}")) for i, c in enumerate(same)]
    return failed.join(seen, on=match, how="left_anti")
