"""Run orchestration: one nightly run, a backfill, or a status query.

A run goes through four phases, each timed and logged to MLflow:

plan    pin the source version, check schemas, read the watermark from the output
        table's Delta log, find the affected partitions and split their rows into rows
        to score and rows to carry over;
load    resolve the model once on the driver (an alias is pinned for the whole run) and
        ship it to executors;
score   score the rows on the executors, keep the result, check the error budget;
commit  replace exactly the affected output partitions in ONE Delta commit that also
        records the new watermark and the run's metadata.

Nothing is published before the commit, so a crash, a failed budget check or a lost
race with another run leaves the output exactly as it was.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, StringType, StructType

from spark_scoring import incremental as inc
from spark_scoring import udf
from spark_scoring.config import JobConfig
from spark_scoring.errors import (
    ErrorBudgetExceeded,
    SchemaDriftError,
    ScoringError,
    TrackingError,
    UsageError,
    first_line,
    from_spark,
)
from spark_scoring.incremental import INPUT_HASH, META, Plan
from spark_scoring.lakehouse import Lakehouse, open_lakehouse
from spark_scoring.models.resolve import ResolvedModel, resolve_model
from spark_scoring.models.tasks import task_spec
from spark_scoring.progress import Progress
from spark_scoring.session import get_spark
from spark_scoring.tracking import RunTracker

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run did; also what the CLI prints and MLflow records."""

    job: str
    status: str  # "published" | "nothing-to-do" | "dry-run"
    mode: str
    plan: str
    run_id: str | None = None
    output_table: str = ""
    output_version: int | None = None
    source_version: int | None = None
    source_version_start: int | None = None
    model_uri: str | None = None
    model_version: str | None = None
    partitions: int | None = None
    rows_read: int = 0
    rows_scored: int = 0
    rows_carried: int = 0
    rows_failed: int = 0
    padding_efficiency: float | None = None
    batches: int = 0
    model_loads: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    top_errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        """Scoring throughput: rows scored per second of the score phase."""
        s = self.seconds.get("score", 0.0)
        return self.rows_scored / s if s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for JSON output and the run report."""
        d = asdict(self)
        d["rows_per_second"] = round(self.rows_per_second, 2)
        return d


class _Phases:
    """Times named phases of a run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t0 = time.monotonic()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.monotonic() - t, 3)

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": round(time.monotonic() - self._t0, 3)}


@dataclass(frozen=True)
class _Context:
    """What every phase needs, made once at the start of a run."""

    cfg: JobConfig
    spark: SparkSession
    lake: Lakehouse
    source_version: int
    source_table_id: str
    output_exists: bool
    output_version: int | None


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
    phases = _Phases()
    with phases.phase("plan"):
        ctx = _open(cfg, spark)
    with phases.phase("load"):
        resolved = _resolve(cfg)
    identity = inc.model_identity(resolved.model_hash, cfg.model.options, cfg.model.precision)
    app = inc.app_id(cfg.name, identity)
    with phases.phase("plan"):
        watermark = ctx.lake.transaction_version(cfg.output.table, app) if ctx.output_exists else None
        history = ctx.lake.history(cfg.output.table, limit=200) if ctx.output_exists else []
        plan = inc.make_plan(
            ctx.lake,
            source_table=cfg.source.table,
            partition_by=cfg.source.partition_by,
            source_version=ctx.source_version,
            output_exists=ctx.output_exists,
            output_version=ctx.output_version,
            watermark=watermark,
            previous=inc.last_job_commit(history, cfg.name),
            identity=identity,
            on_change=cfg.model.on_change,
            full_refresh=full_refresh,
            source_table_id=ctx.source_table_id,
        )
    mode = "full-refresh" if full_refresh else "run"
    log.info("plan: %s", plan.reason)
    # A full refresh at the version already recorded keeps the watermark as it is: recording
    # it again would make the lakehouse (and Delta's txnVersion rule) skip the write.
    record = watermark is None or watermark < ctx.source_version
    return _execute(ctx, plan, resolved, identity, app, phases, mode=mode, dry_run=dry_run, record_watermark=record)


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
    phases = _Phases()
    with phases.phase("plan"):
        ctx = _open(cfg, spark)
        if ctx.output_exists:
            # Rescore at the source version the nightly output reflects, not the newest one:
            # otherwise a row that moved partition since then would exist twice until the
            # next nightly run (which then brings the rest of the table forward).
            previous = inc.last_job_commit(ctx.lake.history(cfg.output.table, limit=200), cfg.name)
            state = inc.as_int(previous.metadata.get(META + "source_version")) if previous else None
            if state is not None and state != ctx.source_version:
                ctx = replace(ctx, source_version=state)
        wanted = [dict(p) for p in partitions]
        if between is not None:
            wanted += _partitions_between(ctx, *between)
            if not wanted:
                raise UsageError(
                    f"no source partition has {cfg.source.partition_by[0]} between {between[0]!r} and {between[1]!r}"
                )
        wanted = list({tuple(sorted(p.items(), key=str)): p for p in wanted}.values())
        for p in wanted:
            if set(p) != set(cfg.source.partition_by):
                raise UsageError(
                    f"backfill partition {p} must give a value for each partition column "
                    f"{list(cfg.source.partition_by)}"
                )
    with phases.phase("load"):
        resolved = _resolve(cfg)
    identity = inc.model_identity(resolved.model_hash, cfg.model.options, cfg.model.precision)
    plan = Plan(
        "backfill" if ctx.output_exists else "full",
        source_version=ctx.source_version,
        output_version=ctx.output_version,
        partitions=tuple(wanted),
        reason=f"backfill of {len(wanted)} partition(s) at source version {ctx.source_version}",
    )
    return _execute(
        ctx, plan, resolved, identity, inc.app_id(cfg.name, identity), phases, mode="backfill", dry_run=dry_run,
        record_watermark=False,
    )


def _partitions_between(ctx: _Context, low: str, high: str) -> list[dict[str, str | None]]:
    """Source partitions whose first partition value lies in [low, high] (numbers compared as numbers)."""
    col = ctx.cfg.source.partition_by[0]

    def as_key(v: str) -> tuple[int, float | str]:
        try:
            return (0, float(v))
        except ValueError:
            return (1, v)

    lo, hi = as_key(low), as_key(high)
    found: dict[tuple, dict[str, str | None]] = {}
    for f in ctx.lake.files(ctx.cfg.source.table, ctx.source_version):
        value = f.partition_values.get(col)
        if value is not None and lo <= as_key(value) <= hi:
            values = {c: f.partition_values.get(c) for c in ctx.cfg.source.partition_by}
            found.setdefault(tuple(values.items()), values)
    return list(found.values())


def status(cfg: JobConfig, *, spark: SparkSession | None = None) -> dict[str, Any]:
    """Watermark, pending source versions and the last runs of a job, as plain data."""
    ctx = _open(cfg, spark)
    resolved = _resolve(cfg)
    identity = inc.model_identity(resolved.model_hash, cfg.model.options, cfg.model.precision)
    app = inc.app_id(cfg.name, identity)
    watermark = ctx.lake.transaction_version(cfg.output.table, app) if ctx.output_exists else None
    history = ctx.lake.history(cfg.output.table, limit=50) if ctx.output_exists else []
    runs = []
    for c in history:
        meta = c.metadata
        if meta.get(META + "job") != cfg.name:
            continue
        runs.append(
            {
                "output_version": c.version,
                "timestamp": c.timestamp.isoformat() if c.timestamp else None,
                "mode": meta.get(META + "mode"),
                "run_id": meta.get(META + "run_id"),
                "source_version": inc.as_int(meta.get(META + "source_version")),
                "model_uri": meta.get(META + "model_uri"),
                "rows_scored": inc.as_int(meta.get(META + "rows_scored")),
                "rows_carried": inc.as_int(meta.get(META + "rows_carried")),
                "rows_failed": inc.as_int(meta.get(META + "rows_failed")),
            }
        )
    pending = None if watermark is None else max(0, ctx.source_version - watermark)
    return {
        "job": cfg.name,
        "source_table": cfg.source.table,
        "source_version": ctx.source_version,
        "output_table": cfg.output.table,
        "output_exists": ctx.output_exists,
        "output_version": ctx.output_version,
        "model_uri": resolved.resolved_uri,
        "model_identity": identity,
        "app_id": app,
        "watermark": watermark,
        "pending_source_versions": pending,
        "lakehouse_engine": ctx.lake.engine,
        "last_runs": runs[:10],
    }


# --------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------


def _open(cfg: JobConfig, spark: SparkSession | None) -> _Context:
    spark = spark or get_spark(cfg.spark, app_name=cfg.name, engine=cfg.lakehouse.engine)
    lake = open_lakehouse(spark, cfg.lakehouse.engine)
    source_version = lake.latest_version(cfg.source.table)  # pinned for the whole run
    source_table_id = lake.table_id(cfg.source.table)
    _check_source_schema(cfg, lake.schema(cfg.source.table, source_version), lake.partition_columns(cfg.source.table, source_version))
    output_exists = lake.exists(cfg.output.table)
    output_version = lake.latest_version(cfg.output.table) if output_exists else None
    log.info(
        "source %s at version %d; output %s %s; lakehouse engine %s",
        cfg.source.table, source_version, cfg.output.table,
        f"at version {output_version}" if output_exists else "(new)", lake.engine,
    )
    return _Context(cfg, spark, lake, source_version, source_table_id, output_exists, output_version)


def _check_source_schema(cfg: JobConfig, schema: StructType, partition_cols: Sequence[str]) -> None:
    """Fail before any work when the source lost a column or changed a type."""
    fields = {f.name: f.dataType for f in schema.fields}
    problems = []
    needed = [("source.key", cfg.source.key), *[("model.input", c) for c in cfg.model.input]]
    needed += [("source.partition_by", c) for c in cfg.source.partition_by]
    needed += [("source.passthrough", c) for c in cfg.source.passthrough]
    for where, col in needed:
        if col not in fields:
            problems.append(f"{where}: column {col!r} is not in the source table (columns: {', '.join(fields)})")
    if task_spec(cfg.model.task).input_kind == "text":
        for col in cfg.model.input:
            if col in fields and not isinstance(fields[col], StringType):
                problems.append(
                    f"model.input: column {col!r} has type {fields[col].simpleString()}, "
                    f"task {cfg.model.task!r} needs a string column"
                )
    if cfg.source.key in fields and isinstance(fields[cfg.source.key], (ArrayType, StructType)):
        problems.append(f"source.key: column {cfg.source.key!r} has type {fields[cfg.source.key].simpleString()}; a key must be a scalar")
    if list(partition_cols) != list(cfg.source.partition_by):
        problems.append(
            f"source.partition_by: the config says {list(cfg.source.partition_by)} but the table is "
            f"partitioned by {list(partition_cols)}; set source.partition_by to {list(partition_cols)}"
        )
    if problems:
        raise SchemaDriftError(
            f"source table {cfg.source.table!r} does not match the job config (nothing was scored or published):\n  - "
            + "\n  - ".join(problems)
        )


def _check_output_schema(cfg: JobConfig, source_schema: StructType, output_schema: StructType) -> None:
    src = {f.name: f.dataType for f in source_schema.fields}
    out = {f.name: f.dataType for f in output_schema.fields}
    problems = []
    for col in (cfg.source.key, *cfg.source.partition_by, *cfg.source.passthrough):
        if col not in out:
            problems.append(f"column {col!r} is missing from the output table")
        elif src.get(col) is not None and out[col] != src[col]:
            problems.append(f"column {col!r} is {src[col].simpleString()} in the source but {out[col].simpleString()} in the output")
    if INPUT_HASH not in out:
        problems.append(f"column {INPUT_HASH!r} is missing: the output table was not written by spark-scoring")
    if problems:
        raise SchemaDriftError(
            f"output table {cfg.output.table!r} no longer matches the source:\n  - " + "\n  - ".join(problems)
            + "\nNothing was published. Run with --full-refresh to rebuild the output from the current source."
        )


def _resolve(cfg: JobConfig) -> ResolvedModel:
    return resolve_model(
        cfg.model.uri,
        task=cfg.model.task,
        tracking_uri=cfg.mlflow.tracking_uri,
        registry_uri=cfg.mlflow.registry_uri,
    )


def _execute(
    ctx: _Context,
    plan: Plan,
    resolved: ResolvedModel,
    identity: str,
    app: str,
    phases: _Phases,
    *,
    mode: str,
    dry_run: bool,
    record_watermark: bool,
) -> RunResult:
    cfg, lake = ctx.cfg, ctx.lake
    result = RunResult(
        job=cfg.name,
        status="nothing-to-do",
        mode=mode,
        plan=plan.reason,
        output_table=cfg.output.table,
        output_version=ctx.output_version,
        source_version=ctx.source_version,
        source_version_start=plan.since_version,
        model_uri=resolved.resolved_uri,
        model_version=resolved.version,
        partitions=None if plan.partitions is None else len(plan.partitions),
    )
    if plan.kind == "nothing" and not dry_run:
        result.seconds = phases.total()
        return result

    with phases.phase("plan"):
        to_score, carried = _split(ctx, plan, resolved) if plan.kind != "nothing" else (None, None)
    if dry_run:
        with phases.phase("plan"):
            if to_score is not None:
                result.rows_scored = to_score.count()
                result.rows_carried = carried.count() if carried is not None else 0
                result.rows_read = result.rows_scored + result.rows_carried
        result.status = "dry-run"
        result.seconds = phases.total()
        return result

    assert to_score is not None  # invariant: plan.kind != "nothing" here
    tracker = RunTracker(cfg)
    with tracker:
        result.run_id = tracker.run_id
        tracker.log_params(_params(cfg, plan, resolved, lake, mode))
        tracker.log_config(cfg)
        try:
            _score_and_commit(ctx, plan, resolved, identity, app, to_score, carried, phases, result, tracker,
                              mode=mode, record_watermark=record_watermark)
        except BaseException:
            result.seconds = phases.total()
            _record(tracker, result, failing=True)
            raise
        result.seconds = phases.total()
        _record(tracker, result, failing=False)
    return result


def _record(tracker: RunTracker, result: RunResult, *, failing: bool) -> None:
    """Log the run's metrics and report; never let a tracking failure hide the run's own error."""
    try:
        tracker.log_metrics(_metrics(result))
        tracker.log_report(result.to_dict())
    except TrackingError:
        if not failing:
            raise
        log.warning("could not record the failed run's metrics in MLflow", exc_info=True)


def _split(ctx: _Context, plan: Plan, resolved: ResolvedModel) -> tuple[DataFrame, DataFrame | None]:
    """Affected source rows -> (rows to score, carried output rows)."""
    cfg, lake = ctx.cfg, ctx.lake
    src_cols = _row_columns(cfg)
    source = lake.read(cfg.source.table, ctx.source_version, partitions=plan.partitions, columns=src_cols)
    source = source.withColumn(INPUT_HASH, inc.input_hash(cfg.model.input))
    if ctx.output_exists and plan.kind != "full":
        out_schema = lake.schema(cfg.output.table, ctx.output_version)
        _check_output_schema(cfg, lake.schema(cfg.source.table, ctx.source_version), out_schema)
    # A partial plan sees only some partitions; a key must also be unique across the rest.
    everywhere = None
    if plan.partitions is not None:
        everywhere = lake.read(cfg.source.table, ctx.source_version, columns=[cfg.source.key])
    _check_unique_keys(cfg, source, everywhere)
    if plan.kind in ("full", "backfill") or not ctx.output_exists:
        return source, None
    output = lake.read(cfg.output.table, ctx.output_version, partitions=plan.partitions)
    fixed = set(_passthrough_columns(cfg)) | {INPUT_HASH}
    produced = [f.name for f in out_schema.fields if f.name not in fixed]
    return inc.split_rows(
        source,
        output,
        key=cfg.source.key,
        passthrough_columns=_passthrough_columns(cfg),
        output_columns=produced,
        # on_change=rescore: rows still holding another model's predictions (from a
        # backfill or a new-rows-only period) are rescored too, as a full refresh would.
        rescore_model_uri=resolved.resolved_uri if cfg.model.on_change == "rescore" else None,
    )


def _check_unique_keys(cfg: JobConfig, source: DataFrame, everywhere: DataFrame | None = None) -> None:
    """Every key of the rows to publish is non-null and appears once in the whole source."""
    key = cfg.source.key
    keys = source.select(key)
    if everywhere is not None:  # count the affected keys over the whole table
        keys = everywhere.join(source.select(key).distinct(), key, "left_semi")
    bad = (
        keys.groupBy(key).count().filter((F.col("count") > 1) | F.col(key).isNull()).limit(5).collect()
    )
    if bad:
        sample = ", ".join(f"{r[key]!r} x{r['count']}" for r in bad)
        raise SchemaDriftError(
            f"source.key: {key!r} is not a unique, non-null key in {cfg.source.table!r} (e.g. {sample}). "
            "Each row must have its own key so it is scored and published exactly once; fix the source or "
            "choose another key column. Nothing was published."
        )


def _score_and_commit(
    ctx: _Context, plan: Plan, resolved: ResolvedModel, identity: str, app: str,
    to_score: DataFrame, carried: DataFrame | None, phases: _Phases, result: RunResult,
    tracker: RunTracker, *, mode: str, record_watermark: bool,
) -> None:
    cfg, lake, spark = ctx.cfg, ctx.lake, ctx.spark
    with phases.phase("load"):
        spec = udf.prepare_model(
            spark, model_dir=resolved.local_dir, model_uri=resolved.resolved_uri, model_cfg=cfg.model, identity=identity
        )
        stats = udf.ScoringStats(spark)
    # Spread the rows evenly over the cores, one partition per core: length sorting works
    # inside a partition, so bigger partitions pack tighter batches (measured on 2 cores,
    # 2,000 texts: 4 partitions per core gave padding efficiency 0.76 and 149 rows/s, one
    # per core 0.93 and 195 rows/s).
    to_score = to_score.repartition(cfg.run.num_partitions or max(1, spark.sparkContext.defaultParallelism))
    scored = _with_lineage(udf.score(to_score, spec, stats), resolved, tracker.run_id, ctx.source_version)
    # Both frames are used several times (counts, error summary, the write): compute once.
    scored = scored.persist(StorageLevel.MEMORY_AND_DISK)
    if carried is not None:
        # The join behind `carried` ends in spark.sql.shuffle.partitions (200 by default)
        # tiny partitions: merged here, so the write makes a few files, not hundreds.
        carried = carried.coalesce(max(1, spark.sparkContext.defaultParallelism)).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        with phases.phase("score"):
            with Progress(spark.sparkContext, "scoring", lambda: stats.snapshot().get("rows", 0), enabled=cfg.run.progress):
                counts = _run_spark(lambda: scored.agg(
                    F.count(F.lit(1)).alias("n"), F.count(F.col("error")).alias("failed")
                ).collect()[0], resolved)
            result.rows_scored, result.rows_failed = int(counts["n"]), int(counts["failed"])
            snap = stats.snapshot()
            result.padding_efficiency = snap.get("padding_efficiency")
            result.batches = int(snap.get("batches", 0))
            result.model_loads = int(snap.get("model_loads", 0))
            result.top_errors = _top_errors(cfg, scored) if result.rows_failed else []
        with phases.phase("commit"):
            result.rows_carried = carried.count() if carried is not None else 0
            result.rows_read = result.rows_scored + result.rows_carried
            over_budget = _over_budget(cfg, result)
            if over_budget:
                if cfg.errors.quarantine_table:
                    _quarantine(ctx, scored)
                raise ErrorBudgetExceeded(over_budget)
            final = _output_frame(cfg, scored, carried, spec)
            metadata = _commit_metadata(cfg, plan, resolved, identity, tracker.run_id, result, mode, ctx.source_table_id)
            written = lake.write(
                final,
                cfg.output.table,
                mode=plan.write_mode,
                partition_by=cfg.source.partition_by,
                partitions=plan.partitions or (),
                expected_version=ctx.output_version if ctx.output_exists else None,
                app_id=app if record_watermark else None,
                txn_version=ctx.source_version if record_watermark else None,
                metadata=metadata,
            )
        if written.version is None:  # the lakehouse found this exact commit already made
            result.status = "nothing-to-do"
            result.plan += "; skipped: this source version was already committed for this model"
            return
        result.output_version = written.version
        result.status = "published"
        log.info("published output version %s: %d scored, %d carried, %d failed",
                 written.version, result.rows_scored, result.rows_carried, result.rows_failed)
        # The data is published: from here on a failure is a warning, never "run failed".
        try:
            tracker.set_output_version(written.version)
            if result.rows_failed and cfg.errors.quarantine_table:
                _quarantine(ctx, scored)
            _log_distribution(tracker, cfg, scored, written.version)
        except Exception:  # noqa: BLE001 - see above
            log.warning("output version %s is published, but recording it afterwards failed",
                        written.version, exc_info=True)
    finally:
        scored.unpersist()
        if carried is not None:
            carried.unpersist()


def _run_spark(action, resolved: ResolvedModel):
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
        raise ScoringError(f"scoring failed on the executors for model {resolved.resolved_uri}: {first_line(exc)}") from exc




def _row_columns(cfg: JobConfig) -> list[str]:
    cols = [*_passthrough_columns(cfg), *cfg.model.input]
    return list(dict.fromkeys(cols))


def _passthrough_columns(cfg: JobConfig) -> list[str]:
    return list(dict.fromkeys([cfg.source.key, *cfg.source.partition_by, *cfg.source.passthrough]))


def _with_lineage(scored: DataFrame, resolved: ResolvedModel, run_id: str, source_version: int) -> DataFrame:
    scored_at = datetime.now(timezone.utc)  # aware: Spark would read a naive value as local time
    return (
        scored.withColumn("model_uri", F.lit(resolved.resolved_uri))
        .withColumn("model_version", F.lit(resolved.version).cast("string"))
        .withColumn("run_id", F.lit(run_id))
        .withColumn("scored_at", F.lit(scored_at).cast("timestamp"))
        .withColumn("source_version", F.lit(source_version).cast("long"))
    )


def _output_frame(cfg: JobConfig, scored: DataFrame, carried: DataFrame | None, spec: Any) -> DataFrame:
    """The rows to publish, in the contract's column order."""
    outputs = [f.name for f in udf.output_fields(spec)]
    columns = [*_passthrough_columns(cfg), *outputs, "error", *inc.LINEAGE_COLUMNS, INPUT_HASH]
    final = scored.select(*columns)
    if carried is not None:
        final = final.unionByName(carried.select(*columns))
    return final


def _top_errors(cfg: JobConfig, scored: DataFrame, limit: int = 5) -> list[dict[str, Any]]:
    key = cfg.source.key
    rows = (
        scored.filter(F.col("error").isNotNull())
        .groupBy("error")
        .agg(F.count(F.lit(1)).alias("rows"), F.slice(F.collect_list(F.col(key).cast("string")), 1, 5).alias("sample_keys"))
        .orderBy(F.desc("rows"))
        .limit(limit)
        .collect()
    )
    return [{"error": r["error"], "rows": int(r["rows"]), "sample_keys": list(r["sample_keys"])} for r in rows]


def _over_budget(cfg: JobConfig, result: RunResult) -> str | None:
    """None within the error budget, else the message saying how many rows failed, why and which."""
    failed, scored = result.rows_failed, result.rows_scored
    if not failed:
        return None
    rate = failed / scored if scored else 0.0
    over_rate = rate > cfg.errors.max_error_rate
    over_count = cfg.errors.max_errors is not None and failed > cfg.errors.max_errors
    if not (over_rate or over_count):
        log.warning("%d of %d rows failed (%.2f%%), within the error budget", failed, scored, 100 * rate)
        return None
    limits = f"errors.max_error_rate={cfg.errors.max_error_rate}"
    if cfg.errors.max_errors is not None:
        limits += f", errors.max_errors={cfg.errors.max_errors}"
    lines = [
        f"{failed} of {scored} scored rows failed ({100 * rate:.2f}%), over the error budget ({limits}). "
        "Nothing was published; the output table is unchanged.",
        "Most common errors:",
    ]
    for e in result.top_errors:
        lines.append(f"  {e['rows']:>6} x {e['error']}  (keys: {', '.join(e['sample_keys'])})")
    lines.append(
        "Fix the inputs or the model and rerun"
        + (f"; failed rows are in {cfg.errors.quarantine_table}" if cfg.errors.quarantine_table else
           "; set errors.quarantine_table to keep the failed rows for inspection")
        + ", or raise the budget if these failures are expected."
    )
    return "\n".join(lines)


def _quarantine(ctx: _Context, scored: DataFrame) -> None:
    cfg, lake = ctx.cfg, ctx.lake
    table = cfg.errors.quarantine_table
    assert table is not None
    cols = [*_passthrough_columns(cfg), *cfg.model.input, "error", "run_id", "scored_at", "source_version"]
    failed = scored.filter(F.col("error").isNotNull()).select(*dict.fromkeys(cols))
    exists = lake.exists(table)
    lake.write(
        failed, table, mode="append",
        expected_version=lake.latest_version(table) if exists else None,
        metadata={META + "job": cfg.name, META + "mode": "quarantine"},
    )
    log.warning("failed rows appended to quarantine table %s", table)


def _commit_metadata(
    cfg: JobConfig, plan: Plan, resolved: ResolvedModel, identity: str, run_id: str, result: RunResult, mode: str,
    ctx_table_id: str,
) -> dict[str, str]:
    parts = "ALL" if plan.partitions is None else json.dumps([dict(p) for p in plan.partitions])
    meta = {
        "run_id": run_id,
        "job": cfg.name,
        "mode": mode,
        "key": cfg.source.key,
        "source_table": cfg.source.table,
        "source_table_id": ctx_table_id,
        "source_version": str(plan.source_version),
        "source_version_start": "" if plan.since_version is None else str(plan.since_version),
        "model_uri": resolved.resolved_uri,
        "model_version": resolved.version or "",
        "model_id": resolved.model_hash,
        "model_identity": identity,
        "task": cfg.model.task,
        "rows_scored": str(result.rows_scored),
        "rows_carried": str(result.rows_carried),
        "rows_failed": str(result.rows_failed),
        "partitions": parts if len(parts) < 20000 else f"{len(plan.partitions or ())} partitions",
    }
    return {META + k: v for k, v in meta.items()}


def _params(cfg: JobConfig, plan: Plan, resolved: ResolvedModel, lake: Lakehouse, mode: str) -> dict[str, Any]:
    return {
        "job_name": cfg.name,
        "config_hash": cfg.config_hash(),
        "source_table": cfg.source.table,
        "output_table": cfg.output.table,
        "source_version_start": plan.since_version,
        "source_version": plan.source_version,
        "model_uri": resolved.resolved_uri,
        "model_version": resolved.version,
        "task": cfg.model.task,
        "batch_max_rows": cfg.model.batch.max_rows,
        "batch_max_tokens": cfg.model.batch.max_tokens,
        "lakehouse_engine": lake.engine,
        "mode": mode,
        "plan": plan.kind,
    }


def _metrics(result: RunResult) -> dict[str, float]:
    m: dict[str, float] = {
        "rows_read": result.rows_read,
        "rows_scored": result.rows_scored,
        "rows_carried": result.rows_carried,
        "rows_failed": result.rows_failed,
        "rows_per_second": result.rows_per_second,
        "batches": result.batches,
        "model_loads": result.model_loads,
    }
    for phase, s in result.seconds.items():
        m[f"seconds_{phase}"] = s
    if result.padding_efficiency is not None:
        m["padding_efficiency"] = result.padding_efficiency
    return m


def _log_distribution(tracker: RunTracker, cfg: JobConfig, scored: DataFrame, version: int | None) -> None:
    """A PNG of the score (or embedding norm) distribution of this run's rows."""
    ok = scored.filter(F.col("error").isNull())
    if "score" in scored.columns:
        values, kind = ok.select(F.col("score").cast("double").alias("v")), "score"
    elif "embedding" in scored.columns:
        norm = F.sqrt(F.aggregate("embedding", F.lit(0.0).cast("double"), lambda acc, x: acc + x * x))
        values, kind = ok.select(norm.alias("v")), "embedding_norm"
    else:
        return
    import numpy as np

    arr = np.array([r["v"] for r in values.limit(20000).collect() if r["v"] is not None], dtype=float)
    if arr.size:
        tracker.log_distribution(arr, kind=kind, title=f"{cfg.name}: {kind} of {arr.size:,} rows, output v{version}")

