"""Run orchestration: one nightly run, a backfill, or a status query.

A run reads top to bottom:

open    start the session, pin the source version, check its schema, resolve the model
        (`context.open_run`: the frozen `RunContext` every later step reads);
plan    read the watermark from the output table's Delta log and decide what changed
        (`incremental.make_plan`), then split the affected rows into rows to score and
        rows to carry over;
score   score the rows on the executors, keep the result, count failures;
commit  check the error budget, then replace exactly the affected output partitions in ONE
        Delta commit that also records the new watermark and the run's metadata.

Nothing is published before the commit, so a crash, a failed budget check or a lost race
with another run leaves the output exactly as it was. Each step is timed (`Phases`) and
logged to MLflow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, TypeVar

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_scoring import budget, checks, planner, plots, report, rows, udf
from spark_scoring import incremental as inc
from spark_scoring.config import JobConfig
from spark_scoring.context import RunContext, open_run, with_session
from spark_scoring.contract import (
    MODE_BACKFILL,
    MODE_FULL_REFRESH,
    MODE_RUN,
    MODEL_URI,
    MODEL_VERSION,
    RUN_ID,
    SCORED_AT,
    SOURCE_VERSION,
    CommitRecord,
    output_columns,
)
from spark_scoring.errors import (
    ErrorBudgetExceeded,
    ScoringError,
    TrackingError,
    UsageError,
    first_line,
    from_spark,
)
from spark_scoring.incremental import Plan
from spark_scoring.lakehouse import WriteResult
from spark_scoring.progress import Progress
from spark_scoring.report import RunResult
from spark_scoring.session import default_parallelism
from spark_scoring.tracking import RunTracker, close_stale_run

log = logging.getLogger(__name__)

T = TypeVar("T")


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------


def run(
    cfg: JobConfig,
    *,
    full_refresh: bool = False,
    dry_run: bool = False,
    spark: SparkSession | None = None,
) -> RunResult:
    """One nightly run: score what changed since the watermark and publish atomically.

    Returns:
        The RunResult; status "nothing-to-do" means no commit was made.

    Raises:
        ScoringError: the run failed and nothing was published (exit code 1), or
        UsageError/ConfigError for bad input (exit code 2).
    """
    ctx = open_run(cfg, spark)
    _close_stale_run(ctx)
    with ctx.phases.phase("plan"):
        plan = planner.plan_run(ctx, full_refresh=full_refresh)
    log.info("plan: %s", plan.reason)
    plan = replace(plan, mode=MODE_FULL_REFRESH if full_refresh else MODE_RUN)
    return _execute(ctx, plan, dry_run=dry_run)


def backfill(
    cfg: JobConfig,
    partitions: Sequence[Mapping[str, str | None]] = (),
    *,
    between: tuple[str, str] | None = None,
    dry_run: bool = False,
    spark: SparkSession | None = None,
) -> RunResult:
    """Rescore every row of the given partitions, at the source version of the last nightly run.

    Args:
        partitions: partitions to rescore, each a value (Delta string form) per partition column.
        between: alternatively, an inclusive (low, high) range on the FIRST partition column;
            every source partition whose value falls inside is rescored.

    A backfill never moves the nightly watermark (it records no SetTransaction), so the
    next nightly run still picks up every source change since its own watermark.
    """
    if not cfg.source.partition_by:
        raise UsageError(f"backfill needs a partitioned source; {cfg.source.table!r} has no source.partition_by")
    if not partitions and between is None:
        raise UsageError("backfill needs partitions: --partition col=value (repeatable) or --from LOW --to HIGH")
    ctx = open_run(cfg, spark)
    with ctx.phases.phase("plan"):
        # Rescore at the source version the nightly output reflects, not the newest one:
        # otherwise a row that moved partition since then would exist twice until the next
        # nightly run (which then brings the rest of the table forward).
        ctx = replace(ctx, source_version=planner.backfill_version(ctx))
        wanted = _backfill_partitions(ctx, partitions, between)
        planner.check_readable(ctx, wanted)
    plan = Plan(
        "backfill" if ctx.output_exists else "full",
        source_version=ctx.source_version,
        output_version=ctx.output_version,
        partitions=tuple(wanted),
        reason=f"backfill of {len(wanted)} partition(s) at source version {ctx.source_version}",
        mode=MODE_BACKFILL,
        record_watermark=False,
    )
    return _execute(ctx, plan, dry_run=dry_run)


def status(cfg: JobConfig, *, spark: SparkSession | None = None) -> dict[str, Any]:
    """Watermark, pending source versions and the last runs of a job, as plain data."""
    ctx = open_run(cfg, spark)
    lake, out = ctx.lake, cfg.output.table
    found = planner.last_nightly(lake.log(out), cfg.name, ctx.output_version) if ctx.output_exists else None
    app = found[1].app_id if found and found[1].app_id else inc.app_id(cfg.name, ctx.identity)
    watermark = lake.transaction_version(out, app) if ctx.output_exists else None
    runs = []
    for commit in lake.history(out, limit=50) if ctx.output_exists else []:
        record = CommitRecord.from_metadata(commit.metadata)
        if record is None or record.job != cfg.name:
            continue
        runs.append(
            {
                "output_version": commit.version,
                "timestamp": commit.timestamp.isoformat() if commit.timestamp else None,
                "mode": record.mode,
                "run_id": record.run_id,
                "source_version": record.source_version,
                "model_uri": record.model_uri,
                "rows_scored": record.rows_scored,
                "rows_carried": record.rows_carried,
                "rows_failed": record.rows_failed,
            }
        )
    return {
        "job": cfg.name,
        "source_table": cfg.source.table,
        "source_version": ctx.source_version,
        "output_table": out,
        "output_exists": ctx.output_exists,
        "output_version": ctx.output_version,
        "model_uri": ctx.model.resolved_uri,
        "model_identity": ctx.identity,
        "app_id": app,
        "watermark": watermark,
        "pending_source_versions": None if watermark is None else max(0, ctx.source_version - watermark),
        "lakehouse_engine": lake.engine if ctx.spark is not None else ctx.cfg.lakehouse.engine,
        "last_runs": runs[:10],
    }


# --------------------------------------------------------------------------------------
# Backfill partitions
# --------------------------------------------------------------------------------------


def _backfill_partitions(
    ctx: RunContext, partitions: Sequence[Mapping[str, str | None]], between: tuple[str, str] | None
) -> list[dict[str, str | None]]:
    """The distinct partitions a backfill rescores, each with a value for every partition column."""
    by = ctx.cfg.source.partition_by
    wanted = [dict(p) for p in partitions]
    if between is not None:
        wanted += _partitions_between(ctx, *between)
        if not wanted:
            raise UsageError(f"no source partition has {by[0]} between {between[0]!r} and {between[1]!r}")
    wanted = list({tuple(sorted(p.items(), key=str)): p for p in wanted}.values())
    for p in wanted:
        if set(p) != set(by):
            raise UsageError(f"backfill partition {p} must give a value for each partition column {list(by)}")
    return wanted


def _partitions_between(ctx: RunContext, low: str, high: str) -> list[dict[str, str | None]]:
    """Source partitions whose first partition value lies in [low, high] (numbers compared as numbers)."""
    by = ctx.cfg.source.partition_by

    def as_key(v: str) -> tuple[int, float | str]:
        try:
            return (0, float(v))
        except ValueError:
            return (1, v)

    lo, hi = as_key(low), as_key(high)
    found: dict[tuple, dict[str, str | None]] = {}
    for f in ctx.lake.files(ctx.cfg.source.table, ctx.source_version):
        value = f.partition_values.get(by[0])
        if value is not None and lo <= as_key(value) <= hi:
            values = {c: f.partition_values.get(c) for c in by}
            found.setdefault(tuple(values.items()), values)
    return list(found.values())


# --------------------------------------------------------------------------------------
# Plan -> score -> commit
# --------------------------------------------------------------------------------------


def _close_stale_run(ctx: RunContext) -> None:
    """End the MLflow run of the output's last commit if a killed process left it RUNNING."""
    if not ctx.output_exists or ctx.output_version is None:
        return
    record = CommitRecord.from_metadata(ctx.lake.history(ctx.cfg.output.table, limit=1)[0].metadata)
    with ctx.phases.phase("mlflow"):
        close_stale_run(ctx.cfg, record, output_version=ctx.output_version)


def _execute(ctx: RunContext, plan: Plan, *, dry_run: bool) -> RunResult:
    result = RunResult.planned(ctx, plan)
    if plan.kind == "nothing":
        result.status = "dry-run" if dry_run else result.status
        result.seconds = ctx.phases.total()
        return result  # decided from the logs: no session was needed
    ctx = with_session(ctx)
    with ctx.phases.phase("read"):
        work = rows.gather(ctx, plan)
        if dry_run:
            result.rows_scored = work.to_score.count()
            result.rows_carried = _carried(work)
            result.rows_read = result.rows_scored + result.rows_carried
            result.status = "dry-run"
    if dry_run:
        result.seconds = ctx.phases.total()
        return result

    tracker = RunTracker(ctx.cfg)
    with tracker:
        result.run_id = tracker.run_id
        tracker.log_params(report.params(ctx, plan))
        tracker.log_config(ctx.cfg)
        try:
            _score_and_commit(ctx, plan, work, tracker, result)
        except BaseException:
            result.seconds = ctx.phases.total()
            if result.status != "published":
                _record(tracker, result, failing=True)
                raise
            # The commit landed: whatever failed afterwards (recording, cleaning up, even an
            # interrupt) cannot unpublish it, so it is a warning and the exit code stays 0.
            log.warning("output version %s is published, but the run failed afterwards",
                        result.output_version, exc_info=True)
        result.seconds = ctx.phases.total()
        _record(tracker, result, failing=False)
    return result


def _score_and_commit(ctx: RunContext, plan: Plan, work: rows.Work, tracker: RunTracker, result: RunResult) -> None:
    cfg, spark, phases = ctx.cfg, ctx.spark, ctx.phases
    with phases.phase("load"):
        spec = udf.prepare_model(spark, model_dir=ctx.model.local_dir, model_uri=ctx.model.resolved_uri,
                                 model_cfg=cfg.model, identity=ctx.identity)
    # Spread the rows evenly over the cores, one partition per core: length sorting works
    # inside a partition, so bigger partitions pack tighter batches (measured on 2 cores,
    # 2,000 texts: 4 partitions per core gave padding efficiency 0.76 and 149 rows/s, one
    # per core 0.93 and 195 rows/s).
    # Ranges of keys (within partitions), not random rows: the files the commit writes then
    # hold narrow key ranges, so later nights read and rewrite few of them.
    cores = default_parallelism(spark)  # classic and Spark Connect sessions alike
    parallelism = cfg.run.num_partitions or cores
    by_range = [inc.col(c) for c in (*cfg.source.partition_by, cfg.source.key)]
    to_score = work.to_score.repartitionByRange(parallelism, *by_range)
    # stats=True: the scoring counters ride along in udf.STATS_COLUMN (no accumulators: Spark
    # Connect has none); every frame made from `scored` below selects its own columns.
    scored = _with_lineage(udf.score(to_score, spec, stats=True), ctx, tracker.run_id)
    # Both frames are used several times (counts, error summary, the write): compute once.
    scored = scored.persist(StorageLevel.MEMORY_AND_DISK)
    kept = work.kept
    if kept is not None:
        # The join behind `kept` ends in spark.sql.shuffle.partitions (200 by default)
        # tiny partitions: merged here, so the write makes a few files, not hundreds.
        kept = kept.coalesce(cores).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        with phases.phase("score"):
            _score(ctx, scored, result)
        with phases.phase("commit"):
            result.rows_carried = _carried(rows.Work(work.to_score, kept, work.deletes, work.unchanged))
            result.rows_read = result.rows_scored + result.rows_carried
            failures = budget.Failures(result.rows_scored, result.rows_failed, result.top_errors)
            refused = budget.over_budget(cfg.errors, failures)
            if refused:
                if cfg.errors.quarantine_table:
                    budget.quarantine(ctx, scored)
                raise ErrorBudgetExceeded(refused)
            final = _output_frame(ctx, scored, kept, spec)
            written_rows = result.rows_scored + (kept.count() if kept is not None else 0)  # kept is persisted
            final = _bounded_files(ctx, final, rows=written_rows, partitions=parallelism)
            written = _commit(ctx, plan, final, work.deletes, report.commit_record(ctx, plan, tracker.run_id, result))
        if written.version is None:  # the lakehouse found this exact commit already made
            result.status = "nothing-to-do"
            result.plan += "; skipped: this source version was already committed for this model"
            return
        result.output_version = written.version
        result.status = "published"
        log.info("published output version %s: %d scored, %d carried, %d failed",
                 written.version, result.rows_scored, result.rows_carried, result.rows_failed)
        _after_commit(ctx, tracker, scored, result)
    finally:
        scored.unpersist()
        if kept is not None:
            kept.unpersist()


def _carried(work: rows.Work) -> int:
    """Rows whose predictions the run keeps: rewritten ones and ones left as they are."""
    return sum(df.count() for df in (work.kept, work.unchanged) if df is not None)


def _score(ctx: RunContext, scored: DataFrame, result: RunResult) -> None:
    """Run the scoring job (counting rows, failures and the scoring counters in the same
    action) and record its figures in `result`."""
    with Progress(ctx.spark, "scoring", enabled=ctx.cfg.run.progress) as progress:
        stats = _run_spark(lambda: udf.collect_stats(scored), ctx.model.resolved_uri)
        progress.rows_done(stats.rows)
    result.rows_scored, result.rows_failed = stats.rows, stats.rows_failed
    result.padding_efficiency = stats.padding_efficiency
    result.batches = stats.batches
    result.model_loads = stats.model_loads
    # Summed over the scoring tasks (side by side, so they can exceed the phase's wall time).
    result.worker_seconds = {"prepare": round(stats.prepare_seconds, 3), "model": round(stats.model_seconds, 3)}
    result.top_errors = budget.top_errors(scored, ctx.cfg.source.key) if result.rows_failed else []


def _bounded_files(ctx: RunContext, rows_out: DataFrame, *, rows: int, partitions: int) -> DataFrame:
    """`rows_out` spread over enough key ranges that no written file holds much more than
    `output.max_rows_per_file` rows (each write task writes one file per output partition).

    Only when the scoring partitions are too few for that: a small night is not reshuffled.
    """
    wanted = -(-rows // ctx.cfg.output.max_rows_per_file)
    if wanted <= partitions:
        return rows_out
    return rows_out.repartitionByRange(wanted, *[inc.col(c) for c in (*ctx.cfg.source.partition_by, ctx.cfg.source.key)])


def _commit(
    ctx: RunContext, plan: Plan, rows_out: DataFrame, deletes: DataFrame | None, record: CommitRecord
) -> WriteResult:
    """ONE commit: the rows, what they replace, the watermark and the metadata."""
    cfg = ctx.cfg
    by = cfg.source.partition_by
    # Sorted by partition, then key: each write task keeps one file open at a time, and the
    # output files get narrow key ranges, which is what lets later nights touch few of them.
    ordered = rows_out.sortWithinPartitions(*[inc.col(c) for c in (*by, cfg.source.key)])
    return ctx.lake.write(
        ordered,
        cfg.output.table,
        mode=plan.write_mode,
        partition_by=by,
        partitions=plan.partitions or (),
        expected_version=ctx.output_version if ctx.output_exists else None,
        app_id=plan.app_id if plan.record_watermark else None,
        txn_version=ctx.source_version if plan.record_watermark else None,
        metadata=record.to_metadata(),
        key=cfg.source.key if plan.kind == "upsert" else None,
        deletes=deletes if plan.kind == "upsert" else None,
        # The last line of defence behind config's overlap check (catalog names included).
        protected=[t for t in (cfg.source.table, cfg.errors.quarantine_table) if t],
    )


def _after_commit(ctx: RunContext, tracker: RunTracker, scored: DataFrame, result: RunResult) -> None:
    """Record what was published. The data is out: a failure here is a warning, never "run failed"."""
    version = result.output_version
    try:
        with ctx.phases.phase("mlflow"):
            tracker.set_output_version(version)
        if result.rows_failed and ctx.cfg.errors.quarantine_table:
            with ctx.phases.phase("quarantine"):
                budget.quarantine(ctx, scored)
        with ctx.phases.phase("plot"):
            found = plots.distribution_values(scored)
            if found is not None and found[0].size:
                values, kind = found
                tracker.log_distribution(values, kind=kind,
                                         title=f"{ctx.cfg.name}: {kind} of {values.size:,} rows, output v{version}")
    except Exception:  # noqa: BLE001 - see above
        log.warning("output version %s is published, but recording it afterwards failed", version, exc_info=True)


def _record(tracker: RunTracker, result: RunResult, *, failing: bool) -> None:
    """Log the run's metrics and report; never let a tracking failure hide the run's own error."""
    try:
        tracker.log_metrics(report.metrics(result))
        tracker.log_report(result.to_dict())
    except TrackingError:
        if not failing:
            raise
        log.warning("could not record the failed run's metrics in MLflow", exc_info=True)


def _run_spark(action: Callable[[], T], model_uri: str) -> T:
    """Run a Spark action; an error raised on an executor (a model that fails to load, wrong
    model output) comes back as its own class (`errors.from_spark`)."""
    try:
        return action()
    except ScoringError:
        raise
    except Exception as exc:  # noqa: BLE001 - Py4J/Spark errors: translate what we recognise
        known = from_spark(exc)
        if known is not None:
            raise known from exc
        raise ScoringError(f"scoring failed on the executors for model {model_uri}: {first_line(exc)}") from exc


def _with_lineage(scored: DataFrame, ctx: RunContext, run_id: str) -> DataFrame:
    scored_at = datetime.now(timezone.utc)  # aware: Spark would read a naive value as local time
    return (
        scored.withColumn(MODEL_URI, F.lit(ctx.model.resolved_uri))
        .withColumn(MODEL_VERSION, F.lit(ctx.model.version).cast("string"))
        .withColumn(RUN_ID, F.lit(run_id))
        .withColumn(SCORED_AT, F.lit(scored_at).cast("timestamp"))
        .withColumn(SOURCE_VERSION, F.lit(ctx.source_version).cast("long"))
    )


def _output_frame(ctx: RunContext, scored: DataFrame, carried: DataFrame | None, spec: udf.ModelSpec) -> DataFrame:
    """The rows to publish, in the contract's column order."""
    columns = output_columns(checks.passthrough_columns(ctx.cfg), [f.name for f in udf.output_fields(spec)])
    final = scored.select(*columns)
    if carried is not None:
        final = final.unionByName(carried.select(*columns))
    return final
