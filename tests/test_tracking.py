"""RunTracker against a real local MLflow store (SQLite + artifacts in tmp)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from spark_scoring.config import JobConfig, MlflowConfig, ModelConfig, OutputConfig, SourceConfig
from spark_scoring.errors import TrackingError
from spark_scoring.mlflow_env import default_tracking_uri, store_resolves_logged_models
from spark_scoring.plots import render_distribution_png
from spark_scoring.tracking import RunTracker, render_report_markdown

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    """One SQLite store for the module (creating its tables takes several seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _no_default_store(no_default_mlflow_store):
    """Every test here runs with the guard from conftest."""


def _cfg(uri: str, name: str = "nightly-embed", experiment: str = "spark-scoring-tests") -> JobConfig:
    return JobConfig(
        name=name,
        source=SourceConfig(table="/data/docs", key="id", partition_by=("day",)),
        model=ModelConfig(uri="models:/minilm@champion", task="embedding", input=("text",)),
        output=OutputConfig(table="/data/docs_scored"),
        mlflow=MlflowConfig(tracking_uri=uri, experiment=experiment),
    )


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _artifact(client, run_id: str, path: str, tmp_path: Path) -> bytes:
    local = client.download_artifacts(run_id, path, str(tmp_path))
    return Path(local).read_bytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REPORT = {
    "status": "published",
    "rows_read": 1200,
    "rows_scored": 1000,
    "rows_failed": 3,
    "padding_efficiency": 0.8731,
    "seconds": {"plan": 0.5, "load": 2.0, "score": 7.5, "commit": 1.0, "total": 11.0},
    "partitions": [{"day": "2024-01-01", "rows": 600}, {"day": "2024-01-02", "rows": 400}],
}


def test_run_logs_params_metrics_tags_and_artifacts(store_uri, tmp_path):
    cfg = _cfg(store_uri)
    params = {
        "job_name": cfg.name, "config_hash": cfg.config_hash(), "source_table": cfg.source.table,
        "output_table": cfg.output.table, "source_version_start": None, "source_version": 7,
        "model_uri": "models:/minilm/1", "model_version": "1", "task": "embedding",
        "batch_max_rows": 64, "batch_max_tokens": 16384, "lakehouse_engine": "delta-rs", "mode": "full",
    }
    metrics = {"rows_read": 1200, "rows_scored": 1000, "rows_failed": 3, "padding_efficiency": 0.8731, "seconds_total": 11.0, "rows_carried": None}
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(200, 16))
    with RunTracker(cfg) as tracker:
        run_id = tracker.run_id
        assert run_id
        tracker.log_params(params)
        tracker.log_metrics(metrics)
        tracker.set_tags({"spark_scoring.model_id": "abc123", "ignored": None})
        tracker.log_config(cfg)
        tracker.set_output_version(12)
        tracker.log_report(REPORT)
        tracker.log_distribution(embeddings, kind="embedding_norm", title="Embedding norms")

    client = _client(store_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "nightly-embed"
    assert client.get_experiment(run.info.experiment_id).name == "spark-scoring-tests"
    expected_params = {k: str(v) for k, v in params.items() if v is not None}
    assert run.data.params == expected_params
    assert run.data.metrics == {
        "rows_read": 1200.0, "rows_scored": 1000.0, "rows_failed": 3.0,
        "padding_efficiency": 0.8731, "seconds_total": 11.0, "output_version": 12.0,
    }
    tags = run.data.tags
    assert tags["spark_scoring.job"] == "nightly-embed"
    assert tags["spark_scoring.output_table"] == "/data/docs_scored"
    assert tags["spark_scoring.output_version"] == "12"
    assert tags["spark_scoring.model_id"] == "abc123"
    assert "ignored" not in tags and "spark_scoring.failure" not in tags

    names = {a.path for a in client.list_artifacts(run_id)}
    assert names == {"config.yaml", "report.json", "report.md", "distribution.png"}
    assert yaml.safe_load(_artifact(client, run_id, "config.yaml", tmp_path)) == cfg.to_dict()
    assert json.loads(_artifact(client, run_id, "report.json", tmp_path)) == REPORT
    md = _artifact(client, run_id, "report.md", tmp_path).decode()
    assert "# Scoring run report: nightly-embed" in md
    assert "| rows_scored | 1,000 |" in md
    assert "| score | 7.5 | 68% |" in md  # phase table with shares of the total
    assert "| 2024-01-02 | 400 |" in md
    png = _artifact(client, run_id, "distribution.png", tmp_path)
    assert png.startswith(PNG_MAGIC) and len(png) > 5_000
    # artifacts sit next to the database, not in the working directory
    art = client.get_experiment(run.info.experiment_id).artifact_location
    assert art.startswith(Path(store_uri[len("sqlite:///"):]).parent.as_uri())


def test_exception_ends_run_failed_with_reason(store_uri):
    cfg = _cfg(store_uri, name="failing-job")
    with pytest.raises(RuntimeError, match="source table vanished"), RunTracker(cfg) as tracker:
        run_id = tracker.run_id
        tracker.log_metrics({"rows_read": 10})
        raise RuntimeError("source table vanished")
    run = _client(store_uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["spark_scoring.failure"] == "RuntimeError: source table vanished"
    assert run.data.metrics["rows_read"] == 10.0


def test_long_failure_message_is_truncated(store_uri):
    with pytest.raises(ValueError), RunTracker(_cfg(store_uri, name="long-failure")) as tracker:
        run_id = tracker.run_id
        raise ValueError("x" * 20_000)
    tag = _client(store_uri).get_run(run_id).data.tags["spark_scoring.failure"]
    assert tag.startswith("ValueError: xxx") and tag.endswith("...[truncated]")
    assert len(tag) == 4000


def test_keyboard_interrupt_ends_run_killed(store_uri):
    with pytest.raises(KeyboardInterrupt), RunTracker(_cfg(store_uri, name="interrupted")) as tracker:
        run_id = tracker.run_id
        raise KeyboardInterrupt
    assert _client(store_uri).get_run(run_id).info.status == "KILLED"


def test_logging_failure_does_not_hide_the_original_exception(store_uri):
    """The tracking server goes away mid-run: the caller still sees its own exception."""
    from mlflow import MlflowClient

    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(ZeroDivisionError), RunTracker(_cfg(store_uri, name="server-gone")) as tracker:
        tracker._client = MlflowClient(tracking_uri=dead, registry_uri=dead)
        1 / 0  # noqa: B018
    assert time.perf_counter() - t0 < 30  # recording the failure gave up quickly


def test_params_are_write_once(store_uri):
    with RunTracker(_cfg(store_uri, name="params-twice")) as tracker:
        tracker.log_params({"source_version": 3})
        tracker.log_params({"source_version": 3})  # same value: fine
        with pytest.raises(TrackingError, match=r"MLflow refused to log params for run \w+ at sqlite:"):
            tracker.log_params({"source_version": 4})
        with pytest.raises(TrackingError, match="metric 'rows_read' must be a number, got 'many'"):
            tracker.log_metrics({"rows_read": "many"})
        with pytest.raises(TrackingError, match="distribution kind 'labels' is not supported; use 'score' or 'embedding_norm'"):
            tracker.log_distribution(np.ones(3), kind="labels", title="x")


def test_not_started_tracker_refuses_to_log(store_uri):
    tracker = RunTracker(_cfg(store_uri))
    assert tracker.run_id is None
    with pytest.raises(TrackingError, match=r"the MLflow run is not started; call RunTracker.start\(\) first"):
        tracker.log_metrics({"rows_read": 1})


def test_unreachable_server_fails_fast_on_start():
    uri = f"http://127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    unreachable = rf"the MLflow tracking server {uri} is unreachable .*start it, or point mlflow.tracking_uri"
    with pytest.raises(TrackingError, match=unreachable), RunTracker(_cfg(uri)):
        pass
    assert time.perf_counter() - t0 < 10


#: Where a notebook might have pointed MLflow; no store answers to this scheme, so anything
#: that reads the process-wide URI instead of ours fails at once.
ELSEWHERE = "elsewhere-sentinel://not-our-store"


def test_a_run_neither_reads_nor_changes_mlflow_process_state(store_uri, monkeypatch, no_default_mlflow_store):
    mlflow_state = no_default_mlflow_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ELSEWHERE)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", ELSEWHERE)
    before = mlflow_state()
    with RunTracker(_cfg(store_uri, name="isolated")) as tracker:
        tracker.log_metrics({"rows_read": 5})
        tracker.log_report(REPORT)
        assert mlflow_state() == before
    assert mlflow_state() == before  # URIs (module state) and MLFLOW_* variables alike
    run = _client(store_uri).get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics == {"rows_read": 5.0}


def test_store_resolves_logged_models_is_scoped(no_default_mlflow_store):
    from mlflow.tracking._tracking_service import utils as tracking_utils

    mlflow_state = no_default_mlflow_store
    before = mlflow_state()
    with pytest.raises(ZeroDivisionError), store_resolves_logged_models("sqlite:////ours.db", "sqlite:////ours.db"):
        assert tracking_utils._tracking_uri == "sqlite:////ours.db"  # only inside the block
        assert mlflow_state()[1:] == before[1:]  # registry URI and environment untouched
        1 / 0  # noqa: B018
    assert mlflow_state() == before
    with store_resolves_logged_models("sqlite:////ours.db", "http://registry.example:5000"):
        assert mlflow_state() == before  # a server resolves models:/ sources itself


def test_default_tracking_uri(tmp_path, monkeypatch):
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert default_tracking_uri() == "http://mlflow.example:5000"


def test_tracker_uses_default_store_when_none_configured(tmp_path, monkeypatch):
    """No tracking URI anywhere: the run lands in ./mlflow.db (absolute path)."""
    cfg = _cfg(None)
    with RunTracker(cfg) as tracker:
        assert tracker.tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
        run_id = tracker.run_id
    assert _client(tracker.tracking_uri).get_run(run_id).info.status == "FINISHED"
    assert (tmp_path / "mlflow.db").is_file()
    (tmp_path / "mlflow.db").unlink()  # expected here; the autouse guard checks the others
    import shutil

    shutil.rmtree(tmp_path / "mlartifacts", ignore_errors=True)


# --------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------


def test_report_markdown_rendering():
    md = render_report_markdown(REPORT, job="j", run_id="r1")
    lines = md.splitlines()
    assert lines[0] == "# Scoring run report: j"
    assert "MLflow run `r1`" in md
    summary = lines.index("## Summary")
    assert lines[summary + 2 : summary + 4] == ["| item | value |", "| --- | ---: |"]
    assert "| status | published |" in md
    assert "| padding_efficiency | 0.8731 |" in md
    assert "| total | 11 |  |" in md
    assert "| day | rows |" in md


def test_distribution_png_is_a_labelled_histogram():
    import matplotlib.image

    png = render_distribution_png(np.linspace(0, 1, 500), "score", "Scores")
    assert png.startswith(PNG_MAGIC)
    import io

    img = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert img.shape[:2] == (420, 700)
    empty = render_distribution_png(np.array([np.nan]), "score", "No scores")
    assert empty.startswith(PNG_MAGIC)


# --------------------------------------------------------------------------------------
# after the commit: tracking failures are warnings; runs left RUNNING are closed later
# --------------------------------------------------------------------------------------


def test_after_the_commit_a_dead_tracking_server_is_a_warning_and_costs_seconds(store_uri, caplog):
    from mlflow import MlflowClient

    cfg = _cfg(store_uri, name="published-then-gone")
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    with RunTracker(cfg) as tracker:
        run_id = tracker.run_id
        tracker.log_metrics({"rows_read": 10})
        tracker.set_output_version(4)  # the commit landed
        assert tracker.published
        tracker._client = MlflowClient(tracking_uri=dead, registry_uri=dead)  # the server is gone
        tracker.log_metrics({"rows_scored": 10})
        tracker.log_report(REPORT)
        tracker.log_distribution(np.ones(5), kind="score", title="x")
        tracker.set_tags({"a": 1})
    assert time.perf_counter() - t0 < 60
    lost = [r for r in caplog.records if "is published, but MLflow run" in r.getMessage()]
    assert len(lost) == 2, [r.getMessage() for r in lost]  # the first call, then the end; the rest skipped
    assert f"output version 4 is published, but MLflow run {run_id} could not log metrics at " in lost[0].getMessage()
    assert "Connection refused" in lost[0].getMessage() and "its later records are skipped" in lost[0].getMessage()
    assert "The data is complete: the next run does not redo it" in lost[0].getMessage()
    assert "could not mark the run FINISHED" in lost[1].getMessage()
    assert "later records" not in lost[1].getMessage()
    run = _client(store_uri).get_run(run_id)
    assert run.info.status == "RUNNING"  # what close_stale_run is for
    assert run.data.tags["spark_scoring.output_version"] == "4" and "rows_scored" not in run.data.metrics


def test_after_the_commit_an_exception_still_ends_the_run_finished(store_uri):
    with pytest.raises(RuntimeError, match="cleanup failed"), RunTracker(_cfg(store_uri, name="late-failure")) as tracker:
        run_id = tracker.run_id
        tracker.set_output_version(2)
        raise RuntimeError("cleanup failed")
    run = _client(store_uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["spark_scoring.warning"] == "published, then failed afterwards: RuntimeError: cleanup failed"
    assert "spark_scoring.failure" not in run.data.tags


def _left_running(store_uri: str, name: str):
    """A run of job `name` that published output version 3 and was never ended (its process died)."""
    from spark_scoring.contract import CommitRecord

    tracker = RunTracker(_cfg(store_uri, name=name)).start()
    tracker.log_metrics({"rows_scored": 5})
    return tracker.run_id, CommitRecord(run_id=tracker.run_id, job=name, mode="run", source_version=1)


def test_close_stale_run_finishes_the_run_behind_the_last_commit(store_uri):
    from spark_scoring.tracking import CLOSED_AFTERWARDS_TAG, close_stale_run

    cfg = _cfg(store_uri, name="killed-after-commit")
    run_id, record = _left_running(store_uri, cfg.name)
    assert _client(store_uri).get_run(run_id).info.status == "RUNNING"
    assert close_stale_run(cfg, record, output_version=3) == run_id
    run = _client(store_uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time is not None
    assert run.data.tags[CLOSED_AFTERWARDS_TAG].startswith(
        "ended by a later run of job 'killed-after-commit': this run's commit landed (output version 3) but its process "
        "stopped before it ended this MLflow run")
    assert run.data.tags["spark_scoring.output_version"] == "3"
    assert run.data.metrics["rows_scored"] == 5.0  # what it had recorded stays
    assert close_stale_run(cfg, record, output_version=3) is None  # once only


def test_close_stale_run_leaves_other_runs_alone(store_uri, tmp_path):
    from spark_scoring.contract import CommitRecord
    from spark_scoring.tracking import close_stale_run

    cfg = _cfg(store_uri, name="careful")
    with RunTracker(cfg) as tracker:  # ended normally
        finished = tracker.run_id
    assert close_stale_run(cfg, CommitRecord(run_id=finished, job=cfg.name)) is None
    other_job, record = _left_running(store_uri, "someone-else")
    assert close_stale_run(cfg, record) is None  # the record is another job's
    assert close_stale_run(cfg, CommitRecord(run_id=other_job, job=cfg.name)) is None  # the run is
    assert _client(store_uri).get_run(other_job).info.status == "RUNNING"
    assert close_stale_run(cfg, None) is None
    assert close_stale_run(cfg, CommitRecord(run_id="0" * 32, job=cfg.name)) is None  # not in this store
    missing = _cfg(f"sqlite:///{tmp_path / 'nothing.db'}", name="careful")
    assert close_stale_run(missing, CommitRecord(run_id=finished, job="careful")) is None
    assert not (tmp_path / "nothing.db").exists()  # no store was created
    t0 = time.perf_counter()
    dead = _cfg(f"http://127.0.0.1:{_free_port()}", name="careful")
    assert close_stale_run(dead, CommitRecord(run_id=finished, job="careful")) is None
    assert time.perf_counter() - t0 < 15
