"""SIGKILL at the worst moments: a crash never publishes a partial or duplicated result.

Each test runs `spark-scoring run` in its own process group, kills the whole group at a
chosen moment, then checks the output with an independent reader (delta-rs) and lets a
rerun finish the work.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable

from tests.pipeline_helpers import job_config, read_output, source_rows, write_source

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def start_run(config: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYSPARK_PYTHON": sys.executable}
    return subprocess.Popen(
        [sys.executable, "-m", "spark_scoring.cli", "run", str(config)],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (code {proc.returncode}) before the kill point:\n{proc.stdout.read()}")
        time.sleep(0.02)
    kill_group(proc)
    raise AssertionError("kill point never reached")


@pytest.fixture()
def nightly(tmp_path, minilm_dir):
    """A source with 120 rows over 3 days, a scored first night, and a second night's changes."""
    for d in range(3):
        write_source(tmp_path / "source", source_rows(range(40 * d + 1, 40 * d + 41), f"2026-01-0{d + 1}"))
    cfg = job_config(tmp_path, minilm_dir, run={"progress": True, "num_partitions": 2})
    config = tmp_path / "job.yaml"
    config.write_text(cfg.to_yaml())
    first = subprocess.run([sys.executable, "-m", "spark_scoring.cli", "run", str(config)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    before = read_output(tmp_path / "output")
    write_source(tmp_path / "source", source_rows(range(200, 260), "2026-01-04"))
    write_source(tmp_path / "source", source_rows([300, 301], "2026-01-02"))
    return tmp_path, config, before


def assert_unchanged(out_dir: Path, before) -> None:
    dt = DeltaTable(str(out_dir))
    assert dt.version() == 0
    now = read_output(out_dir)
    assert now["id"].tolist() == before["id"].tolist()
    assert now["run_id"].tolist() == before["run_id"].tolist()


def assert_complete_after_rerun(tmp_path: Path, config: Path) -> None:
    rerun = subprocess.run([sys.executable, "-m", "spark_scoring.cli", "run", str(config)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    out = read_output(tmp_path / "output")
    assert out["id"].is_unique
    assert sorted(out["id"]) == sorted([*range(1, 121), *range(200, 260), 300, 301])
    assert out["error"].isna().all()
    again = subprocess.run([sys.executable, "-m", "spark_scoring.cli", "run", str(config), "--json"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert '"status": "nothing-to-do"' in again.stdout


def test_sigkill_during_scoring_publishes_nothing(nightly):
    tmp_path, config, before = nightly
    proc = start_run(config, tmp_path)
    seen: list[str] = []

    def scoring_started() -> bool:
        line = proc.stdout.readline()
        seen.append(line)
        return line.startswith("scoring:")

    wait_for(scoring_started, proc)
    kill_group(proc)
    assert_unchanged(tmp_path / "output", before)
    assert_complete_after_rerun(tmp_path, config)


def test_sigkill_while_files_are_written_before_the_commit(nightly):
    tmp_path, config, before = nightly
    out_dir = tmp_path / "output"
    existing = {p for p in out_dir.rglob("*.parquet")}
    proc = start_run(config, tmp_path)
    wait_for(lambda: any(p not in existing for p in out_dir.rglob("*.parquet")), proc)
    kill_group(proc)
    assert_unchanged(out_dir, before)  # written-but-uncommitted files are invisible
    assert_complete_after_rerun(tmp_path, config)


def test_sigkill_right_after_the_commit_lands(nightly):
    tmp_path, config, before = nightly
    log_dir = tmp_path / "output" / "_delta_log"
    proc = start_run(config, tmp_path)
    wait_for(lambda: (log_dir / f"{1:020d}.json").exists(), proc)
    kill_group(proc)
    # The commit is atomic: the new version is either absent or complete, never partial.
    out = read_output(tmp_path / "output")
    assert DeltaTable(str(tmp_path / "output")).version() == 1
    assert sorted(out["id"]) == sorted([*range(1, 121), *range(200, 260), 300, 301])
    assert_complete_after_rerun(tmp_path, config)
