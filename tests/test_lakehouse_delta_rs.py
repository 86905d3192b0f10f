"""delta-rs backend specifics: file layout and stats, task planning, failures.

The shared behaviour of both backends is in test_lakehouse_contract.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import deltalake
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from spark_scoring.errors import ConcurrentRunError, LakehouseError, TableNotFoundError
from spark_scoring.lakehouse.delta_rs import DeltaRsLakehouse
from spark_scoring.lakehouse.deltalog import DeltaLog

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def lake(spark) -> DeltaRsLakehouse:
    return DeltaRsLakehouse(spark)


@pytest.fixture
def table(tmp_path) -> str:
    return str(tmp_path / "tbl")


def _seed(table: str) -> None:
    """Version 0: two partitions written by deltalake itself."""
    data = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "day": ["2024-05-01", "2024-05-01", "2024-05-02"]})
    deltalake.write_deltalake(table, data, partition_by=["day"])


def _log_paths(table: str) -> set[str]:
    """Every data file any commit of the log ever added (decoded, relative)."""
    from urllib.parse import unquote

    paths = set()
    for log_file in sorted((Path(table) / "_delta_log").glob("*.json")):
        for line in log_file.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                paths.add(unquote(action["add"]["path"]))
    return paths


def _disk_paths(table: str) -> set[str]:
    root = Path(table)
    return {str(p.relative_to(root)) for p in root.rglob("*.parquet") if "_delta_log" not in p.parts}


# --------------------------------------------------------------------------- catalog names


def test_catalog_names_need_the_jvm_connector(lake, spark):
    for call in (
        lambda: lake.location("sales.orders"),
        lambda: lake.read("main.sales.orders", 0),
        lambda: lake.latest_version("sales.orders"),
        lambda: lake.write(spark.range(1), "sales.scored", mode="append"),
    ):
        with pytest.raises(LakehouseError, match=r"catalog table name.*JVM Delta connector.*'delta-spark'"):
            call()


def test_missing_table_is_reported_clearly(lake, tmp_path):
    missing = str(tmp_path / "nothing-here")
    assert not lake.exists(missing)
    with pytest.raises(TableNotFoundError, match=r"no Delta table at .*nothing-here.*first write"):
        lake.latest_version(missing)
    with pytest.raises(TableNotFoundError):
        lake.read(missing, 0)


# --------------------------------------------------------------------------- layout and stats


def test_files_hold_no_partition_columns_and_carry_delta_stats(lake, spark, table):
    df = spark.createDataFrame(
        [(1, "a", "zeta", 0.5, "2024-05-01 10:00:00.000100"), (2, "a", None, 1.5, "2024-05-01 11:00:00.999500"),
         (3, "b/c", "x" * 40, None, None)],
        "id long, day string, text string, score double, ts string",
    ).withColumn("ts", F.to_timestamp("ts")).coalesce(1)  # one task: one file per partition
    result = lake.write(df, table, mode="append", partition_by=["day"])
    assert result.files_added == 2 and result.rows_written == 3

    adds = {}
    for line in (Path(table) / "_delta_log" / f"{result.version:020d}.json").read_text().splitlines():
        action = json.loads(line)
        if "add" in action:
            adds[action["add"]["partitionValues"]["day"]] = action["add"]
    assert adds["b/c"]["path"].startswith("day=b%252Fc/")  # Hive escaping, then URI encoding
    assert (Path(table) / "day=b%2Fc").is_dir()
    for add in adds.values():
        file_schema = pq.read_schema(Path(table) / deltalake_path(add["path"]))
        assert file_schema.names == ["id", "text", "score", "ts"]

    stats = json.loads(adds["a"]["stats"])
    assert stats["numRecords"] == 2
    assert stats["minValues"]["id"] == 1 and stats["maxValues"]["id"] == 2
    assert stats["minValues"]["score"] == 0.5 and stats["maxValues"]["score"] == 1.5
    assert stats["nullCount"] == {"id": 0, "text": 1, "score": 0, "ts": 0}
    # Timestamps in milliseconds: the min rounds down, the max rounds up, so both stay bounds.
    assert stats["minValues"]["ts"] == "2024-05-01T10:00:00.000Z"
    assert stats["maxValues"]["ts"] == "2024-05-01T11:00:01.000Z"
    other = json.loads(adds["b/c"]["stats"])
    assert other["minValues"]["text"] == "x" * 32 and "text" not in other["maxValues"]
    assert other["nullCount"]["score"] == 1 and "day" not in other["nullCount"]

    # delta-rs data skipping uses these stats: a filter on id still finds the rows.
    found = deltalake.DeltaTable(table).to_pyarrow_dataset().to_table(filter=pa.compute.field("id") == 2)
    assert found.column("id").to_pylist() == [2]


def deltalake_path(log_path: str) -> str:
    from urllib.parse import unquote

    return unquote(log_path)


def test_read_plan_packs_files_into_tasks(spark, table):
    _seed(table)
    deltalake.write_deltalake(table, pa.table({"id": pa.array([4], pa.int64()), "day": ["2024-05-03"]}),
                              mode="append")
    one_per_file = DeltaRsLakehouse(spark, max_bytes_per_task=1)
    plan = one_per_file.read_plan(table, 1)
    assert len(plan) == 3 and all(len(group) == 1 for group in plan)
    df = one_per_file.read(table, 1)
    assert df.rdd.getNumPartitions() == 3
    assert sorted(r["id"] for r in df.collect()) == [1, 2, 3, 4]

    packed = DeltaRsLakehouse(spark).read_plan(table, 1)
    assert len(packed) == 1 and len(packed[0]) == 3
    assert DeltaRsLakehouse(spark).read_plan(table, 1, partitions=[{"day": "2024-05-09"}]) == []
    assert DeltaRsLakehouse(spark).read(table, 1, partitions=[{"day": "2024-05-09"}]).count() == 0


def test_reads_files_written_before_a_column_was_added(lake, table):
    _seed(table)
    newer = pa.table({"id": pa.array([9], pa.int64()), "day": ["2024-05-02"], "label": ["new"]})
    deltalake.write_deltalake(table, newer, mode="append", schema_mode="merge")
    rows = sorted((r["id"], r["label"]) for r in lake.read(table, 1).collect())
    assert rows == [(1, None), (2, None), (3, None), (9, "new")]


def test_bad_partition_values_fail_on_the_driver(lake, table):
    _seed(table)
    with pytest.raises(LakehouseError, match="not partition columns"):
        lake.read(table, 0, partitions=[{"id": "1"}])
    with pytest.raises(LakehouseError, match=r"columns \['nope'\] cannot be read"):
        lake.read(table, 0, columns=["id", "nope"])


# --------------------------------------------------------------------------- failures


def test_rows_outside_the_replaced_partitions_fail_and_leave_nothing(lake, spark, table):
    _seed(table)
    # One task holds both rows, so the task that fails is the one that wrote the inside row
    # (with two tasks, Spark may abort the job while the other task is still writing).
    df = spark.createDataFrame([(7, "2024-05-01"), (8, "2024-05-02")], "id long, day string").coalesce(1)
    with pytest.raises(LakehouseError, match=r"falls outside the partitions being replaced"):
        lake.write(df, table, mode="replace_partitions", partitions=[{"day": "2024-05-01"}], expected_version=0)
    assert deltalake.DeltaTable(table).version() == 0
    assert _disk_paths(table) == _log_paths(table)  # the task removed what it had written


def test_schema_mismatch_is_refused_before_writing(lake, spark, table):
    _seed(table)
    df = spark.createDataFrame([(7, "2024-05-01", 1.0)], "id long, day string, extra double")
    with pytest.raises(LakehouseError, match=r"extra column extra.*mode 'overwrite'"):
        lake.write(df, table, mode="append", expected_version=0)


@pytest.mark.parametrize("mode", ["replace_partitions", "upsert"])
def test_commit_during_the_write_is_detected_and_files_are_removed(lake, spark, table, tmp_path, mode):
    """Another writer commits while our tasks run: our commit must refuse and clean up."""
    _seed(table)
    marker = str(tmp_path / "intruder-committed")

    @F.udf("long")
    def commit_meanwhile(value):
        # Runs inside a write task: another writer appends to the table right now (once).
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return value
        os.close(fd)
        import deltalake as dl
        import pyarrow as pa_

        dl.write_deltalake(table, pa_.table({"id": pa_.array([99], pa_.int64()), "day": ["2024-05-09"]}),
                           mode="append")
        return value

    df = spark.createDataFrame([(5, "2024-05-01"), (6, "2024-05-01")], "id long, day string")
    df = df.withColumn("id", commit_meanwhile("id"))
    kwargs = {"partitions": [{"day": "2024-05-01"}]} if mode == "replace_partitions" else {"key": "id"}
    with pytest.raises(ConcurrentRunError, match=r"moved from version 0 to 1 while this run was running"):
        lake.write(df, table, mode=mode, expected_version=0, **kwargs)
    dt_ = deltalake.DeltaTable(table)
    assert dt_.version() == 1
    assert sorted(pa.table(dt_.to_pyarrow_table()).column("id").to_pylist()) == [1, 2, 3, 99]
    assert _disk_paths(table) == _log_paths(table)  # abort() deleted the files our tasks wrote


_KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, time
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession, functions as F
    table, signal_file = sys.argv[1], sys.argv[2]
    spark = (SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false")
             .config("spark.sql.session.timeZone", "UTC").getOrCreate())
    from spark_scoring.lakehouse.delta_rs import DeltaRsLakehouse

    @F.udf("long")
    def hang(value):
        open(signal_file, "w").close()
        time.sleep(3600)
        return value

    df = spark.createDataFrame([(10, "2024-05-01"), (11, "2024-05-01")], "id long, day string")
    DeltaRsLakehouse(spark).write(df.withColumn("id", hang("id")), table, mode="replace_partitions",
                                  partitions=[{"day": "2024-05-01"}], expected_version=0)
    """
)


@pytest.mark.slow
def test_a_write_killed_before_its_commit_publishes_nothing(lake, table, tmp_path):
    _seed(table)
    signal_file = tmp_path / "task-started"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, table, str(signal_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not signal_file.exists():
            if proc.poll() is not None:
                pytest.fail(f"writer exited early: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the write task never started")
            time.sleep(0.2)
    finally:
        # The whole process group: driver, its JVM and the Python workers.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    dt_ = deltalake.DeltaTable(table)
    assert dt_.version() == 0
    assert sorted(pa.table(dt_.to_pyarrow_table()).column("id").to_pylist()) == [1, 2, 3]
    assert sorted(r["id"] for r in lake.read(table, lake.latest_version(table)).collect()) == [1, 2, 3]


def test_typed_partition_columns_written_by_another_writer(lake, tmp_path):
    """delta-rs hands date/int partition values back typed; the lakehouse speaks strings."""
    import datetime as dt

    path = str(tmp_path / "typed")
    deltalake.write_deltalake(
        path,
        pa.table({"id": [1, 2, 3], "day": pa.array([dt.date(2026, 1, 1), dt.date(2026, 1, 2), None]),
                  "n": pa.array([5, 6, 7], pa.int32())}),
        partition_by=["day", "n"],
    )
    values = sorted((f.partition_values["day"] or "", f.partition_values["n"]) for f in lake.files(path, 0))
    assert values == [("", "7"), ("2026-01-01", "5"), ("2026-01-02", "6")]
    rows = lake.read(path, 0, partitions=[{"day": "2026-01-02", "n": "6"}, {"day": None, "n": "7"}]).collect()
    assert sorted((r.id, r.day, r.n) for r in rows) == [(2, dt.date(2026, 1, 2), 6), (3, None, 7)]
    out = str(tmp_path / "typed_out")
    lake.write(lake.read(path, 0), out, mode="overwrite", partition_by=["day"])
    replaced = lake.write(lake.read(path, 0).filter("id = 2"), out, mode="replace_partitions",
                          partitions=[{"day": "2026-01-02"}, {"day": "2026-01-01"}], expected_version=0)
    assert replaced.version == 1
    assert sorted(deltalake.DeltaTable(out).to_pandas()["id"]) == [2, 3]


# --------------------------------------------------------------------------- bounded open files


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_write_task_keeps_a_bounded_number_of_files_open(table):
    """300 partitions interleaved in every batch, 3 files open at most: all rows land."""
    from pyspark.sql.types import LongType, StructField, StructType

    from spark_scoring.lakehouse._delta_rs.writer import DeltaRsWriter

    schema = StructType([StructField("id", LongType()), StructField("p", LongType())])
    writer = DeltaRsWriter({"path": table, "partition_by": '["p"]', "max_open_files": "3"}, schema)
    peak = []

    def batches():
        base = _open_fds()
        for b in range(4):
            ids = list(range(b * 600, (b + 1) * 600))
            peak.append(_open_fds() - base)
            yield pa.RecordBatch.from_pydict({"id": ids, "p": [i % 300 for i in ids]})
        peak.append(_open_fds() - base)

    message = writer.write(batches())
    assert max(peak) <= 3
    assert message.rows == 2400 and {a["partition_values"]["p"] for a in message.adds} == {str(p) for p in range(300)}
    writer.commit([message])
    data = deltalake.DeltaTable(table).to_pyarrow_table()
    assert sorted(data.column("id").to_pylist()) == list(range(2400))
    assert all(p == i % 300 for i, p in zip(data.column("id").to_pylist(), data.column("p").to_pylist(), strict=True))


_MANY_PARTITIONS = textwrap.dedent(
    """
    import os, resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))  # the default limit of most systems
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession
    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.sql.execution.arrow.maxRecordsPerBatch", "500").getOrCreate())
    from spark_scoring.lakehouse.delta_rs import DeltaRsLakehouse

    # 1,500 partitions in two tasks of 2,250 rows (five Arrow batches each): sorted by
    # partition within each task (as the pipeline writes), and in random order.
    rows = spark.range(0, 4500).selectExpr("id", "cast(id % 1500 as int) as p").repartition(2)
    lake = DeltaRsLakehouse(spark)
    lake.write(rows.sortWithinPartitions("p"), sys.argv[1], mode="append", partition_by=["p"])
    lake.write(rows, sys.argv[2], mode="append", partition_by=["p"])
    print("LIMIT", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    """
)


def _files_per_partition(table: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in deltalake.DeltaTable(table).file_uris():
        part = path.rsplit("/", 2)[-2]
        counts[part] = counts.get(part, 0) + 1
    return counts


def test_1500_output_partitions_under_the_default_open_file_limit(tmp_path):
    sorted_, unsorted = str(tmp_path / "sorted"), str(tmp_path / "unsorted")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _MANY_PARTITIONS, sorted_, unsorted], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("LIMIT", 1)[1].split() == ["1024"]
    for table, most in ((sorted_, 2), (unsorted, 10)):  # per task: one file, or one per batch
        per_partition = _files_per_partition(table)
        assert len(per_partition) == 1500 and max(per_partition.values()) <= most, table
        assert sorted(deltalake.DeltaTable(table).to_pyarrow_table().column("id").to_pylist()) == list(range(4500))


# --------------------------------------------------------------------------- upsert specifics


def test_upsert_by_key_ranges_when_keys_are_many(lake, spark, table, monkeypatch):
    """Above EXACT_KEYS_LIMIT, each partition's [min, max] key range picks the files."""
    import spark_scoring.lakehouse.delta_rs as backend

    for lo in (0, 100, 200):  # three files per partition with disjoint key ranges
        rows = [(n, "ab"[n % 2], "old") for n in range(lo, lo + 100)]
        lake.write(spark.createDataFrame(rows, "id long, day string, v string").coalesce(1), table, mode="append",
                   partition_by=["day"], expected_version=None if lo == 0 else lo // 100 - 1)
    monkeypatch.setattr(backend, "EXACT_KEYS_LIMIT", 2)
    update = spark.createDataFrame([(110, "a", "new"), (150, "a", "new"), (130, "a", "new")], "id long, day string, v string")
    result = lake.write(update, table, mode="upsert", key="id", expected_version=2)
    removed = DeltaLog(table).commit(result.version).removes
    middle = [f.key for f in lake.files(table, 2)
              if f.partition_values == {"day": "a"} and f.action.parsed_stats["minValues"]["id"] == 100]
    assert [r.key for r in removed] == middle  # the file of ids 100-198 only
    got = {r["id"]: r["v"] for r in lake.read(table, result.version).collect()}
    assert len(got) == 300 and {k for k, v in got.items() if v == "new"} == {110, 130, 150}
