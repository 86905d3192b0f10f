"""The nightly job on a real Spark standalone cluster, submitted like production does it.

A master and a worker run on 127.0.0.1; `spark-submit --master spark://...
jobs/nightly_score.py <config>` scores a real Delta table with the packaged MiniLM model in
separate executor processes; the result is read back with delta-rs. Run with
`pytest -m cluster tests/test_cluster.py`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from deltalake import DeltaTable, write_deltalake

from tests._cluster import StandaloneCluster, spark_submit, start_cluster

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[1]
NIGHTLY = REPO / "jobs" / "nightly_score.py"
DAYS = ("2024-05-01", "2024-05-02")
SUBMIT_CONF = {
    "spark.executor.memory": "1g",
    "spark.driver.memory": "1g",
    "spark.ui.enabled": "false",
    "spark.task.maxFailures": "1",
}
# model_version stays null here: the model is a plain directory, not a registry version
LINEAGE = ("model_uri", "run_id", "scored_at", "source_version", "input_hash")


@dataclass
class FirstRun:
    """The cluster, the job's files, and what the first submission returned."""

    cluster: StandaloneCluster
    app_name: str
    config: Path
    source: Path
    output: Path
    workdir: Path
    returncode: int
    stdout: str
    stderr: str


def _reviews() -> pd.DataFrame:
    words = ["great", "battery", "poor", "screen", "fast", "delivery",
             "broken", "hinge", "lovely", "colour", "noisy", "fan"]
    rows = []
    for i in range(40):
        text = f"Review {i}: " + " ".join(words[(i + k) % len(words)] for k in range(3 + (i * 7) % 25))
        rows.append({
            "id": i + 1,
            "event_date": DAYS[i % 2],
            "text": text,
            "lang": "en" if i % 3 else "de",
            "rating": 1 + i % 5,
        })
    return pd.DataFrame(rows)


def _write_config(base: Path, model_dir: str) -> tuple[Path, Path, Path]:
    source, output = base / "lake" / "reviews", base / "lake" / "reviews_scored"
    schema = pa.schema([("id", pa.int64()), ("event_date", pa.string()), ("text", pa.string()),
                        ("lang", pa.string()), ("rating", pa.int64())])
    write_deltalake(str(source), pa.Table.from_pandas(_reviews(), schema=schema, preserve_index=False),
                    partition_by=["event_date"])
    config = base / "job.yaml"
    config.write_text(yaml.safe_dump({
        "name": "cluster-reviews-embedding",
        "source": {"table": str(source), "key": "id", "partition_by": ["event_date"],
                   "passthrough": ["lang", "rating"]},
        "model": {"uri": model_dir, "task": "embedding", "input": "text",
                  "batch": {"max_rows": 16}},
        "output": {"table": str(output)},
        "mlflow": {"tracking_uri": f"sqlite:///{base / 'mlflow.db'}", "experiment": "cluster-test"},
        "run": {"progress": False, "num_partitions": 2},
    }))
    return config, source, output


_JVM_INFO = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d INFO ")


def _fail_message(what: str, proc_out: str, proc_err: str, cluster: StandaloneCluster) -> str:
    # the driver JVM logs at INFO until the session is up; keep the lines that explain a failure
    err = "\n".join(line for line in proc_err.splitlines() if not _JVM_INFO.match(line))
    return (f"{what}\n--- stdout\n{proc_out[-4000:]}\n--- stderr without JVM INFO lines (last 8000 chars)\n"
            f"{err[-8000:]}\n{cluster.logs()}")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, minilm_dir) -> Iterator[FirstRun]:
    """Start the cluster, submit the nightly job once, and stop the cluster afterwards."""
    base = tmp_path_factory.mktemp("cluster")
    config, source, output = _write_config(base, minilm_dir)
    cluster = start_cluster(base, cores=2, memory="2g")
    try:
        app_name = f"nightly-cluster-test-{uuid.uuid4().hex[:8]}"
        proc = spark_submit(cluster, NIGHTLY, [str(config)], conf=SUBMIT_CONF, name=app_name,
                            cwd=base, timeout=480)
        yield FirstRun(cluster, app_name, config, source, output, base, proc.returncode,
                       proc.stdout, proc.stderr)
    finally:
        cluster.stop()


def test_nightly_job_scores_on_the_cluster_executors(first_run: FirstRun, minilm_dir: str):
    run, cluster = first_run, first_run.cluster
    assert run.returncode == 0, _fail_message("spark-submit failed", run.stdout, run.stderr, cluster)
    assert "published" in run.stdout

    # -- the output table, through an independent reader
    src = DeltaTable(str(run.source)).to_pandas().sort_values("id").reset_index(drop=True)
    out = DeltaTable(str(run.output)).to_pandas().sort_values("id").reset_index(drop=True)
    assert out["id"].tolist() == src["id"].tolist() == list(range(1, 41))
    assert out["event_date"].tolist() == src["event_date"].tolist()
    assert out["lang"].tolist() == src["lang"].tolist()
    assert out["rating"].tolist() == src["rating"].tolist()
    assert out["error"].isna().all(), out.loc[out["error"].notna(), ["id", "error"]]
    vectors = np.stack(out["embedding"].to_numpy())
    assert vectors.shape == (40, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)  # MiniLM normalizes
    for col in LINEAGE:
        assert out[col].notna().all(), col
    assert out["run_id"].nunique() == 1
    assert set(out["model_uri"]) == {minilm_dir} or all(minilm_dir in u for u in out["model_uri"])
    assert set(out["source_version"]) == {DeltaTable(str(run.source)).version()}
    assert out["input_hash"].nunique() == 40

    # -- the vectors are the model's: compare a few rows with a direct encode in this process
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(minilm_dir, device="cpu")
    sample = out.iloc[[0, 17, 39]]
    texts = src.set_index("id").loc[sample["id"], "text"].tolist()
    direct = model.encode(texts, normalize_embeddings=True)
    cosine = np.sum(direct * np.stack(sample["embedding"].to_numpy()), axis=1)
    assert np.all(cosine > 0.999), cosine

    # -- it ran on the cluster: the master saw the application, with spark-submit's settings
    state = cluster.state()
    apps = [a for a in state.get("completedapps", []) + state.get("activeapps", []) if a["name"] == run.app_name]
    assert len(apps) == 1, f"application {run.app_name!r} not on the master: {[a['name'] for a in state.get('completedapps', [])]}"
    app = apps[0]
    assert app.get("memoryperexecutor", app.get("memoryperslave")) == 1024  # --conf spark.executor.memory=1g

    # -- in separate executor JVMs, whose logs the worker kept under its work dir
    app_dir = cluster.work_dir / app["id"]
    assert app_dir.is_dir(), f"no executor dir for {app['id']} under {cluster.work_dir}"
    stderrs = [p.read_text(errors="replace") for p in app_dir.glob("*/stderr")]
    assert stderrs, f"no executor stderr under {app_dir}"
    assert any("Running task" in s for s in stderrs), "the executors ran no tasks"


def test_second_run_has_nothing_to_do_and_publishes_nothing(first_run: FirstRun):
    run, cluster = first_run, first_run.cluster
    assert run.returncode == 0, "the first run failed; see the first test"
    table = DeltaTable(str(run.output))
    version_before = table.version()
    before = table.to_pandas().sort_values("id").reset_index(drop=True)

    proc = spark_submit(cluster, NIGHTLY, [str(run.config), "--json"], conf=SUBMIT_CONF,
                        name=f"{run.app_name}-again", cwd=run.workdir, timeout=480)
    assert proc.returncode == 0, _fail_message("second spark-submit failed", proc.stdout, proc.stderr, cluster)
    assert '"status": "nothing-to-do"' in proc.stdout

    after_table = DeltaTable(str(run.output))
    assert after_table.version() == version_before
    after = after_table.to_pandas().sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(after.drop(columns=["embedding"]), before.drop(columns=["embedding"]))


def test_spark_submit_passes_the_config_error_exit_code_through(first_run: FirstRun):
    """A cron wrapper or scheduler only sees spark-submit's exit code: 2 must survive it."""
    missing = first_run.workdir / "no-such-job.yaml"
    proc = spark_submit(first_run.cluster, NIGHTLY, [str(missing)], conf=SUBMIT_CONF,
                        name=f"{first_run.app_name}-bad-config", cwd=first_run.workdir, timeout=120)
    assert proc.returncode == 2, _fail_message("expected exit code 2", proc.stdout, proc.stderr, first_run.cluster)
    # spark-submit's PythonRunner merges the Python process's stderr into its own stdout
    assert f"config file {str(missing)!r} does not exist" in proc.stdout + proc.stderr
