"""Sequences of nights on every layout: the output equals a full refresh after each, and a
night's writes follow what changed (issues 12 and 15).

Sources are written with delta-rs; the model is the tiny BERT encoder (predictions are
deterministic, so equality with a full refresh is exact up to float noise).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from spark_scoring import pipeline
from spark_scoring.errors import HistoryGapError, SchemaDriftError
from tests.pipeline_helpers import (
    assert_same_rows,
    full_refresh_of,
    job_config,
    read_output,
    source_rows,
)
from tests.tiny_models import build_bert_mean, build_bert_st

UNPARTITIONED = pa.schema([("id", pa.int64()), ("lang", pa.string()), ("text", pa.string())])
PARTITIONED = pa.schema([("id", pa.int64()), ("day", pa.string()), ("lang", pa.string()), ("text", pa.string())])


class Lake:
    """A source table (partitioned by day, or not) and the job scoring it."""

    def __init__(self, root: Path, model_dir: str, partitioned: bool):
        self.root, self.model_dir, self.partitioned = root, model_dir, partitioned
        self.source = root / "source"

    def source_cfg(self) -> dict:
        return {"table": str(self.source), "key": "id", "passthrough": ["lang"],
                "partition_by": ["day"] if self.partitioned else []}

    def cfg(self, **overrides):
        return job_config(self.root, self.model_dir, source=self.source_cfg(), **overrides)

    def append(self, ids, day="d1", text=None):
        df = source_rows(ids, day, text=text)
        schema = PARTITIONED if self.partitioned else UNPARTITIONED
        if not self.partitioned:
            df = df.drop(columns=["day"])
        write_deltalake(str(self.source), pa.Table.from_pandas(df, schema=schema, preserve_index=False),
                        partition_by=["day"] if self.partitioned else None, mode="append")

    def table(self) -> DeltaTable:
        return DeltaTable(str(self.source))

    def run(self, **kwargs):
        return pipeline.run(self.cfg(), spark=kwargs.pop("spark"), **kwargs)

    def check(self, spark):
        """The output equals a full refresh of the current source, computed independently."""
        passthrough = ("day", "lang") if self.partitioned else ("lang",)
        reference = full_refresh_of(self.root, spark, self.model_dir, source=self.source_cfg())
        assert_same_rows(read_output(self.root / "output"), reference, passthrough)
        shutil.rmtree(self.root / "reference")


def _actions(table: Path, version: int | None = None) -> list[dict]:
    version = DeltaTable(str(table)).version() if version is None else version
    return [json.loads(line) for line in (table / "_delta_log" / f"{version:020d}.json").read_text().splitlines()]


def _removed(table: Path) -> tuple[int, int]:
    removes = [a["remove"] for a in _actions(table) if "remove" in a]
    return len(removes), sum(int(r.get("size") or 0) for r in removes)


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> tuple[str, str]:
    """The tiny BERT encoder (mean pooling) and a sentence-transformers model built on it."""
    root = tmp_path_factory.mktemp("bert")
    mean = build_bert_mean(root / "mean")
    return mean, build_bert_st(root / "st", mean)


@pytest.fixture(params=["unpartitioned", "partitioned"])
def lake(request, tmp_path, bert) -> Lake:
    lake = Lake(tmp_path, bert[0], request.param == "partitioned")
    for start in range(0, 60, 20):  # three files of 20 rows each, ids in blocks
        lake.append(range(start + 1, start + 21), day=f"d{start // 20}")
    return lake


def test_append_update_delete_nights_follow_the_change_and_equal_a_full_refresh(spark, lake):
    first = lake.run(spark=spark)
    assert first.rows_scored == 60 and first.status == "published"
    output = lake.root / "output"
    files_before = len(DeltaTable(str(output)).file_uris())

    lake.append([61, 62], day="d2")  # night 1: appends only
    night = lake.run(spark=spark)
    assert "only added" in night.plan and (night.rows_scored, night.rows_carried) == (2, 0)
    assert _removed(output) == (0, 0)
    lake.check(spark)

    lake.table().update(predicate="id = 5", updates={"text": "'an edited review'"})  # night 2: one row in one file
    night = lake.run(spark=spark)
    assert night.rows_scored == 1 and "changed source file" in night.plan
    removed, _ = _removed(output)
    assert 1 <= removed <= 2, f"a confined update removed {removed} of {files_before + 1} output files"
    lake.check(spark)

    lake.table().delete("id = 42")  # night 3: a delete
    lake.append([63], day="d0")
    night = lake.run(spark=spark)
    assert night.rows_scored == 1
    out = read_output(output)
    assert 42 not in out["id"].tolist() and 63 in out["id"].tolist()
    lake.check(spark)

    lake.table().optimize.compact()  # night 4: only a compaction
    night = lake.run(spark=spark)
    assert night.status == "nothing-to-do" and "OPTIMIZE" in night.plan


def test_random_nights_mixing_appends_updates_and_deletes(spark, lake):
    rng = random.Random(7)
    lake.run(spark=spark)
    next_id = 61
    for _ in range(4):
        for _ in range(rng.randint(1, 3)):
            op = rng.choice(["append", "update", "delete"])
            ids = read_output(lake.root / "output")["id"].tolist()
            if op == "append":
                lake.append(range(next_id, next_id + rng.randint(1, 4)), day=f"d{rng.randint(0, 3)}")
                next_id += 5
            elif op == "update":
                victim = rng.choice(ids)
                lake.table().update(predicate=f"id = {victim}", updates={"text": f"'edited {rng.random()}'"})
            else:
                lake.table().delete(f"id = {rng.choice(ids)}")
        lake.run(spark=spark)
        lake.check(spark)


def test_rows_another_writer_deleted_or_restored_come_back(spark, lake):
    lake.run(spark=spark)
    output = lake.root / "output"
    DeltaTable(str(output)).delete("id >= 10 AND id <= 12")  # someone else's commit on the output
    night = lake.run(spark=spark)
    assert night.status == "published" and night.rows_scored == 3 and "another writer" in night.plan
    lake.check(spark)
    DeltaTable(str(output)).restore(0)  # a RESTORE by someone else: rows of night 0 back
    lake.append([70], day="d1")
    lake.run(spark=spark)
    lake.check(spark)
    DeltaTable(str(output)).optimize.compact()  # data-neutral: nothing to do
    assert lake.run(spark=spark).status == "nothing-to-do"


def test_another_writer_changing_the_output_schema_is_refused_with_advice(spark, lake):
    lake.run(spark=spark)
    from deltalake.schema import Field, PrimitiveType

    DeltaTable(str(lake.root / "output")).alter.add_columns([Field("extra", PrimitiveType("string"))])
    lake.append([80])
    with pytest.raises(SchemaDriftError, match=r"changed the table's schema .*--full-refresh"):
        lake.run(spark=spark)
    assert lake.run(spark=spark, full_refresh=True).status == "published"
    lake.check(spark)


def test_null_and_duplicate_keys_are_refused_in_every_mode(spark, lake):
    lake.run(spark=spark)
    schema = PARTITIONED if lake.partitioned else UNPARTITIONED
    row = {"id": [None], "lang": ["en"], "text": ["no key"], **({"day": ["d1"]} if lake.partitioned else {})}
    write_deltalake(str(lake.source), pa.Table.from_pandas(pd.DataFrame(row), schema=schema, preserve_index=False),
                    partition_by=["day"] if lake.partitioned else None, mode="append")
    with pytest.raises(SchemaDriftError, match=r"not a unique, non-null key .*None x1"):
        lake.run(spark=spark)
    with pytest.raises(SchemaDriftError, match=r"not a unique, non-null key"):
        lake.run(spark=spark, full_refresh=True)
    lake.table().delete("id IS NULL")
    lake.append([7], day="d3")  # a key the table already holds, appended elsewhere
    with pytest.raises(SchemaDriftError, match=r"not a unique, non-null key .*7 x2"):
        lake.run(spark=spark)


def test_a_source_recreated_or_restored_behind_the_watermark_is_refused_then_followed(spark, lake, tmp_path):
    lake.run(spark=spark)
    backup = tmp_path / "backup"
    shutil.copytree(lake.source, backup)  # a copy at version 2
    lake.append([90], day="d1")
    lake.append([91], day="d1")
    lake.run(spark=spark)  # watermark 4
    shutil.rmtree(lake.source)
    shutil.copytree(backup, lake.source)  # restored from the copy: version 2, same table id
    with pytest.raises(HistoryGapError, match=r"older than version 4 .*--full-refresh"):
        lake.run(spark=spark)
    lake.append([92], day="d2")
    lake.append([93], day="d2")  # version 4 again, other contents
    with pytest.raises(HistoryGapError, match=r"version 4 .* now has another commit .*--full-refresh"):
        lake.run(spark=spark)
    assert lake.run(spark=spark, full_refresh=True).status == "published"
    lake.check(spark)
    lake.append([94], day="d0")  # every night after plans against the restored table's versions
    night = lake.run(spark=spark)
    assert night.rows_scored == 1 and night.source_version_start == 4
    lake.check(spark)
    shutil.rmtree(lake.source)  # recreated: a new table id, with as many versions
    for start in range(0, 100, 20):
        lake.append(range(start + 1000, start + 1005), day="d1")
    with pytest.raises(HistoryGapError, match=r"was recreated since the last run"):
        lake.run(spark=spark)
    lake.run(spark=spark, full_refresh=True)
    lake.append([2000], day="d1")
    assert lake.run(spark=spark).rows_scored == 1
    lake.check(spark)


def test_changing_the_input_column_is_a_new_model_identity(spark, lake):
    lake.run(spark=spark)
    lang_cfg = lake.cfg(model={"uri": lake.model_dir, "task": "embedding", "input": "lang"})
    again = pipeline.run(lang_cfg, spark=spark)
    assert again.status == "published" and again.rows_scored == 60 and "model changed" in again.plan


def test_new_rows_only_then_rescore_with_the_same_model_rescores_the_old_rows(spark, lake, bert):
    lake.run(spark=spark)
    other = dict(uri=bert[1], task="embedding", input="text", on_change="new-rows-only")
    lake.append([95], day="d1")
    mixed = pipeline.run(lake.cfg(model=other), spark=spark)
    assert mixed.rows_scored == 1
    lake.append([96], day="d1")
    rescore = pipeline.run(lake.cfg(model={**other, "on_change": "rescore"}), spark=spark)
    assert rescore.rows_scored == 62 and "other models" in rescore.plan
    assert read_output(lake.root / "output")["model_uri"].nunique() == 1


def test_the_last_nightly_run_is_found_behind_many_other_commits(spark, lake):
    lake.run(spark=spark)
    output = DeltaTable(str(lake.root / "output"))
    for i in range(210):  # more than the 200 commits history used to be read with
        output.alter.set_table_properties({"delta.logRetentionDuration": f"interval {30 + i} days"})
    result = lake.run(spark=spark)
    assert result.status == "nothing-to-do", result.plan


def test_a_compacted_and_vacuumed_source_past_its_log_retention_still_plans(spark, lake):
    lake.run(spark=spark)
    dt = lake.table()
    dt.optimize.compact()
    dt.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    dt.create_checkpoint()
    for v in range(0, dt.version()):
        (lake.source / "_delta_log" / f"{v:020d}.json").unlink()
    lake.append([97], day="d1")
    night = lake.run(spark=spark)
    assert night.status == "published" and night.rows_scored == 1
    lake.check(spark)
