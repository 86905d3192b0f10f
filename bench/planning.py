"""`python -m bench.planning`: what planning and committing cost on a table of 10,000
partitions and 100,000 files (delta-rs engine).

The table is built fast, without 100,000 writes: one small Parquet file per partition
written with pyarrow, hard-linked to the partition's other file names, and ALL the files
committed as AddActions (with their statistics) in one `create_table_with_add_actions`
commit, then checkpointed, as a table of that size would be. Then, in this process:

* `files()`: the active files from the log (the checkpoint; no Spark job);
* `changes()` over one changed partition (commit files of the range only);
* the read plan of a read pruned to 1 and to 1,000 partitions (hash lookups per file);
* a `replace_partitions` commit of 1 partition, an upsert of one key (candidate files from
  partition values and key statistics), a `replace_partitions` commit of 1,000 partitions
  (each: the Spark write job and the commit, after an untimed warm-up write).

Example:
    python -m bench.planning                        # 10,000 partitions x 10 files
    python -m bench.planning --partitions 1000      # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: Default size: the issue's "10,000 partitions / 100,000 files".
PARTITIONS = 10_000
FILES_PER_PARTITION = 10
ROWS_PER_FILE = 10


def _log(msg: str) -> None:
    print(f"[bench.planning {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return round(time.perf_counter() - start, 3), value


def build_table(path: Path, partitions: int, files_per_partition: int) -> float:
    """A Delta table of `partitions` x `files_per_partition` files; returns the seconds taken."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import DeltaTable, Schema
    from deltalake.transaction import AddAction, create_table_with_add_actions

    start = time.perf_counter()
    path.mkdir(parents=True)
    now = int(time.time() * 1000)
    adds = []
    for p in range(partitions):
        folder = path / f"part={p}"
        folder.mkdir()
        low = p * ROWS_PER_FILE
        ids = list(range(low, low + ROWS_PER_FILE))
        first = folder / "f-0.parquet"
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "v": [f"v{i}" for i in ids]}), first)
        size = first.stat().st_size
        stats = json.dumps({"numRecords": ROWS_PER_FILE, "minValues": {"id": low, "v": f"v{low}"},
                            "maxValues": {"id": ids[-1], "v": f"v{ids[-1]}"}, "nullCount": {"id": 0, "v": 0}})
        for f in range(files_per_partition):
            if f:
                os.link(first, folder / f"f-{f}.parquet")
            adds.append(AddAction(f"part={p}/f-{f}.parquet", size, {"part": str(p)}, now, True, stats))
    schema = Schema.from_arrow(pa.schema([("id", pa.int64()), ("v", pa.string()), ("part", pa.int32())]))
    create_table_with_add_actions(str(path), schema, adds, mode="error", partition_by=["part"])
    DeltaTable(str(path)).create_checkpoint()
    return round(time.perf_counter() - start, 3)


def measure(spark, path: Path, partitions: int) -> dict[str, Any]:
    """Time the planning and commit steps on the table at `path` (see the module docstring)."""
    from spark_scoring.lakehouse.delta_rs import DeltaRsLakehouse

    lake = DeltaRsLakehouse(spark)
    table = str(path)
    out: dict[str, Any] = {}
    # Warm up (JVM, Python workers, the data source) on a table of its own, untimed.
    lake.write(spark.createDataFrame([(1, "w", 1)], "id long, v string, part int"), str(path) + "-warmup",
               mode="append", partition_by=["part"])
    version = lake.latest_version(table)
    out["files_seconds"], files = _timed(lambda: lake.files(table, version))
    out["files"] = len(files)
    one = [{"part": str(partitions // 2)}]
    many = [{"part": str(p)} for p in range(0, partitions, max(1, partitions // 1000))][:1000]
    out["read_plan_1_partition_seconds"], plan = _timed(lambda: lake.read_plan(table, version, partitions=one))
    out["read_plan_1_partition_files"] = sum(len(g) for g in plan)
    out["read_plan_1000_partitions_seconds"], plan = _timed(lambda: lake.read_plan(table, version, partitions=many))
    out["read_plan_1000_partitions_files"] = sum(len(g) for g in plan)

    def replace(specs: Sequence[dict[str, str]], at: int):
        rows = spark.createDataFrame([(int(s["part"]) * ROWS_PER_FILE, "new", int(s["part"])) for s in specs],
                                     "id long, v string, part int")
        return lake.write(rows, table, mode="replace_partitions", partitions=specs, expected_version=at)

    out["replace_1_partition_seconds"], result = _timed(lambda: replace(one, version))
    out["replace_1_partition_removed"] = result.files_removed
    version = result.version
    out["changes_1_partition_seconds"], changes = _timed(lambda: lake.changes(table, version - 1, version))
    out["changes_1_partition_files"] = len(changes.added) + len(changes.removed)
    key = (partitions // 3) * ROWS_PER_FILE + 1  # a partition neither replace touches
    upsert = spark.createDataFrame([(key, "upserted", partitions // 3)], "id long, v string, part int")
    out["upsert_1_key_seconds"], result = _timed(
        lambda: lake.write(upsert, table, mode="upsert", key="id", expected_version=version))
    out["upsert_1_key_removed"] = result.files_removed
    version = result.version
    many = [s for s in many if s["part"] != str(partitions // 3)]
    out["replace_1000_partitions_seconds"], result = _timed(lambda: replace(many, version))
    out["replace_1000_partitions_removed"] = result.files_removed
    return out


def run(spark=None, *, partitions: int = PARTITIONS, files_per_partition: int = FILES_PER_PARTITION,
        work: Path | None = None, keep: bool = False) -> dict[str, Any]:
    """Build the table under `work` (default: a temporary folder), measure, return the figures."""
    from pyspark.sql import SparkSession

    spark = spark or (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
                      .config("spark.sql.shuffle.partitions", "2").getOrCreate())
    root = Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="bench-planning-"))
    path = root / "planning-table"
    try:
        _log(f"building {partitions} partitions x {files_per_partition} files in {path}")
        figures: dict[str, Any] = {
            "partitions": partitions, "files_per_partition": files_per_partition,
            "load_average": os.getloadavg()[0], "cores": os.cpu_count(),
        }
        figures["build_seconds"] = build_table(path, partitions, files_per_partition)
        _log("measuring")
        figures.update(measure(spark, path, partitions))
        return figures
    finally:
        if not keep:
            shutil.rmtree(root if work is None else path, ignore_errors=True)
            shutil.rmtree(str(path) + "-warmup", ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse arguments, run, print the figures as JSON and return them."""
    p = argparse.ArgumentParser(prog="python -m bench.planning", description=__doc__.split("\n\n")[0])
    p.add_argument("--partitions", type=int, default=PARTITIONS)
    p.add_argument("--files-per-partition", type=int, default=FILES_PER_PARTITION)
    p.add_argument("--work", type=Path, default=None, help="folder for the table (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the table afterwards")
    args = p.parse_args(argv)
    figures = run(partitions=args.partitions, files_per_partition=args.files_per_partition, work=args.work,
                  keep=args.keep)
    print(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
