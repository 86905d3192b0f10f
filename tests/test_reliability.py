"""Sequences nobody planned for (issue 12), through the CLI on real tables and MLflow stores.

Side tables are idempotent per source version (class 8); once a commit landed the exit
code is 0 whatever fails afterwards, and the next run does not redo the work (class 6);
one bad value fails one row (class 9); any legal column name works (class 11).
"""

from __future__ import annotations

import pandas as pd
from deltalake import DeltaTable

from spark_scoring.cli import main
from tests.pipeline_helpers import job_config, read_output, source_rows, write_source


def config_file(tmp_path, cfg, name: str = "job.yaml") -> str:
    path = tmp_path / name
    path.write_text(cfg.to_yaml())
    return str(path)


def _bad_rows(ids, day: str) -> pd.DataFrame:
    """Rows the model cannot score (null text): each gets an error."""
    return pd.DataFrame({"id": list(ids), "day": [day] * len(ids), "lang": ["en"] * len(ids), "text": [None] * len(ids)})


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
