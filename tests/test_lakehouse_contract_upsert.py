"""The "upsert" write mode, one contract for both backends (the rest of the contract is in
test_lakehouse_contract.py).

An upsert by key: the table's rows whose (partition values and) key is in the rows or in
the deletes leave the table, the rows enter it, in ONE commit; other rows stay, and only
the files that can hold an affected key are removed. Checked on real tables, through the
backend, through `deltalake`, and through the commit's own actions in the Delta log.
"""

from __future__ import annotations

import pytest

from spark_scoring.errors import ConcurrentRunError, LakehouseError
from spark_scoring.lakehouse import delta_jars_available, open_lakehouse
from spark_scoring.lakehouse.deltalog import DeltaLog

SCHEMA = "id long, day string, v string"
LAYOUTS = {"partitioned": ["day"], "unpartitioned": []}


@pytest.fixture(name="lake", params=["delta-rs", "delta-spark"])
def _lake(request, spark):
    if request.param == "delta-spark" and not delta_jars_available(spark):
        pytest.skip("Delta JVM jars are not on the classpath")
    return open_lakehouse(spark, request.param)


@pytest.fixture(name="table")
def _table(tmp_path) -> str:
    return str(tmp_path / "tbl")


def _seed(lake, spark, table, partition_by):
    """Three files with disjoint keys: ids 0-9 (day a), 10-19 (day b), 20-29 (day c)."""
    version = None
    for i, day in enumerate("abc"):
        rows = [(n, day, f"old-{n}") for n in range(i * 10, i * 10 + 10)]
        result = lake.write(lake.spark.createDataFrame(rows, SCHEMA).coalesce(1), table, mode="append",
                            partition_by=partition_by, expected_version=version)
        version = result.version
    return version


def _table_rows(table: str) -> dict[int, tuple[str, str]]:
    import deltalake

    data = deltalake.DeltaTable(table).to_pyarrow_table().to_pylist()
    return {r["id"]: (r["day"], r["v"]) for r in data}


def _old(ids) -> dict[int, tuple[str, str]]:
    return {n: ("abc"[n // 10], f"old-{n}") for n in ids}


def _upsert(lake, spark, table, version, rows, deletes=None, **kwargs):
    deletes_df = spark.createDataFrame(deletes, "id long, day string") if deletes is not None else None
    return lake.write(spark.createDataFrame(rows, SCHEMA), table, mode="upsert", key="id",
                      deletes=deletes_df, expected_version=version, **kwargs)


def _commit(table: str, version: int):
    return DeltaLog(table).commit(version)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_an_upsert_touching_one_file_removes_exactly_that_file(lake, spark, table, layout):
    version = _seed(lake, spark, table, LAYOUTS[layout])
    before = {f.key: f for f in lake.files(table, version)}
    holding = [f for f in before.values() if f.action.parsed_stats["minValues"]["id"] == 10]  # ids 10-19
    assert len(before) == 3 and len(holding) == 1
    result = _upsert(lake, spark, table, version, [(12, "b", "new-12"), (99, "c", "new-99")],
                     metadata={"spark_scoring.run_id": "u1"})
    assert result.version == version + 1
    commit = _commit(table, result.version)
    assert [r.key for r in commit.removes] == [holding[0].key]
    assert result.files_removed == 1 and result.bytes_removed == holding[0].size
    assert result.files_added == len(commit.adds) >= 1 and result.bytes_added == commit.bytes_added
    expected = {**_old(range(30)), 12: ("b", "new-12"), 99: ("c", "new-99")}
    assert _table_rows(table) == expected
    got = {r["id"]: (r["day"], r["v"]) for r in lake.read(table, result.version).collect()}
    assert got == expected
    assert lake.history(table, limit=1)[0].metadata["spark_scoring.run_id"] == "u1"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_deletes_remove_their_rows_and_rewrite_only_their_files(lake, spark, table, layout):
    version = _seed(lake, spark, table, LAYOUTS[layout])
    result = _upsert(lake, spark, table, version, [], deletes=[(3, "a"), (4, "a"), (777, "a")])
    commit = _commit(table, result.version)
    assert len(commit.removes) == 1 and {a.partition_values.get("day", "a") for a in commit.removes} == {"a"}
    assert _table_rows(table) == _old(n for n in range(30) if n not in (3, 4))


def test_rows_that_are_all_new_remove_nothing(lake, spark, table):
    version = _seed(lake, spark, table, ["day"])
    result = _upsert(lake, spark, table, version, [(100, "a", "new"), (101, "z", "new")])
    assert result.files_removed == 0 and result.bytes_removed == 0
    assert not _commit(table, result.version).removes
    assert _table_rows(table) == {**_old(range(30)), 100: ("a", "new"), 101: ("z", "new")}
    assert {f.partition_values["day"] for f in lake.files(table, result.version)} == {"a", "b", "c", "z"}


def test_a_row_moving_partition_leaves_its_old_partition_through_deletes(lake, spark, table):
    version = _seed(lake, spark, table, ["day"])
    # id 5 moves from a to z; id 15 is deleted; id 25 is updated in place.
    result = _upsert(lake, spark, table, version, [(5, "z", "moved"), (25, "c", "new-25")],
                     deletes=[(5, "a"), (15, "b")])
    expected = {**_old(n for n in range(30) if n not in (5, 15)), 5: ("z", "moved"), 25: ("c", "new-25")}
    assert _table_rows(table) == expected
    assert {r.partition_values["day"] for r in _commit(table, result.version).removes} == {"a", "b", "c"}


def test_an_upsert_on_a_moved_table_fails_and_publishes_nothing(lake, spark, table):
    version = _seed(lake, spark, table, ["day"])
    lake.write(spark.createDataFrame([(50, "d", "other")], SCHEMA), table, mode="append", expected_version=version)
    with pytest.raises(ConcurrentRunError, match=rf"moved from version {version} to {version + 1}"):
        _upsert(lake, spark, table, version, [(1, "a", "lost")])
    assert lake.latest_version(table) == version + 1
    assert _table_rows(table) == {**_old(range(30)), 50: ("d", "other")}


def test_an_upsert_replayed_with_a_recorded_transaction_is_skipped(lake, spark, table):
    version = _seed(lake, spark, table, ["day"])
    first = _upsert(lake, spark, table, version, [(1, "a", "night-7")], app_id="job", txn_version=7)
    assert lake.transaction_version(table, "job") == 7
    replay = _upsert(lake, spark, table, first.version, [(1, "a", "again")], app_id="job", txn_version=7)
    assert replay.version is None and lake.latest_version(table) == first.version
    assert _table_rows(table)[1] == ("a", "night-7")


def test_an_upsert_creates_a_missing_table_and_refuses_null_keys(lake, spark, table):
    created = lake.write(spark.createDataFrame([(1, "a", "x")], SCHEMA), table, mode="upsert", key="id",
                         partition_by=["day"])
    assert created.version == 0 and lake.partition_columns(table) == ["day"]
    with pytest.raises(LakehouseError, match=r"null 'id'|key"):
        _upsert(lake, spark, table, 0, [(None, "a", "no key")])
    assert lake.latest_version(table) == 0
