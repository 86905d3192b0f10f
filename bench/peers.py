"""The alternatives a user would pick instead of spark-scoring, each in its best documented set-up.

Every peer scores the same texts with the same packaged all-MiniLM-L6-v2 and returns a
`PeerResult`. Throughput is MARGINAL: the model is loaded (and, for Spark peers, every
Python worker has it cached) by a small warm-up first, then the full set is timed. What
each peer was given (batch sizes, threads, caching) is written into `PeerResult.config`
so the figure and its set-up travel together.

Memory: `PeakRSS` samples, every 50 ms in a thread, the resident set size (RSS) of this
process plus all its descendants (the Spark JVM, the PySpark daemon and its Python
workers) with psutil. RSS counts shared pages once per process (forked Python workers
share torch's libraries), so the sum overstates what the machine really used; it is a
like-for-like figure across peers, not an exact one. Spark peers get a fresh SparkContext
(the JVM stays), so Python workers and their cached models from the previous peer are
gone before the next one starts.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Rows per predict call handed to `predict_batch_udf` (its `batch_size`).
PREDICT_BATCH_ROWS = 256
#: `SentenceTransformer.encode` batch size used inside the peers (its default).
ENCODE_BATCH = 32


@dataclass
class PeerResult:
    """One peer's figures.

    Attributes:
        name: short name of the peer.
        config: the exact set-up it ran with (batch sizes, threads, caching).
        rows: rows in the timed part (the full set, or the sample when extrapolated).
        seconds: seconds of the timed part.
        rows_per_s: rows / seconds of the timed part (marginal: model loaded, workers warm).
        extrapolated: True when the figure comes from a sample (`seconds_full` is then
            rows_full / rows_per_s, not measured).
        rows_full: the full row count the peer stands for.
        seconds_full: seconds for the full row count (measured, or extrapolated).
        warmup_s: seconds of model load + warm-up (not in `seconds`).
        end_to_end_s: wall seconds of everything this peer did (load, warm-up, timed part).
        peak_rss_mb: peak RSS of this process + descendants during the peer (MiB).
        baseline_rss_mb: the same just before the peer started.
        extra: peer-specific figures (our run: phases, padding efficiency, ...).
    """

    name: str
    config: str
    rows: int
    seconds: float
    rows_per_s: float
    rows_full: int
    seconds_full: float
    extrapolated: bool = False
    warmup_s: float = 0.0
    end_to_end_s: float = 0.0
    peak_rss_mb: float = 0.0
    baseline_rss_mb: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class PeakRSS:
    """Peak RSS (MiB) of this process and all its descendants, sampled in a thread.

    Example:
        >>> with PeakRSS() as mem:
        ...     work()
        >>> mem.peak_mb, mem.baseline_mb
    """

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.baseline_mb = 0.0
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def sample_mb() -> float:
        """Current RSS of this process tree in MiB."""
        import psutil

        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # a Python worker that exited between listing and reading
        return total / 2**20

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.baseline_mb = self.peak_mb = self.sample_mb()
        self._thread = threading.Thread(target=self._loop, name="bench-rss", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, self.sample_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.peak_mb = max(self.peak_mb, self.sample_mb())


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


# --------------------------------------------------------------------------------------
# Plain single process
# --------------------------------------------------------------------------------------


def plain_process(
    model_dir: str,
    texts: Sequence[str],
    *,
    threads: int,
    device: str = "cpu",
    precision: str = "fp32",
) -> PeerResult:
    """`SentenceTransformer(dir).encode(texts, batch_size=32)` in this process.

    What a user runs on one machine: torch threads = `threads` (the cores), the whole
    list handed to `encode` (which sorts it by length before batching).
    """
    import torch
    from sentence_transformers import SentenceTransformer

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        with PeakRSS() as mem:
            model = SentenceTransformer(model_dir, device=device, local_files_only=True)
            if precision == "bf16":
                model = model.to(torch.bfloat16)
            elif precision == "fp16":
                model = model.to(torch.float16)
            model.encode(list(texts[:64]), batch_size=ENCODE_BATCH, show_progress_bar=False)  # warm-up
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            warm = time.perf_counter() - t0
            t = time.perf_counter()
            emb = model.encode(list(texts), batch_size=ENCODE_BATCH, show_progress_bar=False, convert_to_numpy=True)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            secs = time.perf_counter() - t
        assert emb.shape[0] == len(texts)  # invariant of encode
        del model
    finally:
        torch.set_num_threads(old_threads)
        gc.collect()
    n = len(texts)
    return PeerResult(
        name="plain process",
        config=(
            f"SentenceTransformer(dir, device={device!r}).encode(texts, batch_size={ENCODE_BATCH}), "
            f"{threads} torch threads, precision {precision}, one process"
        ),
        rows=n, seconds=secs, rows_per_s=n / secs, rows_full=n, seconds_full=secs,
        warmup_s=warm, end_to_end_s=time.perf_counter() - t0,
        peak_rss_mb=mem.peak_mb, baseline_rss_mb=mem.baseline_mb,
    )


# --------------------------------------------------------------------------------------
# Spark peers
# --------------------------------------------------------------------------------------


def _noop_write(df: Any) -> None:
    # Forces every row through the UDF without keeping or collecting results.
    df.write.format("noop").mode("overwrite").save()


def _spark_peer(
    spark: Any,
    name: str,
    config: str,
    apply: Callable[[Any], Any],
    parquet: str,
    *,
    partitions: int,
    warmup_rows: int,
    sample_rows: int | None = None,
) -> PeerResult:
    """Warm up on a few rows (one task per core, so every Python worker loads and caches
    the model), then time the full set (or a sample) with a noop write."""
    from pyspark.sql import functions as F

    src = spark.read.parquet(parquet)
    total = src.count()
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        warm_df = src.orderBy("id").limit(warmup_rows).repartition(partitions)
        _noop_write(apply(warm_df))
        warm = time.perf_counter() - t0
        timed_df = src if sample_rows is None else src.orderBy("id").limit(sample_rows)
        timed_df = timed_df.repartition(partitions)
        rows = total if sample_rows is None else min(sample_rows, total)
        _, secs = _timed(lambda: _noop_write(apply(timed_df)))
    # A scored value must come back: check one row so a silently broken UDF cannot pass.
    first = apply(src.limit(1)).select(F.size(F.col("embedding")).alias("d")).collect()[0]["d"]
    if not first:
        raise RuntimeError(f"peer {name!r} returned an empty embedding")
    rps = rows / secs
    return PeerResult(
        name=name, config=config, rows=rows, seconds=secs, rows_per_s=rps,
        rows_full=total, seconds_full=total / rps if sample_rows is not None else secs,
        extrapolated=sample_rows is not None, warmup_s=warm, end_to_end_s=time.perf_counter() - t0,
        peak_rss_mb=mem.peak_mb, baseline_rss_mb=mem.baseline_mb, extra={"embedding_dim": int(first)},
    )


def predict_batch_udf_peer(
    spark: Any, model_dir: str, parquet: str, *, partitions: int, warmup_rows: int
) -> PeerResult:
    """Spark's `pyspark.ml.functions.predict_batch_udf`, model cached per Python worker.

    `make_predict_fn` loads the SentenceTransformer once per worker (Spark's own model
    cache keeps it), sets torch to 1 thread (one task per core), and its `predict` hands
    each `batch_size`-row numpy batch to `encode`.
    """
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType

    encode_batch = ENCODE_BATCH

    def make_predict_fn() -> Callable[[np.ndarray], np.ndarray]:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(1)
        model = SentenceTransformer(model_dir, device="cpu", local_files_only=True)

        def predict(texts: np.ndarray) -> np.ndarray:
            return model.encode(
                texts.tolist(), batch_size=encode_batch, show_progress_bar=False, convert_to_numpy=True
            )

        return predict

    embed = predict_batch_udf(
        make_predict_fn, return_type=ArrayType(FloatType()), batch_size=PREDICT_BATCH_ROWS
    )
    config = (
        f"predict_batch_udf(make_predict_fn, return_type=array<float>, batch_size={PREDICT_BATCH_ROWS}); "
        f"predict = model.encode(batch.tolist(), batch_size={ENCODE_BATCH}); model loaded once per "
        f"Python worker (Spark's model cache); torch threads 1 per task, local[{partitions}]"
    )
    return _spark_peer(
        spark, "Spark predict_batch_udf", config,
        lambda df: df.select("id", embed(F.col("text")).alias("embedding")),
        parquet, partitions=partitions, warmup_rows=warmup_rows,
    )


def mlflow_spark_udf_peer(
    spark: Any, model_dir: str, parquet: str, tmp: str, *, partitions: int, warmup_rows: int
) -> PeerResult:
    """`mlflow.pyfunc.spark_udf` on the model logged with the sentence_transformers flavour.

    Logged to a temporary SQLite MLflow store; `env_manager="local"` (the workers use this
    interpreter), result_type array<float>. MLflow caches the loaded model per Python
    worker itself; torch threads come from OMP_NUM_THREADS=1 in the executor environment.
    """
    import mlflow
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType
    from sentence_transformers import SentenceTransformer

    t0 = time.perf_counter()
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")  # the store our run created: no second migration
    mlflow.set_experiment("bench-peers")
    model = SentenceTransformer(model_dir, device="cpu", local_files_only=True)
    with mlflow.start_run():
        info = mlflow.sentence_transformers.log_model(model, name="minilm")
    del model
    gc.collect()
    log_s = time.perf_counter() - t0
    embed = mlflow.pyfunc.spark_udf(
        spark, info.model_uri, result_type=ArrayType(FloatType()), env_manager="local"
    )
    config = (
        "mlflow.pyfunc.spark_udf(spark, uri, result_type=array<float>, env_manager='local') on the "
        "model logged with mlflow.sentence_transformers.log_model; encode defaults (batch_size 32) "
        "on each Arrow batch; model cached per Python worker by MLflow; OMP_NUM_THREADS=1 per task, "
        f"local[{partitions}]"
    )
    res = _spark_peer(
        spark, "MLflow spark_udf", config,
        lambda df: df.select("id", embed(F.col("text")).alias("embedding")),
        parquet, partitions=partitions, warmup_rows=warmup_rows,
    )
    res.extra["log_model_s"] = round(log_s, 2)
    return res


_NAIVE_MODEL: Any = None


def _naive_embed(text: str) -> list[float]:
    # Row at a time, model loaded lazily into a module global: importable module, so one
    # load per Python worker (the generous reading of "a naive UDF").
    global _NAIVE_MODEL
    if _NAIVE_MODEL is None:
        from sentence_transformers import SentenceTransformer

        _NAIVE_MODEL = SentenceTransformer(os.environ["BENCH_MODEL_DIR"], device="cpu", local_files_only=True)
    return _NAIVE_MODEL.encode(text, show_progress_bar=False).tolist()


def naive_udf_peer(
    spark: Any, parquet: str, *, partitions: int, warmup_rows: int, sample_rows: int
) -> PeerResult:
    """A plain `@udf` that encodes one text per call, timed on a sample and EXTRAPOLATED.

    Needs `bench` importable on the workers (PYTHONPATH) and BENCH_MODEL_DIR in the
    executor environment; `bench.run` sets both before Spark starts.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType

    embed = F.udf(_naive_embed, ArrayType(FloatType()))
    config = (
        "@udf(array<float>) calling model.encode(text) one row at a time; model loaded lazily into "
        f"a module global (once per Python worker); OMP_NUM_THREADS=1 per task, local[{partitions}]; "
        f"timed on {sample_rows} rows and extrapolated"
    )
    return _spark_peer(
        spark, "naive row-at-a-time UDF", config,
        lambda df: df.select("id", embed(F.col("text")).alias("embedding")),
        parquet, partitions=partitions, warmup_rows=warmup_rows, sample_rows=sample_rows,
    )


# --------------------------------------------------------------------------------------
# This project
# --------------------------------------------------------------------------------------


def our_pipeline_peer(spark: Any, warm_cfg: Any, cfg: Any, *, name: str = "spark-scoring nightly run") -> PeerResult:
    """`spark_scoring.pipeline.run(cfg, full_refresh=True)` end to end on the Delta source.

    A small warm-up run (another job on a small table, same model) first, so Spark, the
    Python workers and the per-worker model cache are warm; then the full run. Marginal
    rows/s = rows_scored / seconds["score"]; end-to-end = rows_scored / wall seconds.
    """
    from spark_scoring import pipeline

    t0 = time.perf_counter()
    with PeakRSS() as mem:
        warm = pipeline.run(warm_cfg, full_refresh=True, spark=spark)
        warm_s = time.perf_counter() - t0
        result, wall = _timed(lambda: pipeline.run(cfg, full_refresh=True, spark=spark))
    if result.status != "published" or result.rows_failed:
        raise RuntimeError(f"our run did not publish cleanly: {result.status}, {result.rows_failed} failed")
    score_s = result.seconds.get("score", 0.0)
    b = cfg.model.batch
    config = (
        f"pipeline.run(cfg, full_refresh=True) on a Delta source (delta-rs engine here), "
        f"{spark.sparkContext.master}; batch max_rows={b.max_rows}, max_tokens={b.max_tokens}, "
        f"sort_by_length={b.sort_by_length}; device={cfg.model.device}, precision={cfg.model.precision}; "
        "torch threads = spark.task.cpus (1) per task; model cached per Python worker"
    )
    return PeerResult(
        name=name, config=config, rows=result.rows_scored, seconds=score_s,
        rows_per_s=result.rows_scored / score_s if score_s else 0.0,
        rows_full=result.rows_scored, seconds_full=score_s, warmup_s=warm_s,
        end_to_end_s=time.perf_counter() - t0, peak_rss_mb=mem.peak_mb, baseline_rss_mb=mem.baseline_mb,
        extra={
            "run_wall_s": round(wall, 3),
            "end_to_end_rows_per_s": round(result.rows_scored / wall, 2) if wall else None,
            "phases_s": dict(result.seconds),
            "padding_efficiency": result.padding_efficiency,
            "batches": result.batches,
            "rows_failed": result.rows_failed,
            "warmup_run_rows": warm.rows_scored,
            "output_version": result.output_version,
        },
    )
