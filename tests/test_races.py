"""Two runs of the same job started at the same moment, from the shell (issue 12, "also prove").

Exactly one publishes; the other publishes nothing and either exits 1 naming the concurrent
run, or finds the work done and exits 0 with nothing to do. Afterwards the output holds every
source row exactly once, scored by the run that published.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

from spark_scoring.cli import main
from tests.pipeline_helpers import job_config, read_output, source_rows, write_source

pytestmark = pytest.mark.slow


def _start(path: str, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET")}
    cli = Path(sys.executable).with_name("spark-scoring")
    return subprocess.Popen([str(cli), "run", path, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=cwd)


@pytest.mark.parametrize("night", ["first run", "nightly increment"])
def test_two_runs_at_once_publish_exactly_once(spark, tmp_path, minilm_dir, night):
    write_source(tmp_path / "source", source_rows(range(1, 31), "d1"))
    path = tmp_path / "job.yaml"
    path.write_text(job_config(tmp_path, minilm_dir).to_yaml())
    expected = list(range(1, 31))
    before = None
    if night == "nightly increment":
        assert main(["run", str(path)]) == 0
        before = DeltaTable(str(tmp_path / "output")).version()
        write_source(tmp_path / "source", source_rows(range(31, 46), "d2"), mode="append")
        expected = list(range(1, 46))

    procs = [_start(str(path), tmp_path) for _ in range(2)]
    done = [(p.wait(timeout=900), *p.communicate()) for p in procs]

    published = [json.loads(out) for code, out, _ in done if code == 0 and '"published"' in out]
    assert len(published) == 1, [(code, out[-500:], err[-1500:]) for code, out, err in done]
    other_code, other_out, other_err = next(d for d in done if not (d[0] == 0 and '"published"' in d[1]))
    if other_code == 0:
        assert json.loads(other_out)["status"] == "nothing-to-do"
    else:
        assert other_code == 1, other_err[-2000:]
        assert "another run" in other_err or "concurrent" in other_err.lower(), other_err[-2000:]
        assert "Traceback" not in other_err

    table = DeltaTable(str(tmp_path / "output"))
    commits = table.version() - (before if before is not None else -1)
    assert commits == 1, table.history()  # one commit: the loser published nothing
    out = read_output(tmp_path / "output")
    assert out["id"].tolist() == expected  # every row exactly once
    assert out["error"].isna().all()
    new = out[out["id"] > (30 if before is not None else 0)]
    assert set(new["run_id"]) == {published[0]["run_id"]}
