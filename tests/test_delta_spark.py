"""The JVM engine (delta-spark) on tables the JVM connector writes itself.

Deletion vectors, row tracking, liquid clustering, column mapping and in-commit timestamps,
each on a real table made with SQL in the shared session; the planned-version check inside
Delta's transaction (a commit landing in the window, two writers racing); merge-on-read
against copy-on-write upserts; the Delta log read through Spark's own Hadoop file system.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from spark_scoring.errors import ConcurrentRunError, LakehouseError, UnsupportedTableFeatureError
from spark_scoring.jars import find_delta_jars
from spark_scoring.lakehouse import delta_spark
from spark_scoring.lakehouse.delta_rs import DeltaRsLakehouse
from spark_scoring.lakehouse.delta_spark import DeltaSparkLakehouse

pytestmark = pytest.mark.skipif(find_delta_jars() is None, reason="Delta jars not installed (make install)")

ROWS = "id BIGINT, day STRING, v STRING"
P, Q = "it's 100%", "a+b ü"


@pytest.fixture
def lake(spark) -> DeltaSparkLakehouse:
    return DeltaSparkLakehouse(spark)


def _sql_table(spark, path: Path, clause: str = "", partitioned: bool = True) -> str:
    """A Delta table made by the JVM connector's own SQL: two INSERTs of one file per day
    each, ids 1-4 then 5-8, days "it's 100%" (P) and "a+b ü" (Q):
    {1, 2, 3} P, {4} Q, {5} P, {6, 7, 8} Q."""
    target = f"delta.`{path}`"
    partitioning = "PARTITIONED BY (day)" if partitioned and "CLUSTER BY" not in clause else ""
    spark.sql(f"CREATE TABLE {target} ({ROWS}) USING delta {partitioning} {clause}")
    for ids in ((1, 2, 3, 4), (5, 6, 7, 8)):
        days = {i: (P if i in (1, 2, 3, 5) else Q).replace("'", "''") for i in ids}
        values = ", ".join(f"({i}, '{days[i]}', 'v{i}')" for i in ids)
        spark.sql(f"INSERT INTO {target} SELECT /*+ REPARTITION(1) */ * FROM VALUES {values} AS s(id, day, v)")
    return target


def _ids(df) -> list[int]:
    return sorted(r["id"] for r in df.select("id").collect())


def _commit(path: Path, version: int) -> list[dict]:
    return [json.loads(line) for line in (path / "_delta_log" / f"{version:020d}.json").read_text().splitlines()]


# --------------------------------------------------------------------------- deletion vectors


def test_dml_by_deletion_vector_is_a_change_of_exactly_that_file(lake, spark, tmp_path):
    path = tmp_path / "root with space, 100% + ü"
    target = _sql_table(spark, path, "TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    before = lake.latest_version(str(path))
    files_before = {f.key: f for f in lake.files(str(path), before)}
    holding = {k: _ids(lake.read(str(path), before, files=[k])) for k in files_before}
    assert sorted(holding.values()) == [[1, 2, 3], [4], [5], [6, 7, 8]]
    (first,) = [k for k, ids in holding.items() if 2 in ids]
    (second,) = [k for k, ids in holding.items() if 7 in ids]

    spark.sql(f"DELETE FROM {target} WHERE id = 2")
    after = lake.latest_version(str(path))
    change = lake.changes(str(path), before, after)
    assert list(change.removed) == [first]  # exactly that file state left ...
    (dv_key,) = change.added  # ... and came back with a deletion vector, same path
    assert dv_key[0] == first[0] and dv_key[1] is not None and first[1] is None
    assert change.added[dv_key].deleted_rows == 1
    # Reading that file state applies the version's deletion vector; the old state had the row.
    assert _ids(lake.read(str(path), after, files=[dv_key])) == [1, 3]
    assert _ids(lake.read(str(path), before, files=[first])) == [1, 2, 3]
    with pytest.raises(LakehouseError, match=rf"is not a file of version {after} of"):
        lake.read(str(path), after, files=[first])
    live = {f.key: f.num_records for f in lake.files(str(path), after)}
    assert live[dv_key] == 2 and sum(live.values()) == 7

    spark.sql(f"UPDATE {target} SET v = 'z' WHERE id = 6")
    updated = lake.latest_version(str(path))
    change = lake.changes(str(path), after, updated)
    assert list(change.removed) == [second]  # the row's file, marked by a deletion vector ...
    rows = {r["id"]: r["v"] for r in lake.read(str(path), updated, files=list(change.added)).collect()}
    assert rows == {6: "z", 7: "v7", 8: "v8"}  # ... plus a new file with the updated row

    spark.sql(f"MERGE INTO {target} t USING (SELECT 7L AS id) s ON t.id = s.id WHEN MATCHED THEN DELETE")
    merged = lake.latest_version(str(path))
    change = lake.changes(str(path), updated, merged)
    (gone,), (back,) = change.removed, change.added
    assert gone[0] == back[0] == second[0] and gone[1] != back[1] and change.added[back].deleted_rows == 2
    assert _ids(lake.read(str(path), merged)) == [1, 3, 4, 5, 6, 8]


# --------------------------------------------------------------------------- table features

FEATURES = {  # the feature as Delta's protocol names it: the CREATE TABLE clause that turns it on
    "deletionVectors": "TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')",
    "rowTracking": "TBLPROPERTIES ('delta.enableRowTracking' = 'true')",
    "clustering": "CLUSTER BY (day)",
    "columnMapping": "TBLPROPERTIES ('delta.columnMapping.mode' = 'name')",
    "inCommitTimestamp": "TBLPROPERTIES ('delta.enableInCommitTimestamps' = 'true')",
}


@pytest.mark.parametrize("feature", FEATURES)
def test_tables_with_newer_features_read_correctly_and_delta_rs_never_reads_or_writes_them_wrongly(
    lake, spark, tmp_path, feature
):
    path = tmp_path / feature
    target = _sql_table(spark, path, FEATURES[feature])
    spark.sql(f"UPDATE {target} SET v = 'z' WHERE id = 2")
    spark.sql(f"DELETE FROM {target} WHERE id = 7")
    if feature == "columnMapping":  # physical names now differ from the column names
        spark.sql(f"ALTER TABLE {target} RENAME COLUMN v TO w")
    version = lake.latest_version(str(path))
    truth = sorted(tuple(r) for r in spark.read.format("delta").load(str(path)).collect())
    assert len(truth) == 7 and ("z" in {r[2] for r in truth})

    assert feature in lake.log(str(path)).state(version).protocol.features
    assert sorted(tuple(r) for r in lake.read(str(path), version).collect()) == truth
    assert lake.schema(str(path), version).fieldNames() == spark.read.format("delta").load(str(path)).columns
    assert sum(f.num_records for f in lake.files(str(path), version)) == 7
    assert {f.partition_values.get("day") for f in lake.files(str(path), version)} <= {P, Q, None}
    assert [c.operation for c in lake.history(str(path))][:2] in (
        ["RENAME COLUMN", "DELETE"], ["DELETE", "UPDATE"]
    )
    if feature == "inCommitTimestamp":
        stamp = next(a["commitInfo"]["inCommitTimestamp"] for a in _commit(path, version) if "commitInfo" in a)
        assert int(lake.history(str(path), 1)[0].timestamp.timestamp() * 1000) == stamp

    # delta-rs: the same rows, or a refusal that names the feature; never other rows.
    rs = DeltaRsLakehouse(spark)
    try:
        got = sorted(tuple(r) for r in rs.read(str(path), version).collect())
    except UnsupportedTableFeatureError as exc:
        assert feature.lower().replace("vectors", "") in str(exc).replace(" ", "").lower() or feature in str(exc)
    else:
        assert got == truth
    extra = spark.createDataFrame([(9, Q, "g")], spark.read.format("delta").load(str(path)).schema)
    try:
        rs.write(extra, str(path), mode="append", expected_version=version)
    except UnsupportedTableFeatureError as exc:
        assert feature in str(exc)
        assert lake.latest_version(str(path)) == version
    else:  # written: the JVM connector must read every row, the new one included
        assert sorted(tuple(r) for r in spark.read.format("delta").load(str(path)).collect()) == sorted(
            [*truth, (9, Q, "g")]
        )


# --------------------------------------------------------------------------- the planned version


def _seeded(lake, spark, path: Path) -> int:
    rows = [(i, "ab"[i % 2], f"v{i}") for i in range(8)]
    return lake.write(spark.createDataFrame(rows, ROWS.lower()), str(path), mode="append", partition_by=["day"],
                      app_id="job", txn_version=1).version


MODES = {
    "append": {},
    "replace_partitions": {"partitions": [{"day": "a"}]},
    "upsert": {"key": "id"},
}


@pytest.mark.parametrize("mode", MODES)
def test_a_commit_landing_before_deltas_transaction_starts_fails_the_write(lake, spark, tmp_path, mode):
    """The version check of Lakehouse.write ran, then another run committed, then this
    write's Delta transaction started: the guard inside the transaction must catch it."""
    path = tmp_path / "t"
    version = _seeded(lake, spark, path)
    other = DeltaSparkLakehouse(spark)
    checked = lake._write_preconditions

    def then_another_run_commits(*args, **kwargs):
        outcome = checked(*args, **kwargs)
        other.write(spark.createDataFrame([(100, "a", "other")], ROWS.lower()), str(path), mode="append",
                    expected_version=version, app_id="job", txn_version=2)
        return outcome

    lake._write_preconditions = then_another_run_commits
    mine = spark.createDataFrame([(0, "a", "mine"), (200, "a", "mine")], ROWS.lower())
    with pytest.raises(ConcurrentRunError, match=rf"moved from version {version} to {version + 1}"):
        lake.write(mine, str(path), mode=mode, expected_version=version, app_id="job", txn_version=3, **MODES[mode])
    assert lake.latest_version(str(path)) == version + 1
    assert _ids(lake.read(str(path), version + 1)) == [*range(8), 100]
    assert lake.transaction_version(str(path), "job") == 2


@pytest.mark.parametrize("mode", ["replace_partitions", "upsert"])
def test_two_writers_racing_publish_exactly_one(spark, tmp_path, mode):
    """Two runs of one job (separate sessions, as two driver threads would have) planned on
    the same version write at once: one publishes, the other fails or is skipped."""
    path = tmp_path / "t"
    version = _seeded(DeltaSparkLakehouse(spark), spark, path)
    start = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def run(name: str, txn: int) -> None:
        session = spark.newSession()
        lake = DeltaSparkLakehouse(session)
        rows = session.createDataFrame([(0, "a", name), (300 + txn, "a", name)], ROWS.lower())
        start.wait()
        try:
            outcomes[name] = lake.write(rows, str(path), mode=mode, expected_version=version, app_id="job",
                                        txn_version=txn, **MODES[mode]).version
        except ConcurrentRunError as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=run, args=(n, t)) for n, t in (("first", 5), ("second", 6))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    published = [n for n, o in outcomes.items() if o == version + 1]
    assert len(published) == 1, outcomes
    (loser,) = set(outcomes) - set(published)
    assert outcomes[loser] is None or isinstance(outcomes[loser], ConcurrentRunError), outcomes
    lake = DeltaSparkLakehouse(spark)
    assert lake.latest_version(str(path)) == version + 1
    rows = {r["id"]: r["v"] for r in lake.read(str(path), version + 1).collect()}
    assert rows[0] == published[0] and not any(v == loser for v in rows.values())


def test_upsert_leaves_no_session_conf_behind_even_when_it_fails(lake, spark, tmp_path):
    path = tmp_path / "t"
    version = _seeded(lake, spark, path)
    confs = (delta_spark.TXN_APP_ID_CONF, delta_spark.TXN_VERSION_CONF, delta_spark.USER_METADATA_CONF)
    done = lake.write(spark.createDataFrame([(1, "b", "new")], ROWS.lower()), str(path), mode="upsert", key="id",
                      expected_version=version, app_id="job", txn_version=2, metadata={"spark_scoring.run": "r"})
    assert done.version == version + 1 and done.rows_written == 1
    assert [spark.conf.get(c, None) for c in confs] == [None, None, None]
    assert lake.history(str(path), 1)[0].metadata["spark_scoring.run"] == "r"
    bad = spark.createDataFrame([(2, "a", "x")], ROWS.lower()).withColumn("v", F.raise_error(F.lit("boom")))
    with pytest.raises(LakehouseError, match="boom"):
        lake.write(bad, str(path), mode="upsert", key="id", expected_version=done.version, app_id="job", txn_version=3)
    assert [spark.conf.get(c, None) for c in confs] == [None, None, None]
    assert lake.latest_version(str(path)) == done.version


# --------------------------------------------------------------------------- merge-on-read


@pytest.mark.parametrize("deletion_vectors", [False, True])
def test_upsert_rewrites_files_or_marks_them_with_deletion_vectors(lake, spark, tmp_path, deletion_vectors):
    """Ten files of ten even keys each (0-18, 20-38, ...); an upsert of keys 30 and 34, a
    new key 37 and a delete of key 62.

    Copy-on-write rewrites the two files holding 30/34 and 62; merge-on-read leaves every old
    file in place and marks the rows by deletion vectors. Either way MERGE reads only the
    files whose statistics can hold an affected key: the other files are made unreadable
    while it runs, so reading one would fail it.
    """
    path = str(tmp_path / "t")
    rows = spark.range(0, 200, 2, 10).select(F.col("id"), F.lit("d").alias("day"), F.col("id").cast("string").alias("v"))
    version = lake.write(rows, path, mode="append").version
    if deletion_vectors:
        spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
        version = lake.latest_version(path)
    files = lake.files(path, version)
    assert len(files) == 10
    far = [f.path for f in files
           if not any(f.action.parsed_stats["minValues"]["id"] <= k <= f.action.parsed_stats["maxValues"]["id"]
                      for k in (30, 34, 37, 62))]
    assert len(far) == 8
    saved = {p: Path(p).read_bytes() for p in far}
    for p in far:
        Path(p).write_bytes(b"not a parquet file")
    upsert = spark.createDataFrame([(30, "d", "new"), (34, "d", "new"), (37, "d", "new")], ROWS.lower())
    deletes = spark.createDataFrame([(62, "d")], "id long, day string")
    try:
        result = lake.write(upsert, path, mode="upsert", key="id", deletes=deletes, expected_version=version)
    finally:
        for p, data in saved.items():
            Path(p).write_bytes(data)
    got = {r["id"]: r["v"] for r in lake.read(path, result.version).collect()}
    assert len(got) == 100 and got[30] == got[34] == got[37] == "new" and 62 not in got and got[32] == "32"
    assert result.rows_written == 3

    commit = lake.log(path).commit(result.version)
    if deletion_vectors:
        assert (result.files_removed, result.bytes_removed) == (0, 0)
        assert sorted(a.deleted_rows for a in commit.adds if a.deletion_vector) == [1, 2]
    else:
        assert result.files_removed == 2 and result.bytes_removed > 0
        assert not any(a.deletion_vector for a in commit.adds)
    assert result.files_added == len([a for a in commit.adds if not a.deletion_vector]) >= 1


# --------------------------------------------------------------------------- the log through Spark


def test_the_log_read_through_sparks_hadoop_file_system_is_the_same_log(spark, tmp_path):
    path = str(tmp_path / "t")
    direct = DeltaSparkLakehouse(spark)
    through_spark = DeltaSparkLakehouse(spark, log_access="spark")
    version = _seeded(direct, spark, Path(path))
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.checkpointInterval' = '2')")
    version = direct.latest_version(path)
    for i in range(3):
        version = direct.write(spark.createDataFrame([(50 + i, "a", "x")], ROWS.lower()), path, mode="append",
                               expected_version=version, app_id="job", txn_version=2 + i).version
    assert any(p.name.endswith(".checkpoint.parquet") for p in (Path(path) / "_delta_log").iterdir())
    assert through_spark._reads_log_through_spark(path)
    for lake in (direct, through_spark):
        assert lake.latest_version(path) == version
    assert through_spark.files(path, version) == direct.files(path, version)
    assert through_spark.history(path) == direct.history(path)
    assert through_spark.transaction_version(path, "job") == direct.transaction_version(path, "job") == 4
    assert through_spark.changes(path, 1, version).added.keys() == direct.changes(path, 1, version).added.keys()
    assert _ids(through_spark.read(path, version)) == [*range(8), 50, 51, 52]


def test_storage_out_of_pyarrows_reach_is_read_through_spark(spark):
    lake = DeltaSparkLakehouse(spark)
    assert lake._reads_log_through_spark("s3a://bucket/lake/t")  # a scheme pyarrow does not know
    assert not lake._reads_log_through_spark("/tmp/lake/t")
    assert not lake._reads_log_through_spark("file:///tmp/lake/t")
    with pytest.raises(LakehouseError, match="log_access 'sometimes' is unknown"):
        DeltaSparkLakehouse(spark, log_access="sometimes")
