"""The run context: what every phase of a run needs, made once at its start.

`open_run` resolves the model once (an alias stays pinned for the whole run), pins the
source version, checks the source schema against the config and looks at the output table,
all from the Delta logs; it joins or starts a Spark session only where planning needs one
(`with_session` starts it later, once there is work: a night with nothing to do never
starts a JVM). The `RunContext` it
returns is frozen: run, backfill and status all read the same values, and nothing later
in the run can see another source version or another model.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from pyspark.sql import SparkSession

from spark_scoring import checks
from spark_scoring import incremental as inc
from spark_scoring.config import JobConfig
from spark_scoring.lakehouse import Lakehouse, open_lakehouse
from spark_scoring.lakehouse.logonly import LogOnlyLakehouse
from spark_scoring.models.resolve import ResolvedModel, resolve_model
from spark_scoring.session import get_spark, require_delta_jars
from spark_scoring.tableref import is_local_path

log = logging.getLogger(__name__)


class Phases:
    """Wall-clock seconds per named phase of a run (a phase may be entered several times)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t0 = time.monotonic()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block under `name` (added to earlier time of the same phase)."""
        t = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.monotonic() - t, 3)

    def total(self) -> dict[str, float]:
        """Every phase plus `total`, the seconds since the run started."""
        return {**self.seconds, "total": round(time.monotonic() - self._t0, 3)}


@dataclass(frozen=True)
class RunContext:
    """One run's fixed facts.

    Attributes:
        cfg: the job config.
        spark: the session every Spark job of the run uses (None while the run plans from
            the logs alone: see `with_session`).
        lake: the lakehouse backend.
        source_version: the pinned source version.
        source_table_id: the source's Delta table id.
        source_timestamp: the commit timestamp (ms) of the pinned source version.
        output_exists: whether the output table exists.
        output_version: its version when the run planned (None: no table yet).
        model: the resolved, pinned model.
        identity: the model identity (see `incremental.model_identity`).
        phases: the run's phase timers.
    """

    cfg: JobConfig
    spark: SparkSession | None
    lake: Lakehouse
    source_version: int
    source_table_id: str
    source_timestamp: int | None
    output_exists: bool
    output_version: int | None
    model: ResolvedModel
    identity: str
    phases: Phases = field(default_factory=Phases, compare=False)


def open_run(cfg: JobConfig, spark: SparkSession | None = None, phases: Phases | None = None) -> RunContext:
    """Build the `RunContext` for one run of `cfg` (see the module docstring).

    When no session is given and none is running, the run plans from the Delta logs alone,
    without starting Spark (`RunContext.spark` is None then; `with_session` starts it once
    there is work).

    Raises:
        SchemaDriftError: the source does not have the columns and types the config names.
        UsageError: the session cannot be made for the configured lakehouse engine.
        ModelError / TrackingError: the model cannot be resolved.
    """
    phases = phases or Phases()
    plan_from_logs = spark is None and can_plan_without_spark(cfg)
    if plan_from_logs and cfg.lakehouse.engine == "delta-spark":
        require_delta_jars(cfg.spark)  # before the model downloads: the session would fail later
    with phases.phase("model"):
        model = resolve_model(
            cfg.model.uri, task=cfg.model.task, tracking_uri=cfg.mlflow.tracking_uri, registry_uri=cfg.mlflow.registry_uri
        )
    if plan_from_logs:
        lake: Lakehouse = LogOnlyLakehouse()
    else:
        with phases.phase("session"):
            spark = spark or get_spark(cfg.spark, app_name=cfg.name, engine=cfg.lakehouse.engine)
            lake = open_lakehouse(spark, cfg.lakehouse.engine, _tables(cfg))
    with phases.phase("plan"):
        source_version = lake.latest_version(cfg.source.table)  # pinned for the whole run
        source_table_id = lake.table_id(cfg.source.table)
        source_timestamp = lake.log(cfg.source.table).commit(source_version).timestamp
        checks.check_source_schema(
            cfg, lake.schema(cfg.source.table, source_version), lake.partition_columns(cfg.source.table, source_version)
        )
        output_exists = lake.exists(cfg.output.table)
        output_version = lake.latest_version(cfg.output.table) if output_exists else None
    log.info(
        "source %s at version %d; output %s %s; lakehouse engine %s",
        cfg.source.table, source_version, cfg.output.table,
        f"at version {output_version}" if output_exists else "(new)", lake.engine,
    )
    return RunContext(
        cfg=cfg,
        spark=spark,
        lake=lake,
        source_version=source_version,
        source_table_id=source_table_id,
        source_timestamp=source_timestamp,
        output_exists=output_exists,
        output_version=output_version,
        model=model,
        identity=inc.model_identity(model.model_hash, cfg.model),
        phases=phases,
    )


def with_session(ctx: RunContext) -> RunContext:
    """`ctx` with a Spark session and the configured lakehouse backend (started if needed)."""
    if ctx.spark is not None:
        return ctx
    with ctx.phases.phase("session"):
        spark = get_spark(ctx.cfg.spark, app_name=ctx.cfg.name, engine=ctx.cfg.lakehouse.engine)
        lake = open_lakehouse(spark, ctx.cfg.lakehouse.engine, _tables(ctx.cfg))
    return replace(ctx, spark=spark, lake=lake)


def _tables(cfg: JobConfig) -> list[str]:
    return [t for t in (cfg.source.table, cfg.output.table, cfg.errors.quarantine_table) if t is not None]


def can_plan_without_spark(cfg: JobConfig) -> bool:
    """True when planning needs no session: none runs or is configured (spark-submit, Spark
    Connect, a notebook), and every table is a path (catalog names need a session to resolve)."""
    if os.environ.get("PYSPARK_GATEWAY_PORT") or os.environ.get("SPARK_REMOTE") or getattr(cfg.spark, "remote", None):
        return False
    if SparkSession.getActiveSession() is not None:
        return False
    tables = _tables(cfg)
    # Local paths only: object stores and dbfs:/ may need credentials that live in the
    # Spark config (spark.hadoop.*), and catalog names need a session to resolve.
    return all(is_local_path(t) for t in tables)
