"""Sequences of source changes, backfills and model changes that once broke exactly-once.

Each ends by comparing the output (read with delta-rs) with what a full refresh at the same
source version produces, or with the exact rows expected.
"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from deltalake import DeltaTable

from spark_scoring import pipeline
from spark_scoring.errors import HistoryGapError, SchemaDriftError
from tests.pipeline_helpers import job_config, read_output, source_rows, write_source


@pytest.fixture()
def small(tmp_path):
    write_source(tmp_path / "source", source_rows(range(1, 6), "d1"))
    write_source(tmp_path / "source", source_rows(range(6, 9), "d2"))
    return tmp_path


def test_backfill_after_a_key_moved_partition_never_duplicates_it(spark, small, minilm_dir):
    cfg = job_config(small, minilm_dir)
    pipeline.run(cfg, spark=spark)
    DeltaTable(str(small / "source")).delete("id = 3")
    write_source(small / "source", source_rows([3], "d2"))  # key 3 moved from d1 to d2
    pipeline.backfill(cfg, [{"day": "d2"}], spark=spark)
    assert read_output(small / "output")["id"].is_unique
    after = pipeline.run(cfg, spark=spark)
    out = read_output(small / "output")
    assert out["id"].tolist() == list(range(1, 9))
    assert out.set_index("id").loc[3, "day"] == "d2"
    assert after.status == "published"


def test_a_key_duplicated_into_another_partition_is_refused(spark, small, minilm_dir):
    cfg = job_config(small, minilm_dir)
    pipeline.run(cfg, spark=spark)
    write_source(small / "source", source_rows([3], "d3"))  # id 3 now lives in d1 AND d3
    with pytest.raises(SchemaDriftError, match=r"not a unique, non-null key .* 3 x2"):
        pipeline.run(cfg, spark=spark)
    assert DeltaTable(str(small / "output")).version() == 0


def test_rows_left_by_another_model_are_rescored_under_on_change_rescore(spark, small, minilm_dir, tmp_path_factory):
    cfg = job_config(small, minilm_dir)
    pipeline.run(cfg, spark=spark)
    other = tmp_path_factory.mktemp("m") / "copy"
    shutil.copytree(minilm_dir, other)
    (other / "README.md").write_text("another model")
    pipeline.backfill(job_config(small, str(other)), [{"day": "d1"}], spark=spark)
    assert read_output(small / "output").set_index("id").loc[1, "model_uri"] != minilm_dir
    write_source(small / "source", source_rows([9], "d1"))
    result = pipeline.run(cfg, spark=spark)  # on_change=rescore is the default
    assert result.rows_scored == 6  # d1: the 5 backfilled rows + the new one
    assert set(read_output(small / "output")["model_uri"]) == {result.model_uri}


def test_failed_rows_are_retried_when_their_file_changes(spark, small, minilm_dir):
    write_source(small / "source", pd.DataFrame({"id": [50], "day": ["d2"], "lang": ["en"], "text": [None]}))
    cfg = job_config(small, minilm_dir, errors={"max_error_rate": 1.0})
    pipeline.run(cfg, spark=spark)
    assert read_output(small / "output").set_index("id").loc[50, "error"] is not None
    dt = DeltaTable(str(small / "source"))
    dt.update(predicate="id = 50", updates={"lang": "'de'"})  # rewrites the failed row's file
    second = pipeline.run(cfg, spark=spark)
    assert second.rows_scored == 1  # the failed row is scored again (and fails again)
    assert read_output(small / "output").set_index("id").loc[50, "lang"] == "de"


def test_compaction_of_the_source_makes_no_commit(spark, small, minilm_dir):
    cfg = job_config(small, minilm_dir)
    pipeline.run(cfg, spark=spark)
    write_source(small / "source", source_rows([20], "d1"))
    write_source(small / "source", source_rows([21], "d1"))
    pipeline.run(cfg, spark=spark)
    version = DeltaTable(str(small / "output")).version()
    DeltaTable(str(small / "source")).optimize.compact()
    result = pipeline.run(cfg, spark=spark)
    assert result.status == "nothing-to-do" and "OPTIMIZE" in result.plan
    assert DeltaTable(str(small / "output")).version() == version


def test_a_recreated_source_is_never_diffed_against_the_old_watermark(spark, small, minilm_dir):
    cfg = job_config(small, minilm_dir)
    pipeline.run(cfg, spark=spark)
    shutil.rmtree(small / "source")
    for day in ("d1", "d2", "d3"):
        write_source(small / "source", source_rows([100 + int(day[1])], day))
    with pytest.raises(HistoryGapError, match=r"was recreated since the last run .* --full-refresh"):
        pipeline.run(cfg, spark=spark)
    pipeline.run(cfg, full_refresh=True, spark=spark)
    assert read_output(small / "output")["id"].tolist() == [101, 102, 103]


def test_unpartitioned_source_is_incremental_too(spark, tmp_path, minilm_dir):
    import pyarrow as pa
    from deltalake import write_deltalake

    def write(df, mode="append"):
        write_deltalake(str(tmp_path / "source"), pa.Table.from_pandas(df, preserve_index=False), mode=mode)

    write(source_rows(range(1, 11), "x").drop(columns=["day"]))
    cfg = job_config(tmp_path, minilm_dir, source={"table": str(tmp_path / "source"), "key": "id", "passthrough": ["lang"]})
    first = pipeline.run(cfg, spark=spark)
    write(source_rows([11, 12], "x").drop(columns=["day"]))
    second = pipeline.run(cfg, spark=spark)
    assert (second.rows_scored, second.rows_carried) == (2, 0)
    assert "only added" in second.plan
    removed = [a for a in _commit_actions(tmp_path / "output") if "remove" in a]
    assert removed == []  # an append night removes no output file
    out = read_output(tmp_path / "output")
    assert out["id"].tolist() == list(range(1, 13))
    assert (out.loc[out["id"] <= 10, "run_id"] == first.run_id).all()


def _commit_actions(table, version=None):
    """The actions of one commit of `table` (default: the latest), from its log file."""
    import json

    version = DeltaTable(str(table)).version() if version is None else version
    return [json.loads(line) for line in (table / "_delta_log" / f"{version:020d}.json").read_text().splitlines()]
