"""Typed job config: every problem reported at once, overrides, exit codes of `validate`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from spark_scoring.cli import main
from spark_scoring.config import config_from_dict, load_config, parse_override
from spark_scoring.errors import ConfigError

VALID = {
    "name": "reviews_nightly",
    "source": {"table": "/lake/reviews", "key": "id", "partition_by": ["event_date"], "passthrough": ["lang"]},
    "model": {"uri": "models:/reviews@champion", "task": "embedding", "input": "text"},
    "output": {"table": "/lake/reviews_scored"},
    "errors": {"max_error_rate": 0.01},
    "mlflow": {"tracking_uri": "sqlite:///mlflow.db", "experiment": "nightly-scoring"},
    "spark": {"master": "local[*]", "conf": {}},
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_readme_example_loads_into_frozen_typed_objects():
    cfg = config_from_dict(VALID)
    assert cfg.name == "reviews_nightly"
    assert cfg.source.partition_by == ("event_date",)
    assert cfg.source.passthrough == ("lang",)
    assert cfg.model.input == ("text",)  # a single column is accepted as a string
    assert cfg.model.batch.max_rows == 64 and cfg.model.batch.sort_by_length is True
    assert cfg.model.on_change == "rescore"
    assert cfg.lakehouse.engine == "auto"
    with pytest.raises(AttributeError):
        cfg.name = "other"  # type: ignore[misc]


def test_every_problem_is_reported_at_once_with_key_path_value_and_allowed():
    raw = {
        **VALID,
        "model": {"uri": "m", "task": "summarize", "input": "text", "batch": {"max_rows": "many"}},
        "lakehouse": {"engine": "duckdb"},
        "errors": {"max_error_rate": "lots"},
        "extra_key": 1,
    }
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    problems = info.value.problems
    text = str(info.value)
    assert len(problems) == 5, problems
    assert "model.task: 'summarize' is not allowed; expected one of 'embedding'" in text
    from spark_scoring.models.tasks import TASK_NAMES

    allowed = ", ".join(repr(n) for n in TASK_NAMES)
    assert f"model.task: 'summarize' is not allowed; expected one of {allowed}" in text  # the registry's list
    assert "model.batch.max_rows: expected an integer, got 'many'" in text
    assert "lakehouse.engine: 'duckdb' is not allowed; expected one of 'auto', 'delta-spark', 'delta-rs'" in text
    assert "errors.max_error_rate: expected a number, got 'lots'" in text
    assert "extra_key: unknown key; allowed keys here:" in text


def test_missing_required_keys_are_named():
    with pytest.raises(ConfigError, match=r"source\.key: required key is missing") as info:
        config_from_dict({"name": "j", "source": {"table": "/a"}, "model": {"uri": "m", "task": "embedding", "input": "t"}})
    assert any(p.startswith("output: required key is missing") for p in info.value.problems)


def test_semantic_rules():
    bad = {**VALID, "output": {"table": "/lake/reviews"}, "name": "bad name!",
           "model": {**VALID["model"], "input": ["text", "title"], "device": "tpu"}}
    with pytest.raises(ConfigError) as info:
        config_from_dict(bad)
    text = str(info.value)
    assert "output.table: '/lake/reviews' is the same table as source.table '/lake/reviews'" in text
    assert "name: 'bad name!' is not allowed" in text
    assert "model.input: task 'embedding' takes exactly one text column" in text
    assert "got ['text', 'title']; only task 'pyfunc' takes several columns" in text  # from the registry
    assert "model.device: 'tpu' is not allowed" in text


def test_task_options_are_checked():
    raw = {**VALID, "model": {**VALID["model"], "task": "text-generation", "options": {"max_new_tokenz": 5}}}
    with pytest.raises(ConfigError, match=r"model\.options\.max_new_tokenz"):
        config_from_dict(raw)


def test_overrides_parse_yaml_scalars_and_create_nested_keys():
    cfg = config_from_dict(VALID, overrides=["model.batch.max_rows=16", "errors.max_errors=3", "spark.conf.spark.x=1"])
    assert cfg.model.batch.max_rows == 16
    assert cfg.errors.max_errors == 3
    assert parse_override("a.b=true") == (["a", "b"], True)
    assert parse_override("a=") == (["a"], "")
    with pytest.raises(ValueError, match="key.path=value"):
        parse_override("novalue")


def test_bad_override_is_a_config_problem():
    with pytest.raises(ConfigError, match=r"name is not a mapping"):
        config_from_dict(VALID, overrides=["name.x=1"])


def test_config_hash_is_stable_and_sensitive():
    a, b = config_from_dict(VALID), config_from_dict(VALID)
    c = config_from_dict(VALID, overrides=["model.batch.max_rows=8"])
    assert a.config_hash() == b.config_hash() != c.config_hash()
    assert "reviews_nightly" in a.to_yaml()


def test_load_config_reports_yaml_errors_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "name: [unclosed\n"))


def test_validate_command_exit_codes(tmp_path, capsys):
    good = write(tmp_path, """
        name: j
        source: {table: /a, key: id}
        model: {uri: m, task: embedding, input: text}
        output: {table: /b}
    """)
    assert main(["validate", str(good)]) == 0
    assert "OK (job 'j'" in capsys.readouterr().out
    assert main(["validate", str(good), "--set", "model.task=nope"]) == 2
    err = capsys.readouterr().err
    assert "model.task: 'nope' is not allowed" in err
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert main(["frobnicate"]) == 2  # argparse usage error


# ------------------------------------------------------------------ overlapping tables


def _tables(source: str, output: str, quarantine: str | None = None) -> dict:
    return {**VALID, "source": {**VALID["source"], "table": source}, "output": {"table": output},
            "errors": {"quarantine_table": quarantine}}


def _overlap_problems(source: str, output: str, quarantine: str | None = None) -> list[str]:
    try:
        config_from_dict(_tables(source, output, quarantine))
    except ConfigError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize(
    "spelling",
    ["{d}/./source", "{d}/source/", "{d}/x/../source", "file://{d}/source", "file:{d}/source",
     "{d}/link/", "{d}//source"],
)
def test_the_source_under_another_spelling_is_not_an_output(tmp_path, spelling):
    (tmp_path / "source").mkdir()
    (tmp_path / "x").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "source", target_is_directory=True)
    problems = _overlap_problems(str(tmp_path / "source"), spelling.format(d=tmp_path))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"output.table: {spelling.format(d=tmp_path)!r} is the same table as source.table")
    assert f"(both are {tmp_path / 'source'})" in problems[0]
    assert "give output.table its own location" in problems[0]


def test_a_relative_spelling_is_the_same_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _overlap_problems(str(tmp_path / "lake" / "src"), "./lake/src")[0].startswith(
        "output.table: './lake/src' is the same table as source.table")
    assert _overlap_problems("~/t", str(Path.home() / "t"))  # ~ is expanded too


def test_tables_inside_each_other_overlap(tmp_path):
    src = str(tmp_path / "source")
    inside = _overlap_problems(src, f"{src}/scored")
    assert len(inside) == 1 and "lies inside the folder of source.table" in inside[0]
    assert "a VACUUM or an overwrite of source.table would delete its files" in inside[0]
    outer = _overlap_problems(src, str(tmp_path))
    assert len(outer) == 1 and "is a folder that holds source.table" in outer[0]
    # a common prefix is not a folder: /x/source vs /x/source_scored are apart
    assert _overlap_problems(src, f"{src}_scored") == []


def test_the_quarantine_table_overlaps_neither_source_nor_output(tmp_path):
    src, out = str(tmp_path / "source"), str(tmp_path / "output")
    assert _overlap_problems(src, out, str(tmp_path / "quarantine")) == []
    problems = _overlap_problems(src, out, f"{out}/")
    assert len(problems) == 1 and problems[0].startswith(
        f"errors.quarantine_table: '{out}/' is the same table as output.table")
    problems = _overlap_problems(src, out, f"{src}/_failed")
    assert len(problems) == 1 and "errors.quarantine_table" in problems[0] and "inside the folder of source.table" in problems[0]


def test_uris_and_catalog_names_are_normalised():
    assert _overlap_problems("s3://bucket/lake/reviews", "s3a://bucket/lake/reviews/")
    assert _overlap_problems("s3://bucket/lake/reviews", "s3://bucket/lake/reviews/scored")
    assert _overlap_problems("s3://bucket/lake/reviews", "s3://other/lake/reviews") == []
    assert _overlap_problems("abfss://c@acct.dfs.core.windows.net/r", "abfss://c@acct.dfs.core.windows.net/r/./")
    same = _overlap_problems("lake.reviews", "spark_catalog.`LAKE`.`Reviews`")
    assert len(same) == 1 and "(both are spark_catalog.lake.reviews)" in same[0]
    assert _overlap_problems("lake.reviews", "lake.reviews_scored") == []
    # a catalog name and a path are compared by the lakehouse once the session resolved the name
    assert _overlap_problems("lake.reviews", "/warehouse/lake.db/reviews") == []


def test_run_refuses_an_output_that_is_the_source_before_spark_starts(tmp_path, capsys):
    import subprocess
    import sys

    (tmp_path / "source").mkdir()
    cfg = write(tmp_path, f"""
        name: j
        source: {{table: {tmp_path / "source"}, key: id}}
        model: {{uri: m, task: embedding, input: text}}
        output: {{table: {tmp_path}/./source/}}
    """)
    # In a fresh process, so that "no JVM was started" is something the test can see.
    code = (
        "import sys; from spark_scoring.cli import main; rc = main(['run', sys.argv[1]]); "
        "assert 'pyspark.sql.session' not in sys.modules or "
        "sys.modules['pyspark'].SparkContext._active_spark_context is None; sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "output.table:" in done.stderr and "is the same table as source.table" in done.stderr
    assert list((tmp_path / "source").iterdir()) == []  # nothing was written there


# ------------------------------------------------------------------ column names


def _columns(task: str = "embedding", options: dict | None = None, **source) -> list[str]:
    raw = {**VALID, "source": {**VALID["source"], **source},
           "model": {**VALID["model"], "task": task, "options": options or {}}}
    try:
        config_from_dict(raw)
    except ConfigError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize("name", ["error", "source_version", "run_id", "input_hash", "model_uri", "scored_at",
                                  "model_version", "Source_Version"])
def test_a_source_column_named_like_a_fixed_output_column_is_a_config_error(name):
    problems = _columns(passthrough=[name])
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"source.passthrough: source column {name!r} has the name of the {name.lower()!r} "
                                  "column spark-scoring writes into every output row")
    assert "Rename the column in the source (or in a view of it), or leave it out of the job" in problems[0]
    assert _columns(key=name)[0].startswith(f"source.key: source column {name!r}")
    assert _columns(partition_by=[name])[0].startswith(f"source.partition_by: source column {name!r}")


def test_a_source_column_named_like_a_task_output_is_a_config_error():
    assert _columns(passthrough=["embedding"])[0].startswith(
        "source.passthrough: source column 'embedding' has the name of the 'embedding' output column of task 'embedding'")
    assert _columns(passthrough=["score"]) == []  # not an output of the embedding task
    assert "'score' output column of task 'text-classification'" in _columns("text-classification", passthrough=["Score"])[0]
    assert _columns("text-classification", passthrough=["scores"]) == []  # only with return_all_scores
    assert _columns("text-classification", {"return_all_scores": True}, passthrough=["scores"])
    assert _columns("text-generation", passthrough=["generated_text"])
    model_input = {**VALID, "model": {**VALID["model"], "input": "embedding"}}
    with pytest.raises(ConfigError, match=r"model\.input: source column 'embedding' has the name of"):
        config_from_dict(model_input)


def test_unusual_legal_column_names_are_accepted_and_dots_or_backticks_refused_with_advice():
    assert _columns(key="user id", partition_by=["event date"], passthrough=["lang-code", "ünïcode", "@b"]) == []
    problems = _columns(key="user.id", passthrough=["a`b"])
    assert [p.split(":")[0] for p in problems] == ["source.key", "source.passthrough"]
    assert all("has a '.' or a backtick in its name" in p and "alias" in p for p in problems)
