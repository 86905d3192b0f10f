"""What a run reports: its result, the commit's metadata, and its MLflow params and metrics.

`RunResult` is what the CLI prints (`--json` and the summary table), what `report.json` in
MLflow holds and what the Python API returns. `commit_record` is the typed commit metadata
(`spark_scoring.contract.CommitRecord`) every publishing commit carries.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from spark_scoring.context import RunContext
from spark_scoring.contract import CommitRecord
from spark_scoring.incremental import Plan

#: The longest JSON partition list kept in the commit metadata; longer lists become a count.
_MAX_PARTITIONS_JSON = 20_000


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
    #: seconds the scoring tasks spent preparing (decoding, tokenizing) rows and in the
    #: model's predict calls, summed over the tasks
    worker_seconds: dict[str, float] = field(default_factory=dict)
    top_errors: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def planned(cls, ctx: RunContext, plan: Plan) -> RunResult:
        """The result of a run that has planned and done nothing yet."""
        return cls(
            job=ctx.cfg.name,
            status="nothing-to-do",
            mode=plan.mode,
            plan=plan.reason,
            output_table=ctx.cfg.output.table,
            output_version=ctx.output_version,
            source_version=plan.source_version,
            source_version_start=plan.since_version,
            model_uri=ctx.model.resolved_uri,
            model_version=ctx.model.version,
            partitions=plan.touched_partitions,
        )

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


def commit_record(ctx: RunContext, plan: Plan, run_id: str, result: RunResult) -> CommitRecord:
    """The metadata of the commit that publishes `result`."""
    parts = "ALL" if plan.partitions is None else json.dumps([dict(p) for p in plan.partitions])
    if len(parts) >= _MAX_PARTITIONS_JSON:
        parts = f"{len(plan.partitions or ())} partitions"
    return CommitRecord(
        run_id=run_id,
        job=ctx.cfg.name,
        mode=plan.mode,
        key=ctx.cfg.source.key,
        source_table=ctx.cfg.source.table,
        source_table_id=ctx.source_table_id,
        source_version=plan.source_version,
        source_version_start=plan.since_version,
        model_uri=ctx.model.resolved_uri,
        model_version=ctx.model.version,
        model_hash=ctx.model.model_hash,
        model_identity=ctx.identity,
        task=ctx.cfg.model.task,
        rows_scored=result.rows_scored,
        rows_carried=result.rows_carried,
        rows_failed=result.rows_failed,
        partitions=parts,
        app_id=plan.app_id if plan.record_watermark else None,
        epoch=plan.epoch,
        source_commit_timestamp=ctx.source_timestamp,
        plan=plan.kind,
        mixed_models=plan.mixed_models,
    )


def params(ctx: RunContext, plan: Plan) -> dict[str, Any]:
    """The MLflow params of a run."""
    cfg = ctx.cfg
    return {
        "job_name": cfg.name,
        "config_hash": cfg.config_hash(),
        "source_table": cfg.source.table,
        "output_table": cfg.output.table,
        "source_version_start": plan.since_version,
        "source_version": plan.source_version,
        "model_uri": ctx.model.resolved_uri,
        "model_version": ctx.model.version,
        "task": cfg.model.task,
        "batch_max_rows": cfg.model.batch.max_rows,
        "batch_max_tokens": cfg.model.batch.max_tokens,
        "lakehouse_engine": ctx.lake.engine,
        "mode": plan.mode,
        "plan": plan.kind,
    }


def metrics(result: RunResult) -> dict[str, float]:
    """The MLflow metrics of a run: counts, throughput and seconds per phase."""
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
    for part, s in result.worker_seconds.items():
        m[f"worker_seconds_{part}"] = s
    if result.padding_efficiency is not None:
        m["padding_efficiency"] = result.padding_efficiency
    return m
