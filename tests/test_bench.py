"""Smoke run of the whole benchmark harness at tiny sizes (marker `bench`).

The harness starts and stops its own SparkSessions (one fresh context per peer), so it
runs as a subprocess, exactly as `make bench` runs it, instead of sharing the test session.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import data, report

REPO = Path(__file__).resolve().parents[1]


def test_review_texts_are_deterministic_and_in_range():
    a, b = data.review_texts(500, seed=3), data.review_texts(500, seed=3)
    assert a == b
    assert data.review_texts(50, seed=4) != a[:50]
    words = [len(t.split()) for t in a]
    assert min(words) >= data.MIN_WORDS and max(words) <= data.MAX_WORDS
    assert len(set(words)) > 20  # lengths vary, which is what makes padding matter


def test_targets_pass_and_miss_with_margins():
    growth = {"runs": [
        {"label": "0% new", "wall_s": 4.0},
        {"label": "1% new", "wall_s": 9.0},
        {"label": "100% (full refresh)", "wall_s": 100.0},
    ]}  # no "1 row new" run: only the 0%-run variant of the 1% target
    got = {t["target"]: t for t in report.targets({"growth": growth})}
    zero = got["0%-new run <= 20 s"]
    assert zero["ok"] and zero["margin"] == "+16.0 s"
    one = next(t for name, t in got.items() if name.startswith("1%-new"))
    assert one["ok"] and one["margin"] == "+0.0 s"  # limit 5% x 100 + 4 = 9 s
    growth["runs"][1]["wall_s"] = 9.5
    one = next(t for t in report.targets({"growth": growth}) if t["target"].startswith("1%-new"))
    assert not one["ok"] and one["margin"] == "-0.5 s"
    growth["runs"].insert(1, {"label": "1 row new", "wall_s": 6.0})
    both = [t for t in report.targets({"growth": growth}) if t["target"].startswith("1%-new")]
    assert [(t["ok"], t["margin"]) for t in both] == [(False, "-0.5 s"), (True, "+1.5 s")]


@pytest.mark.bench
def test_bench_harness_smoke(tmp_path):
    out = tmp_path / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--rows", "24", "--naive-sample", "6", "--growth-rows", "400",
         "--growth-days", "4", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    jsons, mds = sorted(out.glob("*.json")), sorted(out.glob("*.md"))
    assert len(jsons) == 1 and len(mds) == 1
    stem = jsons[0].stem
    assert stem.startswith(dt.date.today().isoformat()) and mds[0].stem == stem
    res = json.loads(jsons[0].read_text())

    machine = res["machine"]
    assert machine["cores_used"] >= 1 and machine["memory_gib"] > 0
    for pkg in ("torch", "pyspark", "deltalake", "mlflow", "sentence-transformers"):
        assert machine["versions"][pkg]

    peers = {r["name"]: r for r in res["throughput"]["results"]}
    assert set(peers) == {
        "plain process", "spark-scoring nightly run", "Spark predict_batch_udf", "MLflow spark_udf",
        "naive row-at-a-time UDF",
    }
    for name, r in peers.items():
        assert r["rows_per_s"] > 0, name
        assert r["peak_rss_mb"] >= r["baseline_rss_mb"] > 0, name
        assert r["config"], name
    assert peers["spark-scoring nightly run"]["rows"] == 24
    assert peers["spark-scoring nightly run"]["extra"]["phases_s"]["score"] > 0
    assert peers["Spark predict_batch_udf"]["rows"] == 24
    naive = peers["naive row-at-a-time UDF"]
    assert naive["extrapolated"] and naive["rows"] == 6 and naive["rows_full"] == 24
    assert not peers["plain process"]["extrapolated"]

    runs = {r["label"]: r for r in res["growth"]["runs"]}
    assert list(runs) == ["initial full run", "0% new", "1 row new", "1% new", "10% new", "100% (full refresh)"]
    assert runs["initial full run"]["rows_scored"] == 400
    assert runs["0% new"]["status"] == "nothing-to-do" and runs["0% new"]["rows_scored"] == 0
    assert runs["1 row new"]["status"] == "published" and runs["1 row new"]["rows_scored"] == 1
    assert runs["1% new"]["rows_scored"] == 4  # 1% of 400 (all new rows, late ones included)
    assert runs["10% new"]["rows_scored"] == 40
    assert runs["100% (full refresh)"]["rows_scored"] == 400  # source rewritten with fresh texts
    assert {t["target"].split(" ")[0] for t in res["targets"]} >= {"our", "0%-new", "1%-new"}

    md = mds[0].read_text()
    for section in ("## Throughput", "## GPU", "## Cost growth", "## Targets", "## How this was measured"):
        assert section in md
    assert "extrapolated" in md and ("PASS" in md or "MISS" in md)
    if not res["throughput"]["gpu"]["available"]:
        assert "no GPU on this machine" in md


def test_throughput_targets_use_the_issue_ratios():
    def results(ours: float) -> dict:
        rows = {"spark-scoring nightly run": ours, "plain process": 254.0,
                "Spark predict_batch_udf": 179.0, "MLflow spark_udf": 182.0}
        return {"throughput": {"results": [{"name": k, "rows_per_s": v} for k, v in rows.items()]}}

    ok = {t["target"]: t["ok"] for t in report.targets(results(230.0))}
    assert ok == {
        "our marginal rows/s >= 0.9x plain process": True,  # 0.906x
        "our marginal rows/s >= 1.25x Spark predict_batch_udf": True,  # 1.285x
        "our marginal rows/s >= 1.25x MLflow spark_udf": True,  # 1.264x
    }
    missed = {t["target"]: t for t in report.targets(results(220.0))}
    assert not missed["our marginal rows/s >= 0.9x plain process"]["ok"]
    assert missed["our marginal rows/s >= 1.25x Spark predict_batch_udf"]["margin"] == "1.23x (need 1.25x)"
