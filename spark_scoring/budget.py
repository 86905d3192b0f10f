"""The error budget and the quarantine table.

Rows that fail to score keep an `error` and a null prediction; the budget
(`errors.max_error_rate`, `errors.max_errors`) decides, before anything is written,
whether the run may publish. Failed rows can be kept in a quarantine table for inspection.
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
        .agg(F.count(F.lit(1)).alias("rows"), F.slice(F.collect_list(F.col(key).cast("string")), 1, 5).alias("sample_keys"))
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


def quarantine(ctx: RunContext, scored: DataFrame) -> None:
    """Append the failed rows of `scored` to the quarantine table (its own commit)."""
    cfg, lake = ctx.cfg, ctx.lake
    table = cfg.errors.quarantine_table
    if table is None:
        raise ValueError("quarantine() needs errors.quarantine_table")  # invariant: callers check
    cols = [*passthrough_columns(cfg), *cfg.model.input, ERROR, RUN_ID, SCORED_AT, SOURCE_VERSION]
    failed = scored.filter(F.col(ERROR).isNotNull()).select(*dict.fromkeys(cols))
    exists = lake.exists(table)
    lake.write(
        failed, table, mode="append",
        expected_version=lake.latest_version(table) if exists else None,
        metadata=CommitRecord(job=cfg.name, mode=MODE_QUARANTINE).to_metadata(),
    )
    log.warning("failed rows appended to quarantine table %s", table)
