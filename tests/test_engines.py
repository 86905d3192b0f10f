"""Which lakehouse engine runs, and how the Delta Lake JVM connector gets onto the classpath.

The jars come from `make install` (spark_scoring/jars.py); `fetch_delta_jars` is tested
against a real HTTP server on loopback that serves a Maven-style layout.
"""

from __future__ import annotations

import hashlib
import http.server
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from spark_scoring import jars as jarmod
from spark_scoring.errors import LakehouseError, UsageError
from spark_scoring.lakehouse import delta_jars_available, open_lakehouse
from spark_scoring.lakehouse.delta_rs import DeltaRsLakehouse
from spark_scoring.lakehouse.delta_spark import DeltaSparkLakehouse

REPO = Path(__file__).resolve().parents[1]
needs_jars = pytest.mark.skipif(jarmod.find_delta_jars() is None, reason="Delta jars not installed (make install)")


# --------------------------------------------------------------------------- engine choice


@needs_jars
def test_auto_picks_delta_rs_on_a_local_master_and_the_jvm_for_catalog_names_and_logs_it(spark, caplog):
    caplog.set_level(logging.INFO, logger="spark_scoring.lakehouse")
    assert delta_jars_available(spark) and spark.sparkContext.master.startswith("local")
    lake = open_lakehouse(spark, tables=["/lake/reviews", "/lake/reviews_scored"])
    assert lake.engine == "delta-rs" and isinstance(lake, DeltaRsLakehouse)
    assert any("auto -> delta-rs (local master: the embedded default" in r.getMessage() for r in caplog.records)
    assert open_lakehouse(spark, tables=["s3a://bucket/reviews", "/lake/reviews_scored"]).engine == "delta-spark"
    lake = open_lakehouse(spark, tables=["default.reviews", "/lake/reviews_scored"])
    assert lake.engine == "delta-spark" and isinstance(lake, DeltaSparkLakehouse)
    assert any("auto -> delta-spark (JVM Delta classes found; catalog names" in r.getMessage() for r in caplog.records)
    assert isinstance(open_lakehouse(spark, "delta-rs"), DeltaRsLakehouse)
    with pytest.raises(LakehouseError, match="unknown"):
        open_lakehouse(spark, "iceberg")


# --------------------------------------------------------------------------- fetching the jars


class _Maven(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).requests.append(self.path)
        super().do_GET()


@pytest.fixture
def maven(tmp_path):
    """A Maven-style repository on loopback with fake 9.9.9 connector jars."""
    root = tmp_path / "repo"
    for artifact in ("delta-spark_2.13", "delta-storage"):
        folder = root / "io" / "delta" / artifact / "9.9.9"
        folder.mkdir(parents=True)
        data = f"jar bytes of {artifact}".encode()
        (folder / f"{artifact}-9.9.9.jar").write_bytes(data)
        (folder / f"{artifact}-9.9.9.jar.sha1").write_text(hashlib.sha1(data).hexdigest())  # noqa: S324

    handler = type("Handler", (_Maven,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root, handler
    server.shutdown()


def test_fetch_downloads_checks_and_is_idempotent(maven, tmp_path, monkeypatch):
    url, _, handler = maven
    dest = tmp_path / "jars"
    got = jarmod.fetch_delta_jars(dest, delta="9.9.9", maven_url=url)
    assert [p.name for p in got] == ["delta-spark_2.13-9.9.9.jar", "delta-storage-9.9.9.jar"]
    assert got[0].read_bytes() == b"jar bytes of delta-spark_2.13"
    assert oct(got[0].stat().st_mode & 0o777) == "0o644"
    assert len(handler.requests) == 4  # two jars, two checksums
    jarmod.fetch_delta_jars(dest, delta="9.9.9", maven_url=url)
    assert len(handler.requests) == 4  # nothing downloaded again
    monkeypatch.setenv("SPARK_SCORING_DELTA_JARS", str(dest))
    assert jarmod.find_delta_jars("9.9.9") == got
    monkeypatch.setenv("SPARK_SCORING_DELTA_JARS", "")
    assert jarmod.find_delta_jars("9.9.9") is None


def test_fetch_refuses_a_corrupt_download_and_an_unreachable_repository(maven, tmp_path):
    url, root, _ = maven
    (root / "io/delta/delta-storage/9.9.9/delta-storage-9.9.9.jar").write_bytes(b"tampered")
    with pytest.raises(OSError, match="SHA-1 .* does not match"):
        jarmod.fetch_delta_jars(tmp_path / "a", delta="9.9.9", maven_url=url)
    assert not (tmp_path / "a" / "delta-storage-9.9.9.jar").exists()  # no half-trusted jar left
    with pytest.raises(OSError, match=r"cannot download http://127\.0\.0\.1:9/.*Maven Central"):
        jarmod.fetch_delta_jars(tmp_path / "b", delta="9.9.9", maven_url="http://127.0.0.1:9", timeout=5)
    proc = subprocess.run(
        [sys.executable, "-m", "spark_scoring.jars", "--dest", str(tmp_path / "c"), "--maven-url", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1 and "Delta Lake jars not fetched" in proc.stderr


# --------------------------------------------------------------------------- sessions we start


def _cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_GATEWAY", "SPARK_REMOTE"))}
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable, **extra)
    return env


def test_engine_delta_spark_without_jars_fails_fast_before_any_jvm_starts(tmp_path):
    from tests.pipeline_helpers import source_rows, write_source

    write_source(tmp_path / "source", source_rows([1, 2], "2024-05-01"))
    cfg = {
        "name": "nojars",
        "source": {"table": str(tmp_path / "source"), "key": "id", "partition_by": ["day"]},
        "model": {"uri": str(tmp_path), "task": "embedding", "input": "text"},
        "output": {"table": str(tmp_path / "out")},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "lakehouse": {"engine": "delta-spark"},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "spark_scoring.cli", "run", str(path)],
        capture_output=True, text=True, timeout=120, env=_cli_env(SPARK_SCORING_DELTA_JARS=""), cwd=tmp_path,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    assert "lakehouse.engine is 'delta-spark'" in proc.stderr and "make install" in proc.stderr
    assert "delta-rs" in proc.stderr
    assert elapsed < 15, f"took {elapsed:.1f} s: a JVM was started before failing"
    assert not (tmp_path / "out").exists()


def test_get_spark_raises_usage_error_without_jars(monkeypatch):
    from pyspark import SparkContext

    from spark_scoring import session

    monkeypatch.setenv("SPARK_SCORING_DELTA_JARS", "")
    monkeypatch.setattr(SparkContext, "_jvm", None)  # as in a fresh process: no JVM yet
    monkeypatch.setattr(session.SparkSession, "getActiveSession", staticmethod(lambda: None))
    with pytest.raises(UsageError, match=r"neither on the Spark classpath nor installed.*SPARK_SCORING_DELTA_JARS"):
        session.get_spark(engine="delta-spark")


@needs_jars
def test_a_session_we_start_gets_the_connector_and_deletion_vectors_work(tmp_path):
    script = textwrap.dedent(
        f"""
        from spark_scoring.session import get_spark
        from spark_scoring.lakehouse import open_lakehouse
        spark = get_spark()
        lake = open_lakehouse(spark, "delta-spark")  # auto would pick delta-rs on this local master
        assert lake.engine == "delta-spark", lake.engine
        path = {str(tmp_path / 't')!r}
        spark.range(10).write.format("delta").option("delta.enableDeletionVectors", "true").save(path)
        spark.sql(f"DELETE FROM delta.`{{path}}` WHERE id < 3")
        print("ROWS", spark.read.format("delta").load(path).count())
        print("CONF", spark.conf.get("spark.sql.extensions"), spark.conf.get("spark.sql.catalog.spark_catalog"))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=_cli_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ROWS 7" in proc.stdout
    assert f"CONF {jarmod.DELTA_EXTENSION} {jarmod.DELTA_CATALOG}" in proc.stdout
