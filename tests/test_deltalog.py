"""The Delta log reader against real tables, checked with independent readers.

Tables written by delta-rs are checked against `deltalake`; tables written by the JVM
connector (the shared `spark` fixture has the Delta jars) against Delta-Spark itself:
multi-part checkpoints, checkpoints with typed statistics only, V2 checkpoints with
sidecars, deletion vectors, column mapping with a renamed column, in-commit timestamps.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.transaction import CommitProperties, Transaction

from spark_scoring.errors import TableNotFoundError
from spark_scoring.lakehouse import delta_jars_available
from spark_scoring.lakehouse.deltalog import DeltaLog, MissingLogError, parse_commit


def _append(path: Path, ids: list[int], day: str, *, app: str | None = None, version: int | None = None) -> None:
    props = CommitProperties(app_transactions=[Transaction(app, version)]) if app else None
    write_deltalake(str(path), pd.DataFrame({"id": ids, "day": [day] * len(ids)}), partition_by=["day"],
                    mode="append", commit_properties=props)


def _reference_files(path: Path, version: int | None = None) -> set[str]:
    table = DeltaTable(str(path), version=version)
    return set(pa.table(table.get_add_actions()).column("path").to_pylist())


def _commit_file(path: Path, version: int) -> Path:
    return path / "_delta_log" / f"{version:020d}.json"


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "t"
    for i in range(12):
        _append(path, [2 * i, 2 * i + 1], f"d{i % 3}", app="job", version=100 + i)
    return path


# --------------------------------------------------------------------------- delta-rs tables


def test_snapshot_matches_delta_rs_at_every_version(table):
    log = DeltaLog(str(table))
    assert log.latest_version() == 11
    for version in range(12):
        snap = log.snapshot(version)
        assert {key[0] for key in snap.files} == _reference_files(table, version)
        assert snap.transaction_version("job") == 100 + version
        assert log.state(version).transaction_version("job") == 100 + version
        assert snap.metadata.partition_columns == ("day",)
        assert snap.metadata.column_names == ["id", "day"]
        assert sum(f.num_records or 0 for f in snap.files.values()) == 2 * (version + 1)
    assert log.snapshot().version == 11
    assert log.snapshot(11).metadata.id == DeltaTable(str(table)).metadata().id


def test_snapshot_replays_from_a_checkpoint_when_older_commits_are_gone(table):
    DeltaTable(str(table)).create_checkpoint()  # checkpoint of version 11
    _append(table, [100], "d9")
    _append(table, [101], "d9")
    for v in range(0, 11):
        os.remove(_commit_file(table, v))
    log = DeltaLog(str(table))
    assert log.earliest_version() == 11
    snap = log.snapshot(13)
    assert {key[0] for key in snap.files} == _reference_files(table)
    assert snap.transaction_version("job") == 111  # from the checkpoint's txn rows
    assert log.snapshot(11).files.keys() == DeltaLog(str(table)).snapshot(11).files.keys()
    assert log.snapshot(11).timestamp == log.commit(11).timestamp  # the checkpoint's own version
    with pytest.raises(MissingLogError, match="version 3"):
        log.snapshot(3)
    # History ends at the oldest commit file kept; a commit cleaned up is a clear error.
    assert [h.version for h in log.history()] == [13, 12, 11]
    with pytest.raises(MissingLogError, match=r"no commit file for version 10 \(commits kept: 11..13\)"):
        log.changes(9, 12)


def test_an_unreadable_checkpoint_falls_back_to_an_older_one_or_to_commit_zero(table):
    DeltaTable(str(table)).create_checkpoint()  # version 11
    _append(table, [100], "d9")
    checkpoint = table / "_delta_log" / f"{11:020d}.checkpoint.parquet"
    expected = _reference_files(table)
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])  # truncated, as by a crashed writer
    assert {k[0] for k in DeltaLog(str(table)).snapshot().files} == expected  # from commit 0
    os.remove(_commit_file(table, 0))
    with pytest.raises(MissingLogError, match=r"checkpoint 00000000000000000011.checkpoint.parquet is unreadable"):
        DeltaLog(str(table)).snapshot()


def test_state_reads_no_file_actions_and_history_only_the_commits_asked_for(table):
    # A broken add line in version 3: the state (no file actions) still reads, the snapshot not.
    lines = _commit_file(table, 3).read_text().splitlines()
    _commit_file(table, 3).write_text("\n".join('{"add": not json' if '"add"' in line else line for line in lines))
    log = DeltaLog(str(table))
    assert log.state(3).transaction_version("job") == 103
    assert log.state(3).metadata.partition_columns == ("day",)
    with pytest.raises(ValueError):
        log.snapshot(3)
    # Broken JSON in version 2: history reads only the commit files it is asked for.
    _commit_file(table, 2).write_text("not json at all\n")
    assert [h.version for h in log.history(9)] == list(range(11, 2, -1))
    assert [h.operation for h in log.history(2)] == ["WRITE", "WRITE"]
    first = json.loads(_commit_file(table, 11).read_text().splitlines()[0])["commitInfo"]
    assert log.history(1)[0].timestamp == first["timestamp"]
    with pytest.raises(ValueError):
        log.history(10)


def test_changes_are_the_net_file_changes_of_the_range_only(table):
    write_deltalake(str(table), pd.DataFrame({"id": [7], "day": ["d0"]}), partition_by=["day"],
                    mode="overwrite", predicate="day = 'd0'")  # version 12 replaces d0
    log = DeltaLog(str(table))
    before, after = _reference_files(table, 10), _reference_files(table, 12)
    changes = log.changes(10, 12)
    assert [c.version for c in changes.commits] == [11, 12]
    assert {k[0] for k in changes.added} == after - before
    assert {k[0] for k in changes.removed} == before - after
    assert not changes.append_only
    # version 11 appended to d2 (i = 11): that file was added inside the range and stays
    assert any(a.partition_values == {"day": "d2"} for a in changes.added.values())
    # an add removed again inside the range is in neither side
    first_d0 = log.changes(8, 12)
    added_at_9 = {a.key for a in log.commit(9).adds}
    assert not added_at_9 & set(first_d0.added) and not added_at_9 & set(first_d0.removed)
    assert log.changes(5, 8).append_only
    assert log.commit(12).bytes_removed == sum(a.size for a in changes.removed.values()) > 0


def test_data_neutral_rewrites_are_marked(table):
    DeltaTable(str(table)).optimize.compact()
    log = DeltaLog(str(table))
    latest = log.latest_version()
    commit = log.commit(latest)
    assert commit.operation == "OPTIMIZE"
    assert commit.removes and not commit.data_change
    assert not log.changes(latest - 1, latest).data_change
    assert log.changes(latest - 2, latest).data_change  # version 11 appended rows


def test_a_missing_commit_is_a_clear_error_and_a_missing_table_is_not_found(table, tmp_path):
    os.remove(_commit_file(table, 5))
    log = DeltaLog(str(table))
    with pytest.raises(MissingLogError, match=r"no commit file for version 5"):
        log.changes(3, 8)
    assert [h.version for h in log.history()] == [11, 10, 9, 8, 7, 6]  # ends at the gap
    with pytest.raises(TableNotFoundError, match="no Delta table"):
        DeltaLog(str(tmp_path / "nothing")).latest_version()
    assert not DeltaLog(str(tmp_path / "nothing")).exists()
    assert DeltaLog(f"file://{table}").latest_version() == 11


def test_commit_parsing_keeps_deletion_vectors_in_the_file_identity():
    dv = '{"storageType":"u","pathOrInlineDv":"ab^-aqEH.-t@S}K{vb[*k^","offset":4,"sizeInBytes":40,"cardinality":6}'
    lines = [
        '{"commitInfo":{"timestamp":1000,"operation":"DELETE","inCommitTimestamp":2000}}',
        '{"remove":{"path":"a.parquet","dataChange":true,"partitionValues":{},"size":10}}',
        '{"add":{"path":"a.parquet","partitionValues":{},"size":10,"modificationTime":1,"dataChange":true,'
        f'"stats":"{{\\"numRecords\\":9}}","deletionVector":{dv}}}}}',
        '{"txn":{"appId":"x","version":3}}',
    ]
    commit = parse_commit(7, lines)
    assert commit.timestamp == 2000 and commit.operation == "DELETE" and commit.txns == {"x": 3}
    (add,), (remove,) = commit.adds, commit.removes
    assert add.path == remove.path and add.key != remove.key
    assert add.key == ("a.parquet", "uab^-aqEH.-t@S}K{vb[*k^@4")
    assert add.num_records == 9 and add.deleted_rows == 6 and add.live_records == 3
    assert remove.deleted_rows == 0


# --------------------------------------------------------------------------- JVM-written tables


@pytest.fixture(scope="module")
def jvm_tables(spark, tmp_path_factory):
    """Two tables written by Delta-Spark 4.4 (built once for the module).

    `multipart`: 4 commits, a 4-part checkpoint at version 3 holding typed statistics
    only (writeStatsAsJson=false), one commit after it.
    `v2`: V2 checkpoints with sidecars (every 2 commits), deletion vectors, column mapping
    (a column renamed after data was written), in-commit timestamps; a SetTransaction.
    """
    if not delta_jars_available(spark):
        pytest.skip("Delta JVM jars are not on the classpath")
    root = tmp_path_factory.mktemp("jvm")
    multipart, v2 = str(root / "multipart"), str(root / "v2")
    rows = "id, cast(id % 3 as string) as day, cast(id as string) as text"
    spark.sql(f"""CREATE TABLE delta.`{multipart}` (id long, day string, text string) USING delta
        PARTITIONED BY (day) TBLPROPERTIES ('delta.checkpointInterval' = '3',
        'delta.checkpoint.writeStatsAsJson' = 'false', 'delta.checkpoint.writeStatsAsStruct' = 'true')""")
    spark.conf.set("spark.databricks.delta.checkpoint.partSize", "2")
    try:
        for i in range(4):
            spark.range(i * 10, i * 10 + 10).selectExpr(*rows.split(", ")).write.format("delta").mode("append").save(multipart)
    finally:
        spark.conf.unset("spark.databricks.delta.checkpoint.partSize")
    spark.sql(f"""CREATE TABLE delta.`{v2}` (id long, day string, text string) USING delta PARTITIONED BY (day)
        TBLPROPERTIES ('delta.checkpointPolicy' = 'v2', 'delta.enableDeletionVectors' = 'true',
        'delta.columnMapping.mode' = 'name', 'delta.enableInCommitTimestamps' = 'true',
        'delta.checkpointInterval' = '2')""")
    for i in range(2):
        (spark.range(i * 10, i * 10 + 10).selectExpr(*rows.split(", ")).write.format("delta").mode("append")
         .option("txnAppId", "nightly").option("txnVersion", str(i)).save(v2))
    spark.sql(f"DELETE FROM delta.`{v2}` WHERE id IN (3, 13)")  # deletion vectors on two files
    spark.sql(f"ALTER TABLE delta.`{v2}` RENAME COLUMN text TO label")
    spark.range(100, 102).selectExpr("id", "cast(id % 3 as string) as day", "'new' as label").write.format(
        "delta").mode("append").save(v2)
    return {"multipart": multipart, "v2": v2}


def _jvm_files(spark, path: str, version: int) -> dict[str, tuple[int, str | None]]:
    """file -> (rows Delta-Spark reads from it, its day), from Delta-Spark itself."""
    rows = (spark.read.format("delta").option("versionAsOf", version).load(path)
            .groupBy("_metadata.file_path", "day").count().collect())
    return {r["file_path"].removeprefix("file:"): (r["count"], r["day"]) for r in rows}


@pytest.mark.parametrize("name", ["multipart", "v2"])
def test_jvm_tables_read_like_delta_spark_at_every_version(spark, jvm_tables, name):
    path = jvm_tables[name]
    log = DeltaLog(path)
    names = [os.path.basename(p) for p in os.listdir(Path(path) / "_delta_log")]
    if name == "multipart":
        assert sum(".checkpoint.0000000" in n and n.endswith(".parquet") for n in names) >= 3
    else:
        assert any(n.endswith(".json") and ".checkpoint." in n for n in names)
        assert os.listdir(Path(path) / "_delta_log" / "_sidecars")
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first()
    assert log.state().metadata.id == detail["id"]
    assert list(log.state().metadata.partition_columns) == list(detail["partitionColumns"])
    checkpointed = min(int(n[:20]) for n in names if ".checkpoint." in n and n[0].isdigit())
    for version in (checkpointed, log.latest_version()):  # from the checkpoint; and commits after it
        snap = log.snapshot(version)
        live = {a.location(path): (a.live_records, a.partition_values["day"])
                for a in snap.files.values() if a.live_records}
        assert live == _jvm_files(spark, path, version), version
        assert snap.metadata.column_names == spark.read.format("delta").option("versionAsOf", version).load(
            path).columns
    # Statistics (from the typed struct where the checkpoint has no JSON) name columns.
    stats = [a.parsed_stats for a in log.snapshot().files.values()]
    assert all(set(s["minValues"]) >= {"id"} for s in stats)


def test_jvm_deletion_vectors_column_mapping_and_in_commit_timestamps(spark, jvm_tables):
    path = jvm_tables["v2"]
    log = DeltaLog(path)
    latest = log.latest_version()
    delete = next(c for c in (log.commit(v) for v in range(latest + 1)) if c.operation == "DELETE")
    changes = log.changes(delete.version - 1, delete.version)
    # A DELETE that only adds deletion vectors: those files, removed and re-added with a DV.
    assert len(changes.removed) == len(changes.added) == 2
    assert {k[0] for k in changes.removed} == {k[0] for k in changes.added}
    assert all(a.deleted_rows == 1 and a.key[1] for a in changes.added.values())
    # Column mapping: partition values and statistics by column name, after the rename too.
    assert all(set(a.partition_values) == {"day"} for a in log.snapshot().files.values())
    last = log.commit(latest).adds[0]
    assert set(last.parsed_stats["minValues"]) == {"id", "label"}
    assert log.transaction_version("nightly") == 1
    # In-commit timestamps are the commits' timestamps, as DESCRIBE HISTORY shows them.
    history = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").select("version", "timestamp").collect()
    jvm = {r["version"]: int(r["timestamp"].timestamp() * 1000) for r in history}
    ours = {h.version: h.timestamp for h in log.history()}
    assert ours == jvm
    assert all("inCommitTimestamp" in h.info for h in log.history(3))


def test_jvm_checkpoint_with_a_missing_part_or_sidecar_is_skipped(jvm_tables, tmp_path):
    for name, pattern in (("multipart", "*.checkpoint.0000000001.*.parquet"), ("v2", "_sidecars/*.parquet")):
        copy = tmp_path / name
        shutil.copytree(jvm_tables[name], copy)
        expected = set(DeltaLog(str(copy)).snapshot().files)
        for part in (copy / "_delta_log").glob(pattern):
            part.unlink()  # incomplete checkpoints: the commits from version 0 still rebuild it
        assert set(DeltaLog(str(copy)).snapshot().files) == expected
