"""End-to-end nightly runs on real Delta tables with the packaged MiniLM and a real MLflow store.

Every check reads the output through an independent reader (delta-rs), never through the
code under test.
"""

from __future__ import annotations

import json
import threading

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from spark_scoring import pipeline
from spark_scoring.errors import (
    ConcurrentRunError,
    ErrorBudgetExceeded,
    SchemaDriftError,
    ScoringError,
)
from tests.pipeline_helpers import (
    assert_same_rows,
    full_refresh_of,
    job_config,
    read_output,
    source_rows,
    write_source,
)

PREDICTION = ["embedding", "error", "model_uri", "model_version", "run_id", "scored_at", "source_version", "input_hash"]


@pytest.fixture(scope="module")
def encoder(minilm_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_dir, device="cpu")


@pytest.fixture()
def lake(tmp_path):
    """A source table with two days: ids 1-20 on 2026-01-01, 21-40 on 2026-01-02."""
    write_source(tmp_path / "source", source_rows(range(1, 21), "2026-01-01"))
    write_source(tmp_path / "source", source_rows(range(21, 41), "2026-01-02"))
    return tmp_path


def test_first_run_scores_every_row_with_lineage(spark, lake, minilm_dir, encoder):
    cfg = job_config(lake, minilm_dir)
    result = pipeline.run(cfg, spark=spark)
    assert result.status == "published" and result.output_version == 0
    assert (result.rows_scored, result.rows_carried, result.rows_failed) == (40, 0, 0)
    out = read_output(lake / "output")
    assert out["id"].tolist() == list(range(1, 41))
    assert list(out.columns[:3]) == ["id", "day", "lang"]
    assert set(PREDICTION) <= set(out.columns)
    assert out["error"].isna().all()
    assert (out["source_version"] == 1).all()
    assert (out["run_id"] == result.run_id).all()
    assert out["scored_at"].notna().all()
    assert out["model_uri"].nunique() == 1 and out["model_uri"][0] == result.model_uri
    expected = encoder.encode(source_rows(range(1, 41), "x")["text"].tolist(), batch_size=32)
    np.testing.assert_allclose(np.stack(out["embedding"]), expected, atol=1e-4)
    # the run is an MLflow run holding the output version it produced
    run = mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["rows_scored"] == 40
    assert run.data.tags["spark_scoring.output_version"] == "0"
    # the commit holds the run id and the watermark
    info = DeltaTable(str(lake / "output")).history(1)[0]  # either engine's way of storing it
    meta = {**info, **json.loads(info.get("userMetadata") or "{}")}
    assert meta["spark_scoring.run_id"] == result.run_id
    assert str(meta["spark_scoring.source_version"]) == "1"


def test_rerun_right_after_success_makes_no_commit(spark, lake, minilm_dir):
    cfg = job_config(lake, minilm_dir)
    pipeline.run(cfg, spark=spark)
    before = DeltaTable(str(lake / "output")).version()
    again = pipeline.run(cfg, spark=spark)
    assert again.status == "nothing-to-do"
    assert again.rows_scored == 0
    assert DeltaTable(str(lake / "output")).version() == before


def test_incremental_run_scores_only_changes_and_equals_full_refresh(spark, lake, minilm_dir):
    cfg = job_config(lake, minilm_dir)
    first = pipeline.run(cfg, spark=spark)
    untouched_files = {a for a in DeltaTable(str(lake / "output")).file_uris() if "day=2026-01-01" in a}

    write_source(lake / "source", source_rows(range(41, 51), "2026-01-03"))  # a new day
    write_source(lake / "source", source_rows([51, 52], "2026-01-02"))  # late rows into an old day
    dt = DeltaTable(str(lake / "source"))
    dt.update(predicate="id = 25", updates={"text": "'an edited review'"})  # changed input
    dt.delete("id = 30")  # a deleted source row

    second = pipeline.run(cfg, spark=spark)
    assert second.status == "published"
    assert second.source_version_start == 1 and second.source_version == 5
    assert second.rows_scored == 10 + 2 + 1
    assert second.rows_carried == 20 - 1 - 1  # day 2 minus the edited and the deleted row
    out = read_output(lake / "output")
    assert 30 not in out["id"].tolist()
    assert len(out) == 40 - 1 + 12
    # untouched partition: not rewritten at all
    now_files = {a for a in DeltaTable(str(lake / "output")).file_uris() if "day=2026-01-01" in a}
    assert now_files == untouched_files
    # carried rows keep their lineage; new rows carry the new run
    by_id = out.set_index("id")
    assert by_id.loc[21, "run_id"] == first.run_id and by_id.loc[1, "run_id"] == first.run_id
    assert by_id.loc[25, "run_id"] == second.run_id and by_id.loc[51, "run_id"] == second.run_id
    assert by_id.loc[45, "source_version"] == 5 and by_id.loc[22, "source_version"] == 1
    assert_same_rows(out, full_refresh_of(lake, spark, minilm_dir))


def test_dry_run_shows_the_plan_and_writes_nothing(spark, lake, minilm_dir):
    cfg = job_config(lake, minilm_dir)
    pipeline.run(cfg, spark=spark)
    write_source(lake / "source", source_rows([60, 61, 62], "2026-01-02"))
    version = DeltaTable(str(lake / "output")).version()
    plan = pipeline.run(cfg, dry_run=True, spark=spark)
    assert plan.status == "dry-run"
    assert plan.partitions == 1
    assert (plan.rows_scored, plan.rows_carried) == (3, 0)  # an append night reads no old rows
    assert "only added 1 file(s)" in plan.plan
    assert DeltaTable(str(lake / "output")).version() == version


def test_error_budget_publishes_nothing_and_quarantines(spark, lake, minilm_dir, capsys):
    write_source(lake / "source", pd.DataFrame({"id": [70, 71], "day": ["2026-01-03"] * 2, "lang": ["en"] * 2, "text": [None, None]}))
    cfg = job_config(lake, minilm_dir, errors={"max_error_rate": 0.01, "quarantine_table": str(lake / "quarantine")})
    with pytest.raises(ErrorBudgetExceeded, match=r"2 of 42 scored rows failed \(4.76%\)") as info:
        pipeline.run(cfg, spark=spark)
    assert "70" in str(info.value) and "null" in str(info.value).lower()
    assert not DeltaTable.is_deltatable(str(lake / "output"))
    quarantined = DeltaTable(str(lake / "quarantine")).to_pandas()
    assert sorted(quarantined["id"]) == [70, 71]
    # within budget: published, failed rows carry an error and a null prediction
    ok = pipeline.run(job_config(lake, minilm_dir, errors={"max_error_rate": 0.1}), spark=spark)
    assert ok.rows_failed == 2
    out = read_output(lake / "output").set_index("id")
    assert out.loc[70, "embedding"] is None and "null" in out.loc[70, "error"].lower()
    assert out.loc[1, "error"] is None


def test_schema_drift_is_reported_before_any_work(spark, lake, minilm_dir):
    cfg = job_config(lake, minilm_dir, model__input="body", source__passthrough=["country"])
    with pytest.raises(SchemaDriftError, match=r"column 'body' is not in the source table") as info:
        pipeline.run(cfg, spark=spark)
    assert "column 'country'" in str(info.value)
    assert not DeltaTable.is_deltatable(str(lake / "output"))


def test_model_change_policies(spark, lake, minilm_dir, tmp_path_factory):
    import shutil

    pipeline.run(job_config(lake, minilm_dir), spark=spark)
    other = tmp_path_factory.mktemp("model") / "minilm_copy"
    shutil.copytree(minilm_dir, other)
    (other / "README.md").write_text("a new model version")  # new content -> new model identity

    with pytest.raises(ScoringError, match=r"model changed since the last run .* model.on_change is 'fail'"):
        pipeline.run(job_config(lake, str(other), model__on_change="fail"), spark=spark)

    write_source(lake / "source", source_rows([80], "2026-01-03"))
    new_only = pipeline.run(job_config(lake, str(other), model__on_change="new-rows-only"), spark=spark)
    assert (new_only.rows_scored, new_only.rows_carried) == (1, 0)
    out = read_output(lake / "output").set_index("id")
    assert out.loc[80, "model_uri"] != out.loc[1, "model_uri"]

    rescored = pipeline.run(job_config(lake, minilm_dir, model__on_change="rescore"), spark=spark)
    assert rescored.rows_scored == 41
    assert read_output(lake / "output")["model_uri"].nunique() == 1


def test_two_concurrent_runs_one_wins_the_other_publishes_nothing(spark, lake, minilm_dir, monkeypatch, request):
    cfg = job_config(lake, minilm_dir)
    if cfg.lakehouse.engine == "delta-spark":
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            "JVM engine, known gap: two FIRST runs creating the output at once both commit (versions 0 and 1, "
            "the second an overwrite of the same rows: no duplicate, but both report published); the "
            "planned-version guard runs before either commit and Delta's create conflicts let it through")))
    barrier = threading.Barrier(2, timeout=120)
    real_score = pipeline.udf.score

    def score_after_both_planned(*args, **kwargs):
        barrier.wait()  # both runs have planned against the same output version
        return real_score(*args, **kwargs)

    monkeypatch.setattr(pipeline.udf, "score", score_after_both_planned)
    outcomes: list[object] = []

    def one_run():
        try:
            outcomes.append(pipeline.run(cfg, spark=spark))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            outcomes.append(exc)

    threads = [threading.Thread(target=one_run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    published = [o for o in outcomes if isinstance(o, pipeline.RunResult)]
    failed = [o for o in outcomes if isinstance(o, Exception)]
    assert len(published) == 1 and len(failed) == 1, outcomes
    assert isinstance(failed[0], ConcurrentRunError), repr(failed[0])
    assert "another run" in str(failed[0]).lower()
    out = read_output(lake / "output")
    assert len(out) == 40 and out["id"].is_unique
    assert DeltaTable(str(lake / "output")).version() == 0


HOSTILE_DAYS = ["it's \"quoted\"", "with space", "ünïcødé 🚀", "a/b=c%d", "x' OR '1'='1"]


def test_hostile_partition_values(spark, tmp_path, minilm_dir):
    for i, day in enumerate(HOSTILE_DAYS):
        write_source(tmp_path / "source", source_rows([10 * i + 1, 10 * i + 2], day))
    write_source(tmp_path / "source", pd.DataFrame({"id": [99], "day": [None], "lang": ["en"], "text": ["null day"]}))
    cfg = job_config(tmp_path, minilm_dir)
    first = pipeline.run(cfg, spark=spark)
    assert first.rows_scored == 11
    write_source(tmp_path / "source", source_rows([3], HOSTILE_DAYS[0]))
    write_source(tmp_path / "source", pd.DataFrame({"id": [98], "day": [None], "lang": ["en"], "text": ["late null"]}))
    second = pipeline.run(cfg, spark=spark)
    assert second.partitions == 2 and second.rows_scored == 2 and second.rows_carried == 0
    out = read_output(tmp_path / "output")
    assert len(out) == 13 and out["id"].is_unique
    assert sorted(out["day"].dropna().unique()) == sorted(HOSTILE_DAYS)
    assert set(out.loc[out["day"].isna(), "id"]) == {98, 99}
    by_id = out.set_index("id")
    assert by_id.loc[3, "day"] == HOSTILE_DAYS[0] and by_id.loc[1, "run_id"] == first.run_id
    assert by_id.loc[41, "day"] == HOSTILE_DAYS[4] and by_id.loc[41, "run_id"] == first.run_id


def test_backfill_rescores_partitions_without_moving_the_watermark(spark, lake, minilm_dir):
    cfg = job_config(lake, minilm_dir)
    first = pipeline.run(cfg, spark=spark)
    info = pipeline.status(cfg, spark=spark)
    assert info["watermark"] == 1 and info["pending_source_versions"] == 0
    result = pipeline.backfill(cfg, [{"day": "2026-01-02"}], spark=spark)
    assert result.rows_scored == 20 and result.rows_carried == 0
    out = read_output(lake / "output").set_index("id")
    assert out.loc[21, "run_id"] == result.run_id and out.loc[1, "run_id"] == first.run_id
    after = pipeline.status(cfg, spark=spark)
    assert after["watermark"] == 1
    assert [r["mode"] for r in after["last_runs"]][:2] == ["backfill", "run"]
    assert pipeline.run(cfg, spark=spark).status == "nothing-to-do"
    ranged = pipeline.backfill(cfg, between=("2026-01-01", "2026-01-01"), spark=spark)
    assert ranged.rows_scored == 20
    json.dumps(after)  # status is plain data


def test_a_history_gap_is_crossed_by_comparing_every_key_never_silently(spark, lake, minilm_dir):
    cfg = job_config(lake, minilm_dir)
    pipeline.run(cfg, spark=spark)
    for i in range(3):
        write_source(lake / "source", source_rows([100 + i], "2026-01-03"))
    DeltaTable(str(lake / "source")).delete("id = 7")
    dt = DeltaTable(str(lake / "source"))
    dt.create_checkpoint()
    for v in range(0, dt.version()):  # simulate log cleanup past the watermark
        (lake / "source" / "_delta_log" / f"{v:020d}.json").unlink()
    result = pipeline.run(cfg, spark=spark)
    assert "no longer in its log" in result.plan and "comparing every key" in result.plan
    assert (result.rows_scored, result.rows_carried) == (3, 39)  # nothing rescored but the new rows
    out = read_output(lake / "output")
    assert 7 not in out["id"].tolist() and len(out) == 42
    assert_same_rows(out, full_refresh_of(lake, spark, minilm_dir))


def test_files_stay_under_max_rows_per_file_and_a_one_row_update_rewrites_one_file(spark, tmp_path, minilm_dir):
    """output.max_rows_per_file bounds each written file (narrow key ranges), so a night that
    updates one row rewrites one small file, not the output."""
    write_source(tmp_path / "source", source_rows(range(1, 61), "2026-01-01"))
    cfg = job_config(tmp_path, minilm_dir, output__max_rows_per_file=10, run__num_partitions=2)
    assert pipeline.run(cfg, spark=spark).status == "published"
    output = DeltaTable(str(tmp_path / "output"))
    sizes = pa.table(output.get_add_actions(flatten=True)).column("num_records").to_pylist()
    assert sum(sizes) == 60 and len(sizes) >= 5 and max(sizes) <= 20, sizes

    DeltaTable(str(tmp_path / "source")).update({"text": "'a rewritten review'"}, predicate="id = 33")
    night = pipeline.run(cfg, spark=spark)
    assert night.status == "published" and night.rows_scored == 1
    commit = (tmp_path / "output" / "_delta_log" / f"{DeltaTable(str(tmp_path / 'output')).version():020d}.json")
    actions = [json.loads(line) for line in commit.read_text().splitlines()]
    removed = [a["remove"] for a in actions if "remove" in a]
    assert len(removed) == 1, removed  # the one file holding key 33
    assert_same_rows(read_output(tmp_path / "output"), full_refresh_of(tmp_path, spark, minilm_dir))
