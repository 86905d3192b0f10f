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
    assert "output.table: must differ from source.table" in text
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
