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

from bench import cold, cold_peers, data, nightly_io, report
from bench import run as bench_run

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


def test_cold_fit_gives_slope_and_intercept_or_says_why_not():
    line = cold.fit([(2000, 43.7), (8000, 78.9)])
    assert line["slope_rows_per_s"] == pytest.approx(6000 / 35.2, abs=0.01)  # 170.45 rows/s
    assert line["intercept_s"] == pytest.approx(43.7 - 2000 / (6000 / 35.2), abs=0.01)  # 31.97 s
    noisy = cold.fit([(2000, 50.0), (8000, 49.0)])
    assert noisy["slope_rows_per_s"] is None and "8,000 rows took 49.0 s" in noisy["note"]


def _cold_section(noop: float, night: float, ours: tuple[float, float], plain: tuple[float, float]) -> dict:
    section = {
        "sizes": [2000, 8000], "repeats": 1, "configs": {}, "skipped": {"MLflow spark_udf": "no Delta jars"},
        "noop": {"wall_s": noop, "status": "nothing-to-do", "phases_s": {"plan": 0.5}},
        "one_row_night": {"wall_s": night, "status": "published", "phases_s": {}},
        "runs": {name: {str(n): [{"wall_s": t, "peak_rss_mb": 900.0, "phases_s": {"encode": 1.0}}]
                        for n, t in zip((2000, 8000), walls, strict=True)}
                 for name, walls in (("spark-scoring", ours), ("plain script", plain))},
    }
    section["fits"] = cold.fits(section)
    return section


def test_cold_targets_pass_and_miss_with_margins():
    # The issue's outside figures: no-op 12.5 s, one-row night 38.8 s, slope 170 vs 178 rows/s.
    got = {t["target"]: t for t in cold.targets(_cold_section(12.5, 38.8, (43.7, 78.9), (20.0, 53.7)))}
    assert [(t["ok"], t["margin"]) for t in got.values()] == [
        (False, "-2.5 s"), (False, "-21.3 s"), (False, "0.96x (need 1x)")]
    good = cold.targets(_cold_section(6.0, 10.0, (20.0, 50.0), (20.0, 53.7)))
    assert [(t["ok"], t["margin"]) for t in good] == [(True, "+4.0 s"), (True, "+1.0 s"), (True, "1.12x (need 1x)")]
    md = "\n".join(cold.markdown(_cold_section(6.0, 10.0, (20.0, 50.0), (20.0, 53.7)),
                                 {"spark-scoring nightly run": 230.0}))
    assert "| spark-scoring | 20.0 | 50.0 | 0.93 | 200.0 | 1.12 | 10.0 | 230.0 | 900.0 |" in md
    assert "| MLflow spark_udf | - | - | - | - | - | - | - | - | no Delta jars |" in md


def test_cold_peer_scripts_refuse_missing_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        cold_peers.main(["predict_batch_udf", "--source", "s", "--output", "o", "--model", "m"])
    assert exc.value.code == 2 and "pass --jars" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cold_peers.main(["spark_udf", "--source", "s", "--output", "o", "--model", "m", "--jars", "a.jar"])
    assert "needs --model-uri and --tracking-uri" in capsys.readouterr().err


def test_log_delta_counts_rewrites_from_the_log(tmp_path):
    from deltalake import DeltaTable

    table = tmp_path / "t"
    per_file = nightly_io.build_source(table, 1000, files=5)
    assert per_file == 200 and DeltaTable(str(table)).version() == 4
    import pyarrow as pa

    adds = pa.table(DeltaTable(str(table)).get_add_actions(flatten=True))
    sizes = dict(zip(adds.column("path").to_pylist(), adds.column("size_bytes").to_pylist(), strict=True))
    nightly_io.append(table, 1000, 10)
    added = nightly_io.log_delta(table, 4, 5)
    assert (added.files_added, added.files_removed, added.bytes_removed, added.commits) == (1, 0, 0, 1)
    assert added.bytes_before == sum(sizes.values()) and added.files_before == 5
    # A key range inside file 2 (ids 400..599): delta-rs rewrites that one file only.
    assert nightly_io.update(table, "id >= 450 AND id < 460") == 10
    changed = nightly_io.log_delta(table, 5, 6)
    assert changed.files_removed == 1 and changed.files_added == 1 and changed.operations == ["UPDATE"]
    assert changed.bytes_removed in sizes.values()
    assert changed.rewritten_share == pytest.approx(changed.bytes_removed / changed.bytes_before)
    rows = DeltaTable(str(table)).to_pyarrow_dataset().to_table().to_pylist()
    assert len(rows) == 1010 and sum(r["text"].endswith(" (edited)") for r in rows) == 10


@pytest.mark.parametrize("add_first", [False, True])
def test_log_delta_counts_a_deletion_vector_as_no_rewrite(tmp_path, add_first):
    import json

    table = tmp_path / "t"
    nightly_io.build_source(table, 500, files=5)
    path, size = next(iter(nightly_io.active_files(table, 4).items()))
    # What a merge-on-read MERGE commits (Delta protocol): the old file state removed, the
    # same path added with a deletion vector, and a new file with the new rows.
    dv = {"storageType": "u", "pathOrInlineDv": "ab^-aqEH.-t@S}K{vb[*k^", "offset": 1, "sizeInBytes": 36,
          "cardinality": 2}
    actions = [{"commitInfo": {"operation": "MERGE", "userMetadata": json.dumps({"spark_scoring.plan": "upsert"})}},
               {"remove": {"path": path, "size": size, "dataChange": True, "deletionTimestamp": 1}},
               {"add": {"path": path, "size": size, "partitionValues": {}, "modificationTime": 1,
                        "dataChange": True, "deletionVector": dv}},
               {"add": {"path": "new.parquet", "size": 123, "partitionValues": {}, "modificationTime": 1,
                        "dataChange": True}}]
    if add_first:  # the JVM connector writes the DV re-add before the remove
        actions[1], actions[2] = actions[2], actions[1]
    (table / "_delta_log" / f"{5:020d}.json").write_text("\n".join(json.dumps(a) for a in actions) + "\n")
    got = nightly_io.log_delta(table, 4, 5)
    assert (got.dv_updates, got.files_removed, got.bytes_removed, got.files_added, got.bytes_added) == (1, 0, 0, 1, 123)
    assert got.plans == ["upsert"]


def _night(label: str, wall: float, rewritten: int = 0, removed: int = 0, share: float = 0.0,
           src_share: float = 0.0) -> dict:
    return {"label": label, "wall_s": wall, "status": "published", "mode": "append", "plan": "p", "rows_scored": 1,
            "output": {"files_added": 1, "files_removed": removed, "dv_updates": 0, "bytes_added": 10,
                       "bytes_rewritten": rewritten, "rewritten_share": share, "plans": ["append"]},
            "source": {"changed_share": src_share}}


def test_nightly_io_targets_pass_and_miss_with_margins():
    section = {"rows": 1000, "source_files": 40, "rows_per_source_file": 25, "model": "m", "texts": "t",
               "strategies": [{"label": "JVM, merge-on-read (DVs on)", "available": False, "why": "not there"}],
               "nights": [_night("full run", 100.0), _night("1 row append", 6.0), _night("0.1% append", 6.5),
                          _night("1% append", 11.5, rewritten=2048, removed=1),
                          _night("1% update, confined", 9.0, rewritten=50, removed=1, share=0.5, src_share=0.05)]}
    got = [(t["target"].split(" night")[0], t["ok"], t["margin"]) for t in nightly_io.targets(section)]
    assert got == [
        ("1 row append", True, "+0 B"), ("0.1% append", True, "+0 B"), ("1% append", False, "-2,048 B"),
        ("confined 1% update rewrites <= 2x the share of source bytes changed", False, "-40.0 points"),
        ("1% append", False, "-0.5 s"),  # limit 5% x 100 s + 6 s = 11 s
    ]
    md = "\n".join(nightly_io.markdown(section))
    assert "| 1% append | published (append) | 11.50 | 1 | +1 / -1 | 0 | 0.0 (0.0%) |" in md
    assert "| JVM, merge-on-read (DVs on) | not available: not there |" in md


def test_run_parses_parts_and_quick_sizes():
    args = bench_run._parse(["--quick", "--skip-peers", "--skip-engines"])
    assert (args.skip_peers, args.skip_cold, args.skip_io, args.skip_engines) == (True, False, False, True)
    assert (args.cold_sizes, args.io_rows, args.planning_partitions, args.rows) == ([60, 180], 40_000, 300, 300)
    full = bench_run._parse([])
    assert (full.cold_sizes, full.io_rows, full.planning_partitions) == ([2000, 8000], 1_000_000, 10_000)
    with pytest.raises(SystemExit):
        bench_run._parse(["--cold-sizes", "100", "100"])


def test_report_renders_every_part_and_its_failures():
    out = {"started": "2026-12-02T01:00:00", "command": "python -m bench.run --quick", "quick": True,
           "failed_parts": ["engines"], "machine": {
               "hostname": "box", "cores_logical": 2, "cores_used": 2, "memory_gib": 24.0, "cpu_model": "cpu",
               "gpu": None, "python": "3.11", "load_avg_at_start": [0.5], "versions": {}},
           "cold": {**_cold_section(6.0, 10.0, (20.0, 50.0), (20.0, 53.7)), "command": "python -m bench.cold"},
           "planning": {"command": "python -m bench.planning --partitions 300", "part_s": 12.0, "files": 3000,
                        "files_seconds": 0.25},
           "engines": {"error": "SystemExit: no jars", "command": "python -m bench.engines"}}
    md = report.markdown({**out, "targets": report.targets(out)})
    assert "**FAILED parts: engines**" in md and "**FAILED: SystemExit: no jars**" in md
    assert "Alone: `python -m bench.planning --partitions 300` (this part took 12.0 s)" in md
    assert "| files | 3,000 |" in md and "| files_seconds | 0.250 |" in md
    assert "| cold no-op run <= 10 s | 6.0 s | PASS | +4.0 s |" in md


@pytest.mark.bench
def test_bench_harness_smoke(tmp_path):
    out = tmp_path / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--rows", "24", "--naive-sample", "6", "--growth-rows", "400",
         "--growth-days", "4", "--cold-sizes", "8", "24", "--io-rows", "4000", "--planning-partitions", "10",
         "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=3600,
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

    cold_runs = res["cold"]["runs"]
    assert set(cold_runs["spark-scoring"]) == set(cold_runs["plain script"]) == {"8", "24"}
    assert cold_runs["spark-scoring"]["24"][0]["rows_scored"] == 24
    assert cold_runs["plain script"]["24"][0]["rows"] == 24
    assert res["cold"]["noop"]["status"] == "nothing-to-do"
    assert res["cold"]["one_row_night"]["rows_scored"] == 1
    nights = {n["label"]: n for n in res["io"]["nights"]}
    assert nights["full run"]["rows_scored"] == 4000 and nights["no-op"]["status"] == "nothing-to-do"
    assert [nights[k]["rows_scored"] for k in ("1 row append", "0.1% append", "1% append", "10% append")] == [
        1, 4, 40, 400]
    assert nights["1% update, confined"]["rows_scored"] == 40
    assert nights["1% update, scattered"]["rows_scored"] == 45  # id % 100 = 7 of ids 0..4444
    assert len(res["io"]["strategies"]) == 3
    assert res["planning"]["files"] == 100
    assert set(res["engines"]["warm"]) == {"delta-rs", "delta-spark"}
    assert {t["target"].split(" ")[0] for t in res["targets"]} >= {"cold", "1%", "confined"}

    md = mds[0].read_text()
    for section in ("## Throughput", "## GPU", "## Cost growth", "## Cold runs", "## Nightly IO",
                    "## Planning at scale", "## Engines side by side", "## Targets", "## How this was measured"):
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
