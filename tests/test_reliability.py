"""Sequences nobody planned for (issue 12), through the CLI on real tables and MLflow stores.

Side tables are idempotent per source version (class 8); once a commit landed the exit
code is 0 whatever fails afterwards, and the next run does not redo the work (class 6);
one bad value fails one row (class 9); any legal column name works (class 11).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from spark_scoring import pipeline
from spark_scoring.cli import main
from spark_scoring.contract import CommitRecord
from spark_scoring.tracking import CLOSED_AFTERWARDS_TAG, RunTracker, close_stale_run
from tests.pipeline_helpers import job_config, read_output, source_rows, write_source


def config_file(tmp_path, cfg, name: str = "job.yaml") -> str:
    path = tmp_path / name
    path.write_text(cfg.to_yaml())
    return str(path)


def _bad_rows(ids, day: str) -> pd.DataFrame:
    """Rows the model cannot score (null text): each gets an error."""
    return pd.DataFrame({"id": list(ids), "day": [day] * len(ids), "lang": ["en"] * len(ids), "text": [None] * len(ids)})


def _last_record(table) -> CommitRecord:
    """The output's last commit record, read with delta-rs (custom metadata: top-level keys)."""
    return CommitRecord.from_metadata(DeltaTable(str(table)).history(1)[0])


def _quarantined(tmp_path) -> pd.DataFrame:
    return DeltaTable(str(tmp_path / "quarantine")).to_pandas().sort_values(["id", "source_version"]).reset_index(drop=True)


# ------------------------------------------------------------------ class 8: side tables


def test_reruns_over_the_budget_and_after_publishing_quarantine_each_failure_once(spark, tmp_path, minilm_dir, capsys):
    write_source(tmp_path / "source", source_rows(range(1, 9), "d1"))
    v1 = write_source(tmp_path / "source", _bad_rows([70, 71], "d1"))
    errors = {"max_error_rate": 0.1, "quarantine_table": str(tmp_path / "quarantine")}
    path = config_file(tmp_path, job_config(tmp_path, minilm_dir, errors=errors))

    for _attempt in range(2):  # the same night, rerun while the input is still bad
        assert main(["run", path]) == 1
        assert "over the error budget" in capsys.readouterr().err
    q = _quarantined(tmp_path)
    assert q["id"].tolist() == [70, 71] and set(q["source_version"]) == {v1}
    assert DeltaTable(str(tmp_path / "quarantine")).version() == 0  # one commit, reruns wrote nothing

    # the budget is raised: the night publishes, its failures are already quarantined
    raised = config_file(tmp_path, job_config(tmp_path, minilm_dir, errors={**errors, "max_error_rate": 0.5}), "raised.yaml")
    assert main(["run", raised]) == 0
    assert set(read_output(tmp_path / "output")["id"]) == {*range(1, 9), 70, 71}
    assert _quarantined(tmp_path)["id"].tolist() == [70, 71]
    assert main(["run", raised]) == 0  # nothing to do: nothing written anywhere
    assert DeltaTable(str(tmp_path / "quarantine")).version() == 0

    # the next night: only the new failure is added, whatever the night rescores
    write_source(tmp_path / "source", source_rows(range(9, 13), "d2"))
    v2 = write_source(tmp_path / "source", _bad_rows([72], "d2"))
    assert main(["run", raised]) == 0
    q = _quarantined(tmp_path)
    assert q["id"].tolist() == [70, 71, 72]
    assert q.set_index("id")["source_version"].to_dict() == {70: v1, 71: v1, 72: v2}
    assert main(["run", raised, "--full-refresh"]) == 0  # rescoring every row adds no copies either
    assert _quarantined(tmp_path)["id"].tolist() == [70, 71, 72]


# ------------------------------------------------------------------ class 9: one bad value


def _strings(values) -> pa.Array:
    """A string column holding exactly these bytes (valid UTF-8 or not), as a careless writer makes."""
    return pa.array(values, pa.binary()).view(pa.string())


def _bytes_of(table, column: str) -> dict:
    """column's raw bytes by key, read with delta-rs (never decoded)."""
    t = DeltaTable(str(table)).to_pyarrow_table()
    keys = t.column("id").cast(pa.binary()).to_pylist() if t.schema.field("id").type == pa.string() else t.column("id").to_pylist()
    return dict(zip(keys, t.column(column).cast(pa.binary()).to_pylist(), strict=True))


def test_invalid_utf8_in_the_model_input_fails_that_row_and_publishes_the_rest(spark, tmp_path, minilm_dir, capsys):
    texts = [b"a fine review", b"caf\xc3\x28 au lait", b"another fine one", "naïve but valid".encode()]
    table = pa.table({"id": pa.array([1, 2, 3, 4], pa.int64()), "day": ["d1"] * 4, "lang": ["en"] * 4, "text": _strings(texts)})
    write_deltalake(str(tmp_path / "source"), table, partition_by=["day"])
    path = config_file(tmp_path, job_config(tmp_path, minilm_dir))
    assert main(["run", path, "--json"]) == 0
    out = read_output(tmp_path / "output").set_index("id")
    assert out.loc[2, "error"] == ("input column 'text' is not valid UTF-8 text (invalid continuation byte: byte(s) "
                                   "c3 at offset 3 of 13); fix or remove the value in the source table")
    assert out.loc[[1, 3, 4], "error"].isna().all() and out.loc[[1, 3, 4], "embedding"].map(len).eq(384).all()
    # the value is fixed in the source: the next night rescores that row (its input changed)
    # (rewritten whole: delta-rs itself cannot read the bad file to update the row)
    texts[1] = "café au lait".encode()
    write_deltalake(str(tmp_path / "source"), table.set_column(3, "text", _strings(texts)), mode="overwrite")
    assert main(["run", path]) == 0
    fixed = read_output(tmp_path / "output").set_index("id")
    assert fixed["error"].isna().all() and len(fixed.loc[2, "embedding"]) == 384


@pytest.mark.parametrize("engine", ["delta-rs", "delta-spark"])
def test_invalid_utf8_in_key_and_passthrough_columns_is_published_byte_for_byte(spark, tmp_path, minilm_dir, engine):
    from tests.conftest import delta_jars

    if engine == "delta-spark" and not delta_jars():
        pytest.skip("the Delta Lake jars are not installed")
    keys = [b"k1", b"k\xff2", b"k3"]
    langs = [b"en", b"en", b"e\xc3\x28n"]
    table = pa.table({"id": _strings(keys), "day": ["d1"] * 3, "lang": _strings(langs),
                      "text": ["first text", "second text", "third text"]})
    write_deltalake(str(tmp_path / "source"), table, partition_by=["day"])
    cfg = job_config(tmp_path, minilm_dir, lakehouse={"engine": engine})
    result = pipeline.run(cfg, spark=spark)
    assert (result.status, result.rows_scored, result.rows_failed) == ("published", 3, 0)
    assert _bytes_of(tmp_path / "output", "lang") == dict(zip(keys, langs, strict=True))  # not a byte changed
    assert pipeline.run(cfg, spark=spark).status == "nothing-to-do"


# ------------------------------------------------------------------ class 6: after the commit


def _mlflow_server(root, port: int) -> subprocess.Popen:
    from tests.test_mlflow_server import _wait_healthy

    root.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with (root / "server.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env,
            start_new_session=True,  # its own process group: the server's workers die with it
        )
    _wait_healthy(f"http://127.0.0.1:{port}", proc, root / "server.log")
    return proc


def _stop(proc: subprocess.Popen) -> None:
    """Kill the server and its worker processes (the whole process group it leads)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_tracking_server_killed_after_the_commit_exits_0_and_the_next_run_redoes_nothing(
    spark, tmp_path, minilm_dir, monkeypatch, caplog, capsys
):
    from mlflow import MlflowClient

    from tests.test_mlflow_server import _free_port

    write_source(tmp_path / "source", source_rows(range(1, 9), "d1"))
    write_source(tmp_path / "source", _bad_rows([70], "d1"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _mlflow_server(tmp_path / "server", port)
    try:
        cfg = job_config(tmp_path, minilm_dir, mlflow={"tracking_uri": url, "experiment": "killed-server"},
                         errors={"max_error_rate": 0.5, "quarantine_table": str(tmp_path / "quarantine")})
        path = config_file(tmp_path, cfg)
        published_at: list[float] = []
        record_output = RunTracker.set_output_version

        def server_dies_as_the_commit_lands(tracker, version):
            _stop(server)  # the tracking server goes down between the commit and the end of the run
            published_at.append(time.perf_counter())
            record_output(tracker, version)

        monkeypatch.setattr(RunTracker, "set_output_version", server_dies_as_the_commit_lands)
        assert main(["run", path]) == 0
        after_commit = time.perf_counter() - published_at[0]
        assert after_commit < 90, f"{after_commit:.0f} s between the commit and the exit"  # not minutes of retries
        err = capsys.readouterr().err
        assert "failed" not in err.lower() or "rows failed" in err.lower(), err
        warned = [r.getMessage() for r in caplog.records if "is published, but MLflow run" in r.getMessage()]
        assert warned and "output version 0 is published" in warned[0]
        out = read_output(tmp_path / "output")
        assert out["id"].tolist() == [*range(1, 9), 70]
        assert _quarantined(tmp_path)["id"].tolist() == [70]  # the Delta side table does not need MLflow

        # the next run (MLflow still down) finds the work done
        assert main(["run", path, "--json"]) == 0
        assert '"status": "nothing-to-do"' in capsys.readouterr().out
        assert DeltaTable(str(tmp_path / "output")).version() == 0

        # MLflow is back: the run behind the published rows is still RUNNING; the next run closes it
        server = _mlflow_server(tmp_path / "server", port)
        record = _last_record(tmp_path / "output")
        client = MlflowClient(url)
        assert client.get_run(record.run_id).info.status == "RUNNING"
        assert set(out["run_id"]) == {record.run_id}
        assert close_stale_run(cfg, record, output_version=0) == record.run_id
        run = client.get_run(record.run_id)
        assert run.info.status == "FINISHED" and "this run's commit landed (output version 0)" in run.data.tags[CLOSED_AFTERWARDS_TAG]
    finally:
        _stop(server)


_KILLED_AFTER_COMMIT = textwrap.dedent("""
    import os, signal, sys
    from spark_scoring import tracking
    from spark_scoring.cli import main

    def die(tracker, version):  # the process is killed the moment its commit landed
        os.kill(os.getpid(), signal.SIGKILL)

    tracking.RunTracker.set_output_version = die
    sys.exit(main(["run", sys.argv[1]]))
""")


@pytest.mark.slow
def test_a_run_killed_after_its_commit_is_closed_afterwards_and_not_redone(spark, tmp_path, minilm_dir, capsys):
    from mlflow import MlflowClient

    write_source(tmp_path / "source", source_rows(range(1, 6), "d1"))
    cfg = job_config(tmp_path, minilm_dir)
    path = config_file(tmp_path, cfg)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(os.getcwd()), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _KILLED_AFTER_COMMIT, path], capture_output=True, text=True,
                          timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert read_output(tmp_path / "output")["id"].tolist() == [1, 2, 3, 4, 5]  # published
    record = _last_record(tmp_path / "output")
    client = MlflowClient(cfg.mlflow.tracking_uri)
    assert client.get_run(record.run_id).info.status == "RUNNING"  # left behind by the kill

    assert main(["run", path, "--json"]) == 0  # the next run does not redo the work, and closes the run
    assert '"status": "nothing-to-do"' in capsys.readouterr().out
    assert close_stale_run(cfg, record, output_version=0) is None  # nothing left to close
    run = client.get_run(record.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["spark_scoring.output_version"] == "0"
    assert run.data.tags[CLOSED_AFTERWARDS_TAG].startswith("ended by a later run of job 'test_job'")


# ------------------------------------------------------------------ class 11: column names


def test_a_passthrough_column_dropped_or_added_since_the_last_run_says_run_full_refresh(spark, tmp_path, minilm_dir, capsys):
    write_source(tmp_path / "source", source_rows(range(1, 6), "d1"))
    assert main(["run", config_file(tmp_path, job_config(tmp_path, minilm_dir))]) == 0
    DeltaTable(str(tmp_path / "source")).update({"text": "'rewritten review'"}, predicate="id = 2")
    dropped = config_file(tmp_path, job_config(tmp_path, minilm_dir, source__passthrough=[]), "dropped.yaml")
    assert main(["run", dropped]) == 1
    err = capsys.readouterr().err
    assert "column 'lang' is in the output table but not in the job config" in err
    assert "Run with --full-refresh to rebuild the output with the columns the job config names now" in err
    assert "mode 'overwrite'" not in err
    added = config_file(tmp_path, job_config(tmp_path, minilm_dir, source__passthrough=["lang", "text"]), "added.yaml")
    assert main(["run", added]) == 1
    err = capsys.readouterr().err
    assert "column 'text' is missing from the output table" in err and "--full-refresh" in err
    assert DeltaTable(str(tmp_path / "output")).version() == 0  # nothing was published
    assert main(["run", dropped, "--full-refresh"]) == 0
    out = read_output(tmp_path / "output")
    assert "lang" not in out.columns and out["id"].tolist() == [1, 2, 3, 4, 5]


def test_unusual_column_names_work_as_key_partition_passthrough_and_input(spark, tmp_path, minilm_dir):
    key, part, extra, text = "user id", "ev-day", "lang-ünï côde", "t@xt body"
    schema = pa.schema([(key, pa.int64()), (part, pa.string()), (extra, pa.string()), (text, pa.string())])

    def add(ids, day, texts, mode="append"):
        table = pa.table({key: ids, part: [day] * len(ids), extra: [f"v{i}" for i in ids], text: texts}, schema=schema)
        write_deltalake(str(tmp_path / "source"), table, partition_by=[part], mode=mode)

    add([1, 2, 3], "d1", ["first review", "second review", "third review"])
    errors = {"max_error_rate": 1.0, "quarantine_table": str(tmp_path / "quarantine")}
    cfg = job_config(tmp_path, minilm_dir, errors=errors, source={
        "table": str(tmp_path / "source"), "key": key, "partition_by": [part], "passthrough": [extra]},
        model={"uri": minilm_dir, "task": "embedding", "input": text})
    assert pipeline.run(cfg, spark=spark).rows_scored == 3
    add([4, 5], "d2", ["fourth review", None])  # an append night, with a failing row
    assert pipeline.run(cfg, spark=spark).rows_scored == 2
    DeltaTable(str(tmp_path / "source")).delete(f'"{key}" = 1')  # an upsert night with a delete
    assert pipeline.run(cfg, spark=spark).status == "published"
    assert pipeline.backfill(cfg, [{part: "d2"}], spark=spark).rows_scored == 2
    out = DeltaTable(str(tmp_path / "output")).to_pandas().sort_values(key)
    assert out[key].tolist() == [2, 3, 4, 5] and out[extra].tolist() == ["v2", "v3", "v4", "v5"]
    assert out[part].tolist() == ["d1", "d1", "d2", "d2"] and out["error"].notna().tolist() == [False, False, False, True]
    assert DeltaTable(str(tmp_path / "quarantine")).to_pandas()[key].tolist() == [5]


@pytest.mark.parametrize("where", ["key", "passthrough", "input"])
def test_column_names_with_a_dot_or_a_backtick_are_a_config_error(tmp_path, minilm_dir, where):
    from spark_scoring.errors import ConfigError

    name = {"key": "user.id", "passthrough": "la`ng", "input": "t.body"}[where]
    override = {"key": {"source__key": name}, "passthrough": {"source__passthrough": [name]},
                "input": {"model__input": name}}[where]
    with pytest.raises(ConfigError, match=r"has a '\.' or a backtick in its name.*alias"):
        job_config(tmp_path, minilm_dir, **override)
