"""One contract, both backends: every test runs against delta-rs and against delta-spark.

delta-spark needs the Delta JVM jars, which cannot be installed on the development
machines; there its half skips with a reason and runs on clusters that have the jars.
Tables are real Delta tables on tmp_path, checked through the backend itself AND through
`deltalake` directly (values, not just counts).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import deltalake
import pyarrow as pa
import pytest
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DateType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from spark_scoring.errors import ConcurrentRunError, LakehouseError, UnsupportedTableFeatureError
from spark_scoring.lakehouse import Lakehouse, delta_jars_available, open_lakehouse

UTC = dt.timezone.utc

SCHEMA = StructType(
    [
        StructField("id", LongType()),
        StructField("day", StringType()),
        StructField("text", StringType()),
        StructField("n", IntegerType()),
        StructField("score", DoubleType()),
        StructField("ratio", FloatType()),
        StructField("ok", BooleanType()),
        StructField("d", DateType()),
        StructField("ts", TimestampType()),
        StructField("embedding", ArrayType(FloatType())),
        StructField("scores", MapType(StringType(), DoubleType())),
    ]
)


def _row(i: int, day: str | None) -> tuple:
    return (
        i,
        day,
        f"text {i} ü😀" if i % 3 else None,
        i * 10 if i % 4 else None,
        i + 0.25,
        float(i) / 2,
        i % 2 == 0,
        dt.date(2024, 5, 1) + dt.timedelta(days=i),
        dt.datetime(2024, 5, 1, 8, 30, 0, (i * 1001) % 1_000_000, tzinfo=UTC),
        [float(i), 0.5] if i % 5 else [],
        {"pos": i / 10, "neg": 1 - i / 10} if i % 2 else None,
    )


def _rows(days: dict[str | None, range]) -> list[tuple]:
    return [_row(i, day) for day, ids in days.items() for i in ids]


@pytest.fixture(params=["delta-rs", "delta-spark"])
def lake(request, spark) -> Lakehouse:
    if request.param == "delta-spark" and not delta_jars_available(spark):
        pytest.skip("Delta JVM jars are not on the classpath (no Maven access here)")
    return open_lakehouse(spark, request.param)


@pytest.fixture
def table(tmp_path) -> str:
    return str(tmp_path / "tbl")


def _df(spark, rows, schema=SCHEMA):
    return spark.createDataFrame(rows, schema)


def _spark_values(df) -> list[dict]:
    """Rows as dicts sorted by id; timestamps as epoch microseconds (no local-zone games)."""
    cols = [F.unix_micros(c).alias(c) if c == "ts" else F.col(c) for c in df.columns]
    rows = [r.asDict(recursive=True) for r in df.select(*cols).collect()]
    return sorted(rows, key=lambda r: r["id"])


def _expected_values(rows: list[tuple], schema=SCHEMA) -> list[dict]:
    out = []
    for row in rows:
        record = dict(zip(schema.fieldNames(), row, strict=True))
        if "ts" in record and record["ts"] is not None:
            record["ts"] = int(record["ts"].timestamp()) * 1_000_000 + record["ts"].microsecond
        if "day" in record and record["day"] == "":
            record["day"] = None  # Delta stores an empty partition value as null
        out.append(record)
    return sorted(out, key=lambda r: r["id"])


def _deltalake_values(path: str, version: int | None = None) -> list[dict]:
    """The table as `deltalake` itself reads it, in the same form as `_spark_values`."""
    table = pa.table(deltalake.DeltaTable(path, version=version).to_pyarrow_table())
    rows = []
    for record in table.to_pylist():
        if record.get("ts") is not None:
            stamp = record["ts"]
            record["ts"] = int(stamp.replace(tzinfo=UTC).timestamp()) * 1_000_000 + stamp.microsecond
        if record.get("scores") is not None:
            record["scores"] = dict(record["scores"])
        rows.append(record)
    return sorted(rows, key=lambda r: r["id"])


def _commit_actions(path: str, version: int) -> list[dict]:
    log_file = Path(path) / "_delta_log" / f"{version:020d}.json"
    return [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]


def _approx(records: list[dict]) -> list[dict]:
    """Float32 columns compared at float32 precision."""
    for r in records:
        if r.get("ratio") is not None:
            r["ratio"] = round(r["ratio"], 5)
        if r.get("embedding") is not None:
            r["embedding"] = [round(x, 5) for x in r["embedding"]]
    return records


def _seed(lake, spark, table, days=None) -> tuple[int, list[tuple]]:
    rows = _rows(days or {"2024-05-01": range(0, 4), "2024-05-02": range(4, 7), None: range(7, 9)})
    result = lake.write(_df(spark, rows), table, mode="append", partition_by=["day"])
    return result.version, rows


# --------------------------------------------------------------------------- round trips


def test_write_then_read_back_identically_through_spark_and_deltalake(lake, spark, table):
    version, rows = _seed(lake, spark, table)
    assert version == 0
    assert lake.exists(table) and lake.latest_version(table) == 0
    assert lake.partition_columns(table) == ["day"]
    assert lake.schema(table).fieldNames() == SCHEMA.fieldNames()
    assert [f.dataType for f in lake.schema(table).fields] == [f.dataType for f in SCHEMA.fields]

    expected = _approx(_expected_values(rows))
    assert _approx(_spark_values(lake.read(table, version))) == expected
    assert _approx(_deltalake_values(table)) == expected

    files = lake.files(table, version)
    assert sorted({f.partition_values["day"] for f in files}, key=str) == ["2024-05-01", "2024-05-02", None]
    assert sum(f.num_records for f in files) == len(rows)
    assert all(os.path.exists(f.path) and f.size > 0 for f in files)


def test_projection_returns_only_the_asked_columns(lake, spark, table):
    version, rows = _seed(lake, spark, table)
    df = lake.read(table, version, columns=["id", "day", "embedding"])
    assert df.columns == ["id", "day", "embedding"]
    got = sorted((r["id"], r["day"], r["embedding"]) for r in df.collect())
    assert got == sorted((r[0], r[1], r[9]) for r in rows)


def test_pinned_version_ignores_later_commits(lake, spark, table):
    version, rows = _seed(lake, spark, table)
    later = lake.write(_df(spark, _rows({"2024-05-03": range(20, 25)})), table, mode="append",
                       expected_version=version)
    assert later.version == version + 1
    assert sorted(r["id"] for r in lake.read(table, version).collect()) == sorted(r[0] for r in rows)
    assert lake.read(table, later.version).count() == len(rows) + 5
    assert len(_deltalake_values(table, version)) == len(rows)


def test_partition_pruning_reads_only_the_requested_partitions(lake, spark, table):
    version, rows = _seed(lake, spark, table)
    wanted = [{"day": "2024-05-02"}, {"day": None}]
    df = lake.read(table, version, partitions=wanted)
    assert sorted(r["id"] for r in df.collect()) == [4, 5, 6, 7, 8]
    assert {r["day"] for r in df.select("day").collect()} == {"2024-05-02", None}

    if lake.engine == "delta-rs":
        planned = [p for group in lake.read_plan(table, version, partitions=wanted) for p in group]
        by_day = {f.path: f.partition_values["day"] for f in lake.files(table, version)}
        assert planned and {by_day[p] for p in planned} == {"2024-05-02", None}
        # Files of the other partitions are never opened: reading works without them.
        for path, day in by_day.items():
            if day == "2024-05-01":
                os.remove(path)
        assert lake.read(table, version, partitions=wanted).count() == 5


# --------------------------------------------------------------------------- writes


def test_replace_partitions_replaces_exactly_those_in_one_commit(lake, spark, table):
    version, rows = _seed(lake, spark, table)
    before = {f.path: f.partition_values["day"] for f in lake.files(table, version)}
    new_rows = _rows({"2024-05-02": range(100, 102), "2024-05-09": range(102, 103)})
    result = lake.write(
        _df(spark, new_rows), table, mode="replace_partitions",
        partitions=[{"day": "2024-05-02"}, {"day": "2024-05-09"}], expected_version=version,
        metadata={"spark_scoring.run_id": "r-1"},
    )
    assert result.version == version + 1 == lake.latest_version(table)
    assert result.rows_written == 3

    kept = [r for r in rows if r[1] != "2024-05-02"]
    expected = _approx(_expected_values(kept + new_rows))
    assert _approx(_spark_values(lake.read(table, result.version))) == expected
    assert _approx(_deltalake_values(table)) == expected

    actions = _commit_actions(table, result.version)
    removed = [a["remove"] for a in actions if "remove" in a]
    added = [a["add"] for a in actions if "add" in a]
    assert {r["partitionValues"]["day"] for r in removed} == {"2024-05-02"}
    assert len(removed) == sum(1 for day in before.values() if day == "2024-05-02")
    assert {a["partitionValues"]["day"] for a in added} == {"2024-05-02", "2024-05-09"}


def test_overwrite_replaces_the_table_and_its_schema(lake, spark, table):
    version, _ = _seed(lake, spark, table)
    schema = StructType([StructField("id", LongType()), StructField("label", StringType())])
    result = lake.write(_df(spark, [(1, "a"), (2, None)], schema), table, mode="overwrite",
                        expected_version=version)
    assert result.version == version + 1
    assert lake.schema(table).fieldNames() == ["id", "label"]
    assert lake.partition_columns(table) == []
    assert sorted(tuple(r) for r in lake.read(table, result.version).collect()) == [(1, "a"), (2, None)]
    assert _deltalake_values(table) == [{"id": 1, "label": "a"}, {"id": 2, "label": None}]
    # The old version is still there to read.
    assert lake.read(table, version).count() == 9


def test_append_adds_rows_and_keeps_the_old_ones(lake, spark, table):
    version, rows = _seed(lake, spark, table)
    extra = _rows({"2024-05-01": range(50, 52)})
    result = lake.write(_df(spark, extra), table, mode="append", expected_version=version)
    assert result.version == version + 1 and result.files_added >= 1
    expected = _approx(_expected_values(rows + extra))
    assert _approx(_spark_values(lake.read(table, result.version))) == expected
    assert _approx(_deltalake_values(table)) == expected
    assert not any("remove" in a for a in _commit_actions(table, result.version))


def test_transaction_version_is_recorded_and_replays_are_skipped(lake, spark, table):
    rows = _rows({"2024-05-01": range(3)})
    first = lake.write(_df(spark, rows), table, mode="append", partition_by=["day"],
                       app_id="nightly-job", txn_version=5)
    assert lake.transaction_version(table, "nightly-job") == 5
    assert lake.transaction_version(table, "another-app") is None

    replay = lake.write(_df(spark, rows), table, mode="append", expected_version=first.version,
                        app_id="nightly-job", txn_version=5)
    assert replay.version is None
    assert lake.latest_version(table) == first.version
    assert lake.read(table, first.version).count() == 3

    nxt = lake.write(_df(spark, _rows({"2024-05-02": range(3, 4)})), table, mode="append",
                     expected_version=first.version, app_id="nightly-job", txn_version=6)
    assert nxt.version == first.version + 1
    assert lake.transaction_version(table, "nightly-job") == 6
    assert lake.transaction_version(table, "nightly-job", version=first.version) == 5


def test_commit_metadata_is_in_history_newest_first(lake, spark, table):
    version, _ = _seed(lake, spark, table)
    meta = {"spark_scoring.run_id": "run-42", "spark_scoring.partitions": '["2024-05-01"]'}
    result = lake.write(_df(spark, _rows({"2024-05-01": range(60, 61)})), table, mode="replace_partitions",
                        partitions=[{"day": "2024-05-01"}], expected_version=version, metadata=meta)
    history = lake.history(table)
    assert [c.version for c in history] == [result.version, version]
    assert {k: history[0].metadata.get(k) for k in meta} == meta
    assert history[0].timestamp is not None and history[0].timestamp.tzinfo is not None
    assert "spark_scoring.run_id" not in history[1].metadata
    assert [c.version for c in lake.history(table, limit=1)] == [result.version]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "upsert"}, r"write mode 'upsert' is not supported; use one of \['append', 'overwrite'"),
        ({"mode": "append", "app_id": "job"}, r"give app_id and txn_version together"),
        ({"mode": "append", "metadata": {"operation": "x"}}, r"keys \['operation'\] are reserved by Delta"),
        ({"mode": "append", "metadata": {"spark_scoring.n": 7}}, r"keys \['spark_scoring.n'\] .*non-string values"),
        ({"mode": "append", "metadata": {7: "x"}}, r"keys \[7\] are reserved by Delta or have non-string"),
        ({"mode": "replace_partitions"}, r"'replace_partitions' needs the partitions to replace; none"),
        ({"mode": "replace_partitions", "partitions": [{"id": "1"}]}, r"names \['id'\], which are not partition"),
        ({"mode": "replace_partitions", "partitions": [{"day": 1}]}, r"must be given in Delta string form"),
    ],
)
def test_bad_write_arguments_are_refused_before_anything_is_written(lake, spark, table, kwargs, message):
    """Lakehouse.write checks these once, for every backend, before the engine runs."""
    version, _ = _seed(lake, spark, table)
    with pytest.raises(LakehouseError, match=message):
        lake.write(_df(spark, _rows({"2024-05-01": range(50, 51)})), table, expected_version=version, **kwargs)
    assert lake.latest_version(table) == version


def test_replace_partitions_needs_a_partitioned_table_and_its_columns(lake, spark, table):
    flat = lake.write(_df(spark, _rows({"a": range(2)})), table, mode="append").version
    with pytest.raises(LakehouseError, match=r"needs a partitioned table; .* has no partition columns"):
        lake.write(_df(spark, _rows({"a": range(2, 3)})), table, mode="replace_partitions",
                   partitions=[{"day": "a"}], expected_version=flat)
    other = table + "-by-day"
    version, _ = _seed(lake, spark, other)
    with pytest.raises(LakehouseError, match=r"partition columns \['day'\] are not columns of the rows"):
        lake.write(_df(spark, _rows({"x": range(50, 51)})).drop("day"), other, mode="replace_partitions",
                   partitions=[{"day": "2024-05-01"}], expected_version=version)
    assert lake.latest_version(table) == flat and lake.latest_version(other) == version


def test_stale_expected_version_raises_and_publishes_nothing(lake, spark, table):
    version, rows = _seed(lake, spark, table)
    lake.write(_df(spark, _rows({"2024-05-05": range(30, 31)})), table, mode="append",
               expected_version=version)
    with pytest.raises(ConcurrentRunError, match=r"moved from version 0 to 1 .*another run committed; rerun"):
        lake.write(_df(spark, _rows({"2024-05-01": range(40, 41)})), table, mode="replace_partitions",
                   partitions=[{"day": "2024-05-01"}], expected_version=version)
    assert lake.latest_version(table) == version + 1
    assert sorted(r["id"] for r in lake.read(table, version + 1).collect()) == sorted(
        [r[0] for r in rows] + [30]
    )


def test_empty_replace_removes_the_partition(lake, spark, table):
    version, rows = _seed(lake, spark, table)
    result = lake.write(_df(spark, []), table, mode="replace_partitions",
                        partitions=[{"day": "2024-05-01"}], expected_version=version)
    assert result.version == version + 1
    left = sorted(r[0] for r in rows if r[1] != "2024-05-01")
    assert sorted(r["id"] for r in lake.read(table, result.version).collect()) == left
    assert [r["id"] for r in _deltalake_values(table)] == left


# --------------------------------------------------------------------------- hostile values

HOSTILE = ["it's", 'say "hi"', "a b", "x/y", "k=v", "100%", "%2F", "ünïcødé", "😀"]


def test_hostile_partition_values_round_trip_and_replace_individually(lake, spark, table):
    days = {value: range(i * 2, i * 2 + 2) for i, value in enumerate(HOSTILE)}
    days[""] = range(100, 101)  # an empty string is the null partition in Delta
    days[None] = range(101, 102)
    rows = _rows(days)
    version = lake.write(_df(spark, rows), table, mode="append", partition_by=["day"]).version

    got = {r["id"]: r["day"] for r in lake.read(table, version).select("id", "day").collect()}
    expected = {r[0]: (r[1] or None) for r in rows}
    assert got == expected
    assert {r["id"]: r["day"] for r in _deltalake_values(table)} == expected
    assert {f.partition_values["day"] for f in lake.files(table, version)} == {*HOSTILE, None}

    for value in ["it's", 'say "hi"', "x/y", "%2F", "😀", None]:
        replacement = _rows({value: range(1000 + len(expected), 1001 + len(expected))})
        result = lake.write(_df(spark, replacement), table, mode="replace_partitions",
                            partitions=[{"day": value}], expected_version=version)
        assert result.version == version + 1
        version = result.version
        expected = {k: v for k, v in expected.items() if v != value}
        expected[replacement[0][0]] = value
        got = {r["id"]: r["day"] for r in lake.read(table, version).select("id", "day").collect()}
        assert got == expected, value
        partition = lake.read(table, version, partitions=[{"day": value}]).select("id").collect()
        assert [r["id"] for r in partition] == [replacement[0][0]]
    assert {r["id"]: r["day"] for r in _deltalake_values(table)} == expected


# --------------------------------------------------------------------------- unsupported features


@pytest.mark.parametrize(
    ("feature", "configuration"),
    [
        ("deletion vectors", {"delta.enableDeletionVectors": "true"}),
        ("column mapping", {"delta.columnMapping.mode": "name"}),
    ],
)
def test_tables_with_deletion_vectors_or_column_mapping(lake, table, feature, configuration):
    data = pa.table({"id": pa.array([1, 2], pa.int64()), "day": ["a", "b"]})
    deltalake.write_deltalake(table, data, partition_by=["day"], configuration=configuration)
    if lake.engine == "delta-spark":  # the JVM connector reads both features correctly
        assert sorted(r["id"] for r in lake.read(table, 0).collect()) == [1, 2]
        return
    with pytest.raises(UnsupportedTableFeatureError, match=rf"{table}.*uses {feature}.*engine 'delta-spark'"):
        lake.read(table, 0)
    with pytest.raises(UnsupportedTableFeatureError, match=feature):
        lake.write(lake.spark.createDataFrame([(3, "c")], "id long, day string"), table,
                   mode="append", expected_version=0)
    assert deltalake.DeltaTable(table).version() == 0
