"""The whole MLflow round trip through a real `mlflow server` over HTTP (slow).

register_model -> artifacts uploaded through the server (--serve-artifacts, the default),
resolve_model from a fresh cache -> artifacts downloaded through the server, RunTracker ->
a run with params/metrics/artifacts, all read back with an HTTP MlflowClient.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from spark_scoring.config import JobConfig, MlflowConfig, ModelConfig, OutputConfig, SourceConfig
from spark_scoring.models.flavors import TASK_TAG
from spark_scoring.models.register import register_model
from spark_scoring.models.resolve import resolve_model
from spark_scoring.tracking import RunTracker

pytestmark = pytest.mark.slow

TEXTS = ["Nightly scoring through a tracking server.", "Short text."]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)  # polling a starting server, not waiting for a fixed time
    raise RuntimeError(f"mlflow server did not answer /health within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    env.pop("MLFLOW_TRACKING_URI")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server",
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
                "--artifacts-destination", str(root / "artifacts"),
            ],
            stdout=out, stderr=subprocess.STDOUT, cwd=root, env=env,
        )
    try:
        _wait_healthy(url, proc, log)
        yield {"url": url, "root": root, "pid": proc.pid}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def test_register_resolve_and_track_through_the_server(server, minilm_dir, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from sentence_transformers import SentenceTransformer

    monkeypatch.chdir(tmp_path)
    url = server["url"]
    t0 = time.perf_counter()
    uri = register_model(minilm_dir, "minilm", task="embedding", alias="champion", tracking_uri=url)
    register_s = time.perf_counter() - t0
    assert uri == "models:/minilm/1"

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    mv = client.get_model_version("minilm", "1")
    assert mv.tags[TASK_TAG] == "embedding"
    # the weights went through the server into its artifacts destination
    stored = list((server["root"] / "artifacts").rglob("model.safetensors"))
    assert len(stored) == 1 and stored[0].stat().st_size > 1_000_000

    t0 = time.perf_counter()
    resolved = resolve_model("models:/minilm@champion", task="embedding", tracking_uri=url, cache_dir=tmp_path / "cache")
    resolve_s = time.perf_counter() - t0
    assert (resolved.resolved_uri, resolved.version, resolved.flavor) == ("models:/minilm/1", "1", "sentence_transformers")
    assert Path(resolved.local_dir).is_relative_to(tmp_path / "cache")
    got = SentenceTransformer(resolved.local_dir, device="cpu").encode(TEXTS)
    want = SentenceTransformer(minilm_dir, device="cpu").encode(TEXTS)
    np.testing.assert_allclose(got, want, atol=1e-5)
    by_run = resolve_model(f"runs:/{mv.run_id}/model", task="embedding", tracking_uri=url, cache_dir=tmp_path / "cache")
    assert Path(by_run.local_dir, "modules.json").is_file()

    cfg = JobConfig(
        name="server-job",
        source=SourceConfig(table="/data/in", key="id"),
        model=ModelConfig(uri="models:/minilm@champion", task="embedding", input=("text",)),
        output=OutputConfig(table="/data/out"),
        mlflow=MlflowConfig(tracking_uri=url, experiment="server-tests"),
    )
    with RunTracker(cfg) as tracker:
        tracker.log_params({"model_uri": resolved.resolved_uri, "model_version": resolved.version})
        tracker.log_metrics({"rows_scored": 2, "seconds_register": register_s, "seconds_resolve": resolve_s})
        tracker.log_config(cfg)
        tracker.log_report({"rows_scored": 2, "seconds": {"total": 1.0}})
        tracker.log_distribution(got, kind="embedding_norm", title="Embedding norms")
        tracker.set_output_version(1)
        run_id = tracker.run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"model_uri": "models:/minilm/1", "model_version": "1"}
    assert run.data.metrics["rows_scored"] == 2.0 and run.data.metrics["output_version"] == 1.0
    assert {a.path for a in client.list_artifacts(run_id)} == {"config.yaml", "report.json", "report.md", "distribution.png"}
    report = json.loads(Path(client.download_artifacts(run_id, "report.json", str(tmp_path))).read_text())
    assert report["rows_scored"] == 2
    png = Path(client.download_artifacts(run_id, "distribution.png", str(tmp_path))).read_bytes()
    assert png.startswith(b"\x89PNG")
    assert not (tmp_path / "mlflow.db").exists()
