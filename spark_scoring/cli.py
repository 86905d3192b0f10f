"""The `spark-scoring` command line.

Exit codes: 0 ok, 1 run failed (nothing published), 2 usage or config error.

    spark-scoring run CONFIG [--set key=value ...] [--full-refresh] [--dry-run] [--json]
    spark-scoring backfill CONFIG (--partition col=value ... | --from LOW --to HIGH) [--dry-run]
    spark-scoring status CONFIG [--json]
    spark-scoring validate CONFIG [--set key=value ...]
    spark-scoring register-model --path DIR --name NAME --task TASK [--alias A] [--tracking-uri URI]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from typing import Any

from spark_scoring.config import JobConfig, load_config
from spark_scoring.errors import EXIT_OK, EXIT_RUN_FAILED, ScoringError, UsageError
from spark_scoring.models.tasks import TASK_NAMES

log = logging.getLogger("spark_scoring")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the jobs/ entry points and tests)."""
    parser = argparse.ArgumentParser(
        prog="spark-scoring",
        description="Nightly batch scoring of Delta tables with Spark and MLflow models.",
        epilog="Exit codes: 0 ok, 1 run failed (nothing published), 2 usage or config error.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="YAML job config")
        p.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override a config key, e.g. --set model.batch.max_rows=32 (repeatable)",
        )
        p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    p = sub.add_parser("run", help="score what changed since the last run and publish it in one commit")
    with_config(p)
    p.add_argument("--full-refresh", action="store_true", help="rescore every row and replace the whole output")
    p.add_argument("--dry-run", action="store_true", help="print the plan (partitions, rows to score/carry); write nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("backfill", help="rescore chosen partitions without moving the nightly watermark")
    with_config(p)
    p.add_argument("--partition", action="append", default=[], metavar="COL=VALUE[,COL=VALUE]",
                   help="a partition to rescore (repeatable); values as stored, e.g. event_date=2024-05-01")
    p.add_argument("--from", dest="low", metavar="LOW", help="first value of the first partition column (inclusive)")
    p.add_argument("--to", dest="high", metavar="HIGH", help="last value of the first partition column (inclusive)")
    p.add_argument("--dry-run", action="store_true", help="print the plan; write nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("status", help="watermark, pending source versions and the last runs")
    with_config(p)
    p.add_argument("--json", action="store_true", help="print the status as JSON")

    p = sub.add_parser("validate", help="check a job config and print it resolved")
    with_config(p)

    p = sub.add_parser("register-model", help="log a model to MLflow, register a version, set an alias")
    p.add_argument("--path", required=True, help="model directory (Hugging Face, sentence-transformers or MLflow model)")
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--task", required=True, choices=TASK_NAMES, help="the task the model is registered for")
    p.add_argument("--alias", help="alias to point at the new version, e.g. champion")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    configure_logging(args.verbose)
    try:
        return _dispatch(args)
    except ScoringError as exc:
        print(f"spark-scoring {args.command}: {exc}", file=sys.stderr)
        if args.verbose:
            log.exception("details")
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            f"spark-scoring {args.command}: interrupted. A run publishes in one commit or not at all; "
            "`spark-scoring status CONFIG` shows whether this one committed, and rerunning is safe.",
            file=sys.stderr,
        )
        return EXIT_RUN_FAILED
    except Exception as exc:  # noqa: BLE001 - last resort: a clear line, the traceback with -v
        print(
            f"spark-scoring {args.command}: failed with an unexpected {type(exc).__name__}: {exc}\n"
            "Nothing was published. Rerun with -v for the full traceback.",
            file=sys.stderr,
        )
        if args.verbose:
            log.exception("details")
        return EXIT_RUN_FAILED


def configure_logging(verbose: int) -> None:
    """Quiet by default (warnings only), -v for progress details, -vv for debug."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("spark_scoring").setLevel(level)
    for noisy in ("py4j", "mlflow", "alembic", "urllib3", "transformers", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 2 else logging.INFO)


def _load(args: argparse.Namespace) -> JobConfig:
    return load_config(args.config, overrides=args.overrides)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "validate":
        cfg = _load(args)
        print(f"{args.config}: OK (job {cfg.name!r}, config hash {cfg.config_hash()})")
        print(cfg.to_yaml(), end="")
        return EXIT_OK
    if args.command == "register-model":
        from spark_scoring.models.register import register_model

        print(register_model(args.path, args.name, args.task, alias=args.alias, tracking_uri=args.tracking_uri))
        return EXIT_OK

    cfg = _load(args)
    # Imported late: validating a config or printing --help must not start the JVM.
    from spark_scoring import pipeline

    if args.command == "status":
        info = pipeline.status(cfg)
        print(json.dumps(info, indent=2, default=str) if args.json else render_status(info))
        return EXIT_OK
    if args.command == "run":
        result = pipeline.run(cfg, full_refresh=args.full_refresh, dry_run=args.dry_run)
    else:  # backfill
        if (args.low is None) != (args.high is None):
            raise UsageError("backfill: give both --from and --to, or neither")
        parts = [parse_partition(p) for p in args.partition]
        between = (args.low, args.high) if args.low is not None else None
        result = pipeline.backfill(cfg, parts, between=between, dry_run=args.dry_run)
    print(json.dumps(result.to_dict(), indent=2, default=str) if args.json else render_result(result.to_dict()))
    return EXIT_OK


def parse_partition(text: str) -> dict[str, str | None]:
    """`event_date=2024-05-01,region=eu` -> {"event_date": "2024-05-01", "region": "eu"}.

    The literal value `__NULL__` stands for a null partition value.
    """
    out: dict[str, str | None] = {}
    # Split only before `name=`, so a value may itself contain commas ("a,b").
    for part in re.split(r",(?=[A-Za-z_][A-Za-z0-9_]*=)", text):
        if "=" not in part:
            raise UsageError(f"--partition {text!r}: expected COL=VALUE[,COL=VALUE], e.g. event_date=2024-05-01")
        col, _, value = part.partition("=")
        col = col.strip()
        if col in out:
            raise UsageError(f"--partition {text!r}: column {col!r} is given twice; give one value per column")
        out[col] = None if value == "__NULL__" else value
    return out


def render_result(r: dict[str, Any]) -> str:
    """The end-of-run summary table a person reads."""
    secs = r.get("seconds", {})
    rows = [
        ("job", r["job"]),
        ("status", r["status"]),
        ("plan", r["plan"]),
        ("model", f"{r.get('model_uri')}"),
        ("source version", f"{r.get('source_version_start') if r.get('source_version_start') is not None else '-'} -> {r.get('source_version')}"),
        ("output", f"{r.get('output_table')} @ v{r.get('output_version')}"),
        ("rows scored", f"{r['rows_scored']:,}"),
        ("rows carried", f"{r['rows_carried']:,}"),
        ("rows failed", f"{r['rows_failed']:,}"),
        ("rows/s (score)", f"{r.get('rows_per_second', 0):,.1f}"),
        ("seconds", "  ".join(f"{k} {v:.1f}" for k, v in secs.items())),
    ]
    if r.get("worker_seconds"):
        rows.append(("worker seconds", "  ".join(f"{k} {v:.1f}" for k, v in r["worker_seconds"].items())))
    if r.get("padding_efficiency") is not None:
        rows.append(("padding efficiency", f"{r['padding_efficiency']:.1%}"))
    if r.get("run_id"):
        rows.append(("mlflow run", r["run_id"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def render_status(info: dict[str, Any]) -> str:
    """`status` as text."""
    lines = [
        f"job               {info['job']}",
        f"source            {info['source_table']} @ v{info['source_version']}",
        f"output            {info['output_table']} " + (f"@ v{info['output_version']}" if info["output_exists"] else "(not created yet)"),
        f"model             {info['model_uri']} (identity {info['model_identity']})",
        f"watermark         {info['watermark'] if info['watermark'] is not None else 'none (no run with this model yet)'}",
        f"pending versions  {info['pending_source_versions'] if info['pending_source_versions'] is not None else 'all'}",
        f"lakehouse         {info['lakehouse_engine']}",
        "last runs:",
    ]
    if not info["last_runs"]:
        lines.append("  (none)")
    for run in info["last_runs"]:
        lines.append(
            f"  v{run['output_version']:<4} {run['timestamp'] or '':<26} {run['mode'] or '':<12} "
            f"source v{run['source_version']}  scored {run['rows_scored']}  carried {run['rows_carried']}  "
            f"failed {run['rows_failed']}  run {run['run_id']}"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
