"""The job over Spark Connect: sessions, model shipping, counters, progress, the CLI contract.

Tests marked `connect` run against the suite's own Connect server (`tests/connect_server.py`,
a separate JVM: this process has none) or, through the CLI, against a local Connect server
each `spark-scoring run` starts (`SPARK_REMOTE=local[2]`). They run in their own pytest
process: `make test-connect`. The unmarked tests here need no Spark at all.

Besides these, `test_connect_pipeline.py`, `test_connect_explore.py`,
`test_connect_notebooks.py` and `test_connect_crash.py` run the classic suite's pipeline,
explore, notebook and crash tests unchanged over Connect, and this module reruns the
scoring and progress tests of `test_udf.py` and `test_progress.py`.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from deltalake import DeltaTable

from spark_scoring import session, udf
from spark_scoring.config import ModelConfig, SparkConfig, config_from_dict
from spark_scoring.errors import ConfigError, UsageError
from tests.connect_server import connect_session, server_url
from tests.pipeline_helpers import job_config, read_output, source_rows, write_source
from tests.test_progress import (  # noqa: F401  (rerun here over Connect)
    test_a_failed_job_prints_no_final_line,
    test_progress_reports_a_running_spark_job,
)
from tests.test_udf import (  # noqa: F401  (rerun here over Connect; minilm_ref is their fixture)
    minilm_ref,
    test_embedding_scores_every_row_keeps_columns_and_matches_encode,
    test_executor_load_failure_becomes_a_model_error,
    test_missing_or_non_text_input_and_column_clash_fail_before_running,
    test_pyfunc_columns_from_signature_and_isolated_failures,
    test_stats_come_back_with_the_scoring_action,
    test_text_classification_with_all_scores,
)
from tests.tiny_models import tiny_models  # noqa: F401  (registers the fixture)

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("spark-scoring")
connect = pytest.mark.connect



def _rerun(test):
    """`test` (imported from the classic suite) marked `connect` for this module only: a
    wrapper carries the mark, so the original stays in the default suite."""

    @functools.wraps(test)
    def rerun(*args, **kwargs):
        return test(*args, **kwargs)

    return connect(rerun)


# (this module is not marked as a whole: the unmarked tests below run in the default suite)
for _name, _test in list(globals().items()):
    if _name.startswith("test_") and callable(_test) and _test.__module__ != __name__:
        globals()[_name] = _rerun(_test)


@pytest.fixture(scope="session")
def spark():
    """The suite's Connect session (overrides the classic `spark` of conftest.py here)."""
    return connect_session()


# --------------------------------------------------------------------------------------
# No Spark: the address rules
# --------------------------------------------------------------------------------------


def _raw(**spark_section) -> dict:
    return {
        "name": "j", "source": {"table": "/t/s", "key": "id"}, "output": {"table": "/t/o"},
        "model": {"uri": "/m", "task": "embedding", "input": "text"}, "spark": spark_section,
    }


def test_spark_remote_takes_connect_addresses_and_names_the_fix():
    for good in ("sc://localhost:15002", "sc://spark.example.com", "sc://h:443/;use_ssl=true;token=x", "local[2]", "local[*]"):
        assert config_from_dict(_raw(remote=good, master="local[*]")).spark.remote == good
    with pytest.raises(ConfigError) as err:
        config_from_dict(_raw(remote="spark://master:7077"))
    assert (
        "spark.remote: 'spark://master:7077' is not a Spark Connect address; use sc://HOST[:PORT] "
        "(a Spark Connect server, e.g. sc://localhost:15002) or local[N]" in str(err.value)
    )


def test_spark_remote_wins_over_the_config_and_is_checked(monkeypatch):
    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    assert session._remote_address(SparkConfig(master="local[*]")) is None
    assert session._remote_address(SparkConfig(remote="sc://a:1")) == "sc://a:1"
    monkeypatch.setenv("SPARK_REMOTE", "local[2]")
    assert session._remote_address(SparkConfig(remote="sc://a:1")) == "local[2]"
    monkeypatch.setenv("SPARK_REMOTE", "yarn")
    with pytest.raises(UsageError, match=r"SPARK_REMOTE: 'yarn' is not a Spark Connect address"):
        session._remote_address(SparkConfig())


def test_an_unreachable_server_fails_in_seconds_with_the_fix():
    with socket_closed_port() as port, pytest.raises(
        UsageError, match=rf"no Spark Connect server answers at 127.0.0.1:{port} \(sc://127.0.0.1:{port}\).*"
        "start the server or fix spark.remote / SPARK_REMOTE"
    ):
        session._check_reachable(f"sc://127.0.0.1:{port}")


class socket_closed_port:
    """A port nobody listens on (bound, then released)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        return None


# --------------------------------------------------------------------------------------
# The session, the model, the engine
# --------------------------------------------------------------------------------------


@connect
def test_connect_session_kind_parallelism_and_no_jvm_here(spark):
    from pyspark import SparkContext

    assert session.is_connect(spark) and not session.is_local_server(spark)
    assert session.get_spark(SparkConfig(master="local[1]")) is spark  # the active session wins
    assert session.describe(spark) == f"Spark Connect session to Spark Connect server 127.0.0.1 (Spark {spark.version})"
    # the server runs local[2] and sets no spark.default.parallelism: found by a job
    assert spark.conf.get("spark.default.parallelism", None) is None
    assert session.default_parallelism(spark) == 2
    assert SparkContext._jvm is None and SparkContext._active_spark_context is None  # type: ignore[attr-defined]


@connect
def test_the_model_ships_as_an_artifact_and_scores_as_the_model_does(spark, tiny_models):  # noqa: F811
    cfg = ModelConfig(uri=f"file://{tiny_models.bert_mean}", task="embedding", input=("text",))
    identity = f"connect-{uuid.uuid4().hex[:8]}"
    spec = udf.prepare_model(spark, model_dir=tiny_models.bert_mean, model_uri=cfg.uri, model_cfg=cfg, identity=identity)
    assert spec.shipped_name == f"{identity}-bert_mean.tar"  # a server of its own: shipped
    again = udf.prepare_model(spark, model_dir=tiny_models.bert_mean, model_uri=cfg.uri, model_cfg=cfg, identity=identity)
    assert again.shipped_name == spec.shipped_name  # once per session
    unshipped = udf.prepare_model(spark, model_dir=tiny_models.bert_mean, model_uri=cfg.uri, model_cfg=cfg,
                                  identity=identity, ship=False)
    assert unshipped.shipped_name is None

    def where(it):
        for _ in it:
            yield pd.DataFrame({"dir": [udf._local_model_dir(spec)]})

    executor_dir = Path(spark.range(1).mapInPandas(where, "dir string").collect()[0].dir)
    # the executors read the unpacked artifact of this session, not the driver's directory
    assert executor_dir.name == spec.shipped_name and executor_dir != Path(tiny_models.bert_mean)
    assert sorted(p.name for p in executor_dir.iterdir()) == sorted(p.name for p in Path(tiny_models.bert_mean).iterdir())

    texts = ["hello", None, "spark over connect", "a " * 100]
    df = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "id long, text string")
    scored = udf.score(df, spec, stats=True).persist()
    stats = udf.collect_stats(scored)
    rows = sorted(scored.collect(), key=lambda r: r.id)
    scored.unpersist()
    from spark_scoring.models.tasks import get_task

    direct = get_task("embedding").load(tiny_models.bert_mean, {}, "cpu", "fp32")
    expected = direct.predict(pd.DataFrame({"text": [texts[0], texts[2], texts[3]]}))["embedding"]
    np.testing.assert_allclose(np.array([rows[i].embedding for i in (0, 2, 3)]), np.array(expected), atol=1e-4)
    assert [r.error for r in rows] == [None, "input column 'text' is null", None, None]
    assert (stats.rows, stats.rows_failed) == (4, 1) and stats.batches >= 1
    assert 0 < stats.real_tokens <= stats.padded_tokens


@connect
def test_engine_auto_over_connect_uses_delta_rs_while_the_server_lacks_delta_connect(spark, tmp_path):
    from spark_scoring.lakehouse import delta_jars_available, open_lakehouse

    path = str(tmp_path / "t")
    spark.range(3).write.format("delta").save(path)  # the server has the Delta connector...
    assert sorted(r.id for r in spark.read.format("delta").load(path).collect()) == [0, 1, 2]
    # ...but Delta's Python API needs the Delta Connect plugin, which the 4.4.0 jars lack
    assert delta_jars_available(spark) is False
    lake = open_lakehouse(spark, "auto")
    assert lake.engine == "delta-rs"
    assert lake.latest_version(path) == 0 and sorted(r.id for r in lake.read(path, 0).collect()) == [0, 1, 2]
    with pytest.raises(UsageError, match="lakehouse engine 'delta-spark' needs the Delta Lake JVM connector"):
        open_lakehouse(spark, "delta-spark")


# --------------------------------------------------------------------------------------
# The contract: `SPARK_REMOTE=local[2] spark-scoring run CONFIG`, README config
# --------------------------------------------------------------------------------------


def readme_config() -> dict:
    """The job config of README.md's "Job config" section, as a dict."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Job config"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "README.md has no yaml block under '### Job config'"
    return yaml.safe_load(block.group(1))


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def _rows(ids, day: str, texts=None) -> pd.DataFrame:
    df = source_rows(ids, day).rename(columns={"day": "event_date"})
    if texts is not None:
        df["text"] = texts
    return df


def _write(path: Path, df: pd.DataFrame) -> int:
    import pyarrow as pa
    from deltalake import write_deltalake

    schema = pa.schema([("id", pa.int64()), ("event_date", pa.string()), ("lang", pa.string()), ("text", pa.string())])
    write_deltalake(str(path), pa.Table.from_pandas(df, schema=schema, preserve_index=False),
                    partition_by=["event_date"], mode="append")
    return DeltaTable(str(path)).version()


@connect
def test_cli_nights_over_a_local_connect_server_with_the_readme_config(tmp_path, minilm_dir, minilm_ref):  # noqa: F811
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    reg = _cli("register-model", "--path", minilm_dir, "--name", "reviews", "--task", "embedding",
               "--alias", "champion", "--tracking-uri", uri, cwd=tmp_path)
    assert reg.returncode == 0 and reg.stdout.strip().splitlines()[-1] == "models:/reviews/1", reg.stderr

    raw = readme_config()
    assert raw["spark"]["master"] and raw["model"]["uri"] == "models:/reviews@champion"
    raw["source"]["table"], raw["output"]["table"] = str(tmp_path / "reviews"), str(tmp_path / "reviews_scored")
    raw["mlflow"]["tracking_uri"] = uri
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {"SPARK_REMOTE": "local[2]"}
    src, out_dir = tmp_path / "reviews", tmp_path / "reviews_scored"

    def expected(df: pd.DataFrame) -> np.ndarray:
        return minilm_ref.encode(df["text"].tolist(), show_progress_bar=False)

    # night 1: every row
    _write(src, _rows(range(0, 30), "2024-05-01"))
    _write(src, _rows(range(30, 60), "2024-05-02"))
    first = _cli("-v", "run", str(config), cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    log = first.stderr
    assert "Spark Connect session to a local Spark Connect server (local[2])" in log
    assert f"spark.master {raw['spark']['master']} is ignored: the job runs over Spark Connect (local[2])" in log
    assert "did not take" not in log  # every setting reached the server
    out = read_output(out_dir)
    source = DeltaTable(str(src)).to_pandas().sort_values("id").reset_index(drop=True)
    assert out["id"].tolist() == list(range(60)) and out["error"].isna().all()
    np.testing.assert_allclose(np.stack(out["embedding"]), expected(source), atol=1e-4)
    assert set(out["model_uri"]) == {"models:/reviews/1"} and out["run_id"].nunique() == 1
    night1_run = out["run_id"][0]

    # night 2: appends and deletes
    _write(src, _rows(range(60, 70), "2024-05-03"))
    DeltaTable(str(src)).delete("id < 5")
    second = _cli("run", str(config), "--json", cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    report = yaml.safe_load(second.stdout[second.stdout.index("{"):])
    assert report["status"] == "published" and report["rows_scored"] == 10 and report["rows_failed"] == 0
    out = read_output(out_dir)
    source = DeltaTable(str(src)).to_pandas().sort_values("id").reset_index(drop=True)
    assert out["id"].tolist() == source["id"].tolist() == list(range(5, 70))
    np.testing.assert_allclose(np.stack(out["embedding"]), expected(source), atol=1e-4)
    assert (out["run_id"] == night1_run).sum() == 55  # the unchanged rows were not scored again
    night2_version = DeltaTable(str(out_dir)).version()

    # night 3: over the error budget (README: max_error_rate 0.01): exit 1, nothing published
    _write(src, _rows(range(70, 80), "2024-05-04", texts=[None] * 10))
    third = _cli("run", str(config), cwd=tmp_path, env=env)
    assert third.returncode == 1, third.stdout + third.stderr
    assert "10 of 10 scored rows failed (100.00%), over the error budget" in third.stderr
    assert "Nothing was published" in third.stderr
    assert DeltaTable(str(out_dir)).version() == night2_version
    assert read_output(out_dir)["id"].tolist() == list(range(5, 70))

    # lineage and MLflow, as on a classic session
    client = mlflow.MlflowClient(uri)
    runs = {r.info.run_id: r for r in client.search_runs([client.get_experiment_by_name(raw["mlflow"]["experiment"]).experiment_id])}
    assert runs[night1_run].info.status == "FINISHED" and runs[night1_run].data.metrics["rows_scored"] == 60
    assert runs[report["run_id"]].data.metrics["rows_scored"] == 10
    failed = [r for r in runs.values() if r.info.status == "FAILED"]
    assert len(failed) == 1 and failed[0].data.metrics.get("rows_failed") == 10


# --------------------------------------------------------------------------------------
# A killed client of a server of its own
# --------------------------------------------------------------------------------------


@connect
def test_a_killed_client_of_a_remote_server_publishes_nothing_and_the_next_run_completes(spark, tmp_path, minilm_dir):
    from tests.test_crash import kill_group, start_run, wait_for

    for d in range(3):
        write_source(tmp_path / "source", source_rows(range(40 * d, 40 * d + 40), f"2026-01-0{d + 1}"))
    cfg = job_config(tmp_path, minilm_dir, run={"progress": True, "num_partitions": 2},
                     spark={"remote": server_url(), "master": "local[1]"})
    config = tmp_path / "job.yaml"
    config.write_text(cfg.to_yaml())
    env_before = os.environ.pop("SPARK_REMOTE", None)
    try:
        proc = start_run(config, tmp_path)

        def scoring_started() -> bool:
            return proc.stdout.readline().startswith("scoring:")

        wait_for(scoring_started, proc)
        kill_group(proc)
        assert not (tmp_path / "output" / "_delta_log").exists()  # nothing published
        done = _cli("run", str(config), "--json", cwd=tmp_path)
    finally:
        if env_before is not None:
            os.environ["SPARK_REMOTE"] = env_before
    assert done.returncode == 0, done.stdout + done.stderr
    out = read_output(tmp_path / "output")
    assert out["id"].tolist() == list(range(120)) and out["error"].isna().all()
    assert DeltaTable(str(tmp_path / "output")).version() == 0
    shutil.rmtree(tmp_path / "output")
