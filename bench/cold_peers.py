"""The scripts a user would write instead of spark-scoring, each run as its own process.

`bench.cold` starts each one with `python -m bench.cold_peers PEER --source SRC --output
OUT ...` in a fresh process and times it from outside (interpreter start, imports, session,
model load, read, encode, write: everything a cron job pays). Each reads the Delta source
table (`id`, `text`, ...) and writes a NEW Delta table `id, embedding` (array<float>):

  plain              deltalake reads the table into Arrow, `SentenceTransformer.encode(texts,
                     batch_size=32)` with torch threads = cores, deltalake writes the result
  predict_batch_udf  Spark local[cores] with the Delta connector: read Delta, repartition
                     to one task per core, `predict_batch_udf` (bench.peers' set-up: batch
                     256 handed to `encode(batch_size=32)`, 1 torch thread a task), write Delta
  spark_udf          the same Spark set-up with `mlflow.pyfunc.spark_udf` on the registered
                     sentence-transformers model (`--model-uri models:/NAME@ALIAS`)

Nothing here imports spark_scoring: the module-level imports are the standard library
only, and each peer imports what its script would. The last line printed is a JSON object
of the script's own phase seconds (import, load, read, encode, write), for the report.

Example:
    python -m bench.cold_peers plain --source /tmp/src --output /tmp/out --model DIR --cores 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

#: `SentenceTransformer.encode` batch size (its default) and predict_batch_udf's batch.
ENCODE_BATCH = 32
PREDICT_BATCH_ROWS = 256
PEERS = ("plain", "predict_batch_udf", "spark_udf")


class _Clock:
    """Seconds of each named phase since the previous mark."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.phases: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.phases[name] = round(now - self.last, 3)
        self.last = now


def plain(args: argparse.Namespace, clock: _Clock) -> int:
    """deltalake -> SentenceTransformer.encode -> deltalake, one process."""
    import pyarrow as pa
    import torch
    from deltalake import DeltaTable, write_deltalake
    from sentence_transformers import SentenceTransformer

    clock.mark("import")
    torch.set_num_threads(args.cores)
    model = SentenceTransformer(args.model, device="cpu", local_files_only=True)
    clock.mark("load")
    table = DeltaTable(args.source).to_pyarrow_table(columns=["id", "text"])
    clock.mark("read")
    vectors = model.encode(table.column("text").to_pylist(), batch_size=ENCODE_BATCH,
                           show_progress_bar=False, convert_to_numpy=True)
    clock.mark("encode")
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), vectors.shape[1])
    out = pa.table({"id": table.column("id"), "embedding": embedding.cast(pa.list_(pa.float32()))})
    write_deltalake(args.output, out, mode="overwrite")
    clock.mark("write")
    return out.num_rows


def _spark(args: argparse.Namespace) -> Any:
    # What a user with the Delta jars at hand writes (the jars fetched ahead of time, as
    # `make install` does; `configure_spark_with_delta_pip` would fetch them through Ivy).
    from pyspark.sql import SparkSession

    return (
        SparkSession.builder.master(f"local[{args.cores}]").appName(f"cold-{args.peer}")
        .config("spark.jars", args.jars)
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.executorEnv.OMP_NUM_THREADS", "1")
        .config("spark.executorEnv.TOKENIZERS_PARALLELISM", "false")
        .getOrCreate()
    )


def _spark_peer(args: argparse.Namespace, clock: _Clock, make_udf: Any) -> int:
    from pyspark.sql import functions as F

    spark = _spark(args)
    spark.sparkContext.setLogLevel("ERROR")
    clock.mark("session")
    embed = make_udf(spark)
    clock.mark("load")
    df = spark.read.format("delta").load(args.source).select("id", "text").repartition(args.cores)
    df.select("id", embed(F.col("text")).alias("embedding")).write.format("delta").mode("overwrite").save(args.output)
    clock.mark("read_encode_write")
    rows = spark.read.format("delta").load(args.output).count()
    spark.stop()
    clock.mark("stop")
    return rows


def predict_batch_udf(args: argparse.Namespace, clock: _Clock) -> int:
    """Spark's predict_batch_udf, reading and writing Delta with the JVM connector."""
    from pyspark.ml.functions import predict_batch_udf as pbu
    from pyspark.sql.types import ArrayType, FloatType

    clock.mark("import")
    model_dir = args.model

    def make_predict_fn() -> Any:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(1)
        model = SentenceTransformer(model_dir, device="cpu", local_files_only=True)

        def predict(texts: Any) -> Any:
            return model.encode(texts.tolist(), batch_size=ENCODE_BATCH, show_progress_bar=False,
                                convert_to_numpy=True)

        return predict

    return _spark_peer(args, clock, lambda spark: pbu(make_predict_fn, return_type=ArrayType(FloatType()),
                                                      batch_size=PREDICT_BATCH_ROWS))


def spark_udf(args: argparse.Namespace, clock: _Clock) -> int:
    """mlflow.pyfunc.spark_udf on the registered model, reading and writing Delta."""
    import mlflow
    from pyspark.sql.types import ArrayType, FloatType

    clock.mark("import")
    mlflow.set_tracking_uri(args.tracking_uri)
    return _spark_peer(args, clock, lambda spark: mlflow.pyfunc.spark_udf(
        spark, args.model_uri, result_type=ArrayType(FloatType()), env_manager="local"))


def config_text(peer: str, cores: int) -> str:
    """The set-up of `peer`, for the report."""
    return {
        "plain": (f"deltalake DeltaTable(src).to_pyarrow_table(['id','text']); SentenceTransformer(dir, "
                  f"device='cpu').encode(texts, batch_size={ENCODE_BATCH}), {cores} torch threads; "
                  "write_deltalake(out, id + embedding); model from the local directory"),
        "predict_batch_udf": (f"Spark local[{cores}] + Delta jars (spark.jars); read Delta, repartition({cores}); "
                              f"predict_batch_udf(batch_size={PREDICT_BATCH_ROWS}) -> encode(batch_size="
                              f"{ENCODE_BATCH}), 1 torch thread a task; write Delta; model from the local directory"),
        "spark_udf": (f"Spark local[{cores}] + Delta jars; read Delta, repartition({cores}); "
                      "mlflow.pyfunc.spark_udf(spark, 'models:/NAME@ALIAS', result_type=array<float>, "
                      "env_manager='local') (downloads the registered model); OMP_NUM_THREADS=1; write Delta"),
    }[peer]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one peer; prints its phases as JSON on the last line."""
    clock = _Clock()
    p = argparse.ArgumentParser(prog="python -m bench.cold_peers", description=__doc__.split("\n\n")[0])
    p.add_argument("peer", choices=PEERS)
    p.add_argument("--source", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--model", required=True, help="local model directory (plain, predict_batch_udf)")
    p.add_argument("--model-uri", default=None, help="registered model URI (spark_udf)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (spark_udf)")
    p.add_argument("--jars", default="", help="comma-separated Delta jars (Spark peers)")
    p.add_argument("--cores", type=int, default=1)
    args = p.parse_args(argv)
    if args.peer != "plain" and not args.jars:
        p.error(f"{args.peer} reads and writes Delta through the JVM connector: pass --jars")
    if args.peer == "spark_udf" and not (args.model_uri and args.tracking_uri):
        p.error("spark_udf needs --model-uri and --tracking-uri")
    rows = {"plain": plain, "predict_batch_udf": predict_batch_udf, "spark_udf": spark_udf}[args.peer](args, clock)
    print(json.dumps({"peer": args.peer, "rows": rows, "phases_s": clock.phases,
                      "inside_s": round(time.monotonic() - clock.start, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
