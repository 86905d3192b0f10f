"""The CLI contract: commands, printed output and exit codes (0 ok, 1 run failed, 2 usage/config)."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import yaml
from deltalake import DeltaTable

from spark_scoring.cli import main, parse_partition
from spark_scoring.errors import UsageError
from tests.pipeline_helpers import job_config, source_rows, write_source


def config_file(tmp_path, cfg) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(cfg.to_yaml())
    return str(path)


def test_run_status_backfill_exit_codes(spark, tmp_path, minilm_dir, capsys):
    write_source(tmp_path / "source", source_rows(range(1, 11), "2026-01-01"))
    path = config_file(tmp_path, job_config(tmp_path, minilm_dir))

    assert main(["run", path, "--dry-run"]) == 0
    assert "dry-run" in capsys.readouterr().out
    assert not DeltaTable.is_deltatable(str(tmp_path / "output"))

    assert main(["run", path]) == 0
    out = capsys.readouterr().out
    assert "rows scored" in out and "10" in out and "published" in out

    assert main(["status", path, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["watermark"] == 0 and status["pending_source_versions"] == 0
    assert status["last_runs"][0]["rows_scored"] == 10

    assert main(["run", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "nothing-to-do"

    assert main(["backfill", path, "--partition", "day=2026-01-01", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows_scored"] == 10

    assert main(["backfill", path, "--from", "2026-01-01"]) == 2
    assert "both --from and --to" in capsys.readouterr().err


def test_failed_run_exits_1_and_publishes_nothing(spark, tmp_path, minilm_dir, capsys):
    write_source(tmp_path / "source", pd.DataFrame({"id": [1, 2], "day": ["d", "d"], "lang": ["en", "en"], "text": [None, "ok"]}))
    path = config_file(tmp_path, job_config(tmp_path, minilm_dir, errors={"max_error_rate": 0.0}))
    assert main(["run", path]) == 1
    err = capsys.readouterr().err
    assert "over the error budget" in err and "Nothing was published" in err
    assert not DeltaTable.is_deltatable(str(tmp_path / "output"))


def test_config_and_usage_errors_exit_2(tmp_path, minilm_dir, capsys):
    cfg = job_config(tmp_path, minilm_dir).to_dict()
    cfg["model"]["task"] = "translate"
    cfg["errors"]["max_error_rate"] = 7
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "model.task: 'translate' is not allowed" in err
    assert "errors.max_error_rate: must be between 0 and 1, got 7" in err
    assert main(["run"]) == 2
    assert main(["register-model", "--path", "x", "--name", "n", "--task", "bogus"]) == 2


def test_register_model_prints_the_registered_uri(tmp_path, minilm_dir, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["register-model", "--path", minilm_dir, "--name", "reviews", "--task", "embedding",
                 "--alias", "champion", "--tracking-uri", uri])
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "models:/reviews/1"
    version = mlflow.MlflowClient(uri, registry_uri=uri).get_model_version_by_alias("reviews", "champion")
    assert str(version.version) == "1"


def test_parse_partition():
    assert parse_partition("a=1,b=x y") == {"a": "1", "b": "x y"}
    assert parse_partition("a=__NULL__") == {"a": None}
    assert parse_partition("city=Paris, France,day=2024-05-01") == {"city": "Paris, France", "day": "2024-05-01"}
    with pytest.raises(UsageError, match="given twice"):
        parse_partition("day=a,day=b")


def test_a_run_reports_its_phases_and_a_cold_noop_run_starts_no_spark(spark, tmp_path, minilm_dir, capsys):
    """Issue 16: the report breaks a run down; a night with nothing to do is decided from
    the Delta logs in a fresh process, without a JVM."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    write_source(tmp_path / "source", source_rows(range(1, 9), "2026-01-01"))
    path = config_file(tmp_path, job_config(tmp_path, minilm_dir))
    assert main(["run", path, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["status"] == "published" and first["rows_scored"] == 8
    assert {"model", "plan", "read", "load", "score", "commit", "mlflow", "plot", "total"} <= set(first["seconds"])
    assert first["worker_seconds"]["model"] > 0 and first["worker_seconds"]["prepare"] > 0
    assert sum(v for k, v in first["seconds"].items() if k != "total") <= first["seconds"]["total"] + 0.01

    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "SPARK_REMOTE")}
    cli = Path(sys.executable).with_name("spark-scoring")
    done = subprocess.run([str(cli), "run", path, "--json", "-v"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    noop = json.loads(done.stdout)
    assert noop["status"] == "nothing-to-do" and noop["output_version"] == 0
    assert "session" not in noop["seconds"] and "read" not in noop["seconds"], noop["seconds"]
    assert "SparkSession" not in done.stderr and "Spark Connect session" not in done.stderr
