"""One contract, both backends: every test runs against delta-rs and against delta-spark.

delta-spark needs the Delta JVM jars (`make install` fetches them); without them its half
skips with a reason (CI fails instead).
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
from spark_scoring.lakehouse.base import ProtectedTableError

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
        ({"mode": "merge"}, r"write mode 'merge' is not supported; use one of \['append', 'overwrite'"),
        ({"mode": "upsert"}, r"mode 'upsert' needs the key column \(key=...\)"),
        ({"mode": "upsert", "key": "nope"}, r"columns \['nope'\] are not columns of the rows to write"),
        ({"mode": "append", "key": "id"}, r"key and deletes are arguments of mode 'upsert' only"),
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
    if lake.engine == "delta-spark" or feature == "deletion vectors":
        # The JVM connector reads both features; delta-rs reads a table whose files carry
        # no deletion vector (yet) correctly.
        assert sorted(r["id"] for r in lake.read(table, 0).collect()) == [1, 2]
    else:
        with pytest.raises(UnsupportedTableFeatureError, match=rf"{table}.*uses {feature}.*engine 'delta-spark'"):
            lake.read(table, 0)
    if lake.engine == "delta-rs":
        with pytest.raises(UnsupportedTableFeatureError, match=feature):
            lake.write(lake.spark.createDataFrame([(3, "c")], "id long, day string"), table,
                       mode="append", expected_version=0)
        assert deltalake.DeltaTable(table).version() == 0


def test_files_with_deletion_vectors_read_right_or_are_refused(lake, spark, table):
    """A table the JVM connector DELETEd from with deletion vectors (needs the Delta jars)."""
    if not delta_jars_available(spark):
        pytest.skip("Delta JVM jars are not on the classpath")
    spark.sql(f"CREATE TABLE delta.`{table}` (id long, day string) USING delta PARTITIONED BY (day) "
              "TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    spark.range(0, 6).selectExpr("id", "cast(id % 2 as string) as day").coalesce(1).write.format("delta").mode(
        "append").save(table)
    spark.sql(f"DELETE FROM delta.`{table}` WHERE id = 2")
    files = {f.partition_values["day"]: f for f in lake.files(table, 2)}
    assert files["0"].dv_id is not None and files["1"].dv_id is None and files["0"].num_records == 2
    clean = lake.read(table, 2, files=[files["1"].key]).collect()
    assert sorted(r["id"] for r in clean) == [1, 3, 5]
    if lake.engine == "delta-spark":
        assert sorted(r["id"] for r in lake.read(table, 2).collect()) == [0, 1, 3, 4, 5]
        assert sorted(r["id"] for r in lake.read(table, 2, files=[files["0"].key]).collect()) == [0, 4]
        return
    for kwargs in ({}, {"files": [files["0"].key]}, {"partitions": [{"day": "0"}]}):
        with pytest.raises(UnsupportedTableFeatureError, match=r"uses deletion vectors .*would come back"):
            lake.read(table, 2, **kwargs)


# --------------------------------------------------------------------------- file-level reads


def test_read_of_given_file_states_reads_only_them(lake, spark, table):
    version, rows = _seed(lake, spark, table)
    later = lake.write(_df(spark, _rows({"2024-05-01": range(20, 22)})), table, mode="append",
                       expected_version=version).version
    first = {f.key: f for f in lake.files(table, version)}
    wanted = [f for f in first.values() if f.partition_values["day"] in ("2024-05-02", None)]
    got = lake.read(table, later, files=[f.key for f in wanted], columns=["id", "day"]).collect()
    assert sorted(r["id"] for r in got) == [4, 5, 6, 7, 8]
    entries = lake.files(table, later)
    assert {e.key for e in entries} >= set(first) and all(e.action is not None for e in entries)
    added = [e for e in entries if e.key not in first]
    by_action = lake.read(table, later, files=[e.action for e in added]).collect()  # FileAction objects
    assert sorted(r["id"] for r in by_action) == [20, 21]
    assert lake.read(table, later, files=[]).count() == 0
    with pytest.raises(LakehouseError, match=r"not (a file|files) of version 0"):
        lake.read(table, version, files=[added[0].key]).collect()


# --------------------------------------------------------------------------- what a write did


def test_write_results_count_the_commits_own_actions(lake, spark, table):
    from spark_scoring.lakehouse.deltalog import DeltaLog

    results = [
        lake.write(_df(spark, _rows({"a": range(0, 3), "b": range(3, 5)})), table, mode="append",
                   partition_by=["day"]),
    ]
    results.append(lake.write(_df(spark, _rows({"a": range(10, 12)})), table, mode="replace_partitions",
                              partitions=[{"day": "a"}], expected_version=0))
    results.append(lake.write(_df(spark, _rows({"c": range(20, 21)})), table, mode="append", expected_version=1))
    results.append(lake.write(_df(spark, _rows({"d": range(30, 32)})), table, mode="overwrite",
                              partition_by=["day"], expected_version=2))
    log = DeltaLog(table)
    for result in results:
        commit = log.commit(result.version)
        sizes = {a.path: a.size for a in log.snapshot(result.version - 1).files.values()} if result.version else {}
        assert result.files_added == len(commit.adds) > 0
        assert result.bytes_added == sum(a.size for a in commit.adds) > 0
        assert result.files_removed == len(commit.removes)
        assert result.bytes_removed == sum(a.size if a.size is not None else sizes[a.path] for a in commit.removes)
    assert [r.files_removed > 0 for r in results] == [False, True, False, True]


# --------------------------------------------------------------------------- protected tables


def test_writes_into_a_protected_table_are_refused_under_any_spelling(lake, spark, tmp_path):
    source = tmp_path / "lake" / "source"
    _seed(lake, spark, str(source))
    os.symlink(tmp_path / "lake", tmp_path / "link")
    spellings = {
        "same path": str(source),
        "./ segment": str(tmp_path / "lake" / "." / "source"),
        "trailing slash": str(source) + "/",
        "symlinked folder": str(tmp_path / "link" / "source"),
        "file URI": f"file://{source}",
        "inside": str(source / "scored"),
        "dot-dot": str(source / "sub" / ".." / "scored"),
        "containing folder": str(tmp_path / "lake"),
    }
    rows = _df(spark, _rows({"x": range(100, 101)}))
    for what, target in spellings.items():
        relation = "contains" if what == "containing folder" else (
            "lies inside" if what in ("inside", "dot-dot") else "is the same table as")
        with pytest.raises(ProtectedTableError, match=rf"{relation} the protected table .*Nothing was written"):
            lake.write(rows, target, mode="overwrite", protected=(str(source),))
        assert lake.latest_version(str(source)) == 0, what
    assert not (source / "scored").exists()
    beside = str(tmp_path / "lake" / "source-scored")  # a shared name prefix is not inside
    assert lake.write(rows, beside, mode="append", protected=(str(source) + "/",)).version == 0


def test_a_catalog_name_is_protected_by_its_location(lake, spark, tmp_path):
    if lake.engine == "delta-rs":
        with pytest.raises(LakehouseError, match=r"catalog table name.*JVM Delta connector"):
            lake.write(_df(spark, _rows({"x": range(1)})), str(tmp_path / "out"), mode="append",
                       protected=("default.rs_protected_source",))
        return
    name = "default.rs_protected_source"
    spark.sql(f"DROP TABLE IF EXISTS {name}")
    _df(spark, _rows({"x": range(3)})).write.format("delta").saveAsTable(name)
    try:
        where = lake.location(name)
        with pytest.raises(ProtectedTableError, match=r"is the same table as the protected table 'default.rs_protected"):
            lake.write(_df(spark, _rows({"x": range(5, 6)})), where, mode="overwrite", protected=(name,))
        with pytest.raises(ProtectedTableError, match="lies inside"):
            lake.write(_df(spark, _rows({"x": range(5, 6)})), where + "/out", mode="append", protected=(name,))
        assert spark.table(name).count() == 3
    finally:
        spark.sql(f"DROP TABLE IF EXISTS {name}")
