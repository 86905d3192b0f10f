"""The Delta log reader against real tables, checked with an independent reader (delta-rs).

Tables written by the JVM connector (deletion vectors, multi-part checkpoints) are covered in
tests/test_deltalog_jvm.py, which needs the Delta jars.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.transaction import CommitProperties, Transaction

from spark_scoring.lakehouse.deltalog import DeltaLog, MissingLogError, parse_commit


def _append(path: Path, ids: list[int], day: str, *, app: str | None = None, version: int | None = None) -> None:
    props = CommitProperties(app_transactions=[Transaction(app, version)]) if app else None
    write_deltalake(str(path), pd.DataFrame({"id": ids, "day": [day] * len(ids)}), partition_by=["day"],
                    mode="append", commit_properties=props)


def _reference_files(path: Path, version: int | None = None) -> set[str]:
    table = DeltaTable(str(path), version=version)
    return set(pa.table(table.get_add_actions()).column("path").to_pylist())


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "t"
    for i in range(12):
        _append(path, [2 * i, 2 * i + 1], f"d{i % 3}", app="job", version=100 + i)
    return path


def test_snapshot_matches_delta_rs_at_every_version(table):
    log = DeltaLog(str(table))
    assert log.latest_version() == 11
    for version in range(12):
        snap = log.snapshot(version)
        assert {key[0] for key in snap.files} == _reference_files(table, version)
        assert snap.transaction_version("job") == 100 + version
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
        os.remove(table / "_delta_log" / f"{v:020d}.json")
    log = DeltaLog(str(table))
    assert log.earliest_version() == 11
    snap = log.snapshot(13)
    assert {key[0] for key in snap.files} == _reference_files(table)
    assert snap.transaction_version("job") == 111  # from the checkpoint's txn rows
    assert log.snapshot(11).files.keys() == DeltaLog(str(table)).snapshot(11).files.keys()
    with pytest.raises(MissingLogError, match="version 3"):
        log.snapshot(3)


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
    os.remove(table / "_delta_log" / f"{5:020d}.json")
    log = DeltaLog(str(table))
    with pytest.raises(MissingLogError, match=r"no commit file for version 5"):
        log.changes(3, 8)
    from spark_scoring.errors import TableNotFoundError

    with pytest.raises(TableNotFoundError, match="no Delta table"):
        DeltaLog(str(tmp_path / "nothing")).latest_version()
    assert not DeltaLog(str(tmp_path / "nothing")).exists()


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
    assert add.num_records == 9 and add.deleted_rows == 6 and remove.deleted_rows == 0
