"""The deployable pieces: example job configs, the Databricks bundle, the jobs/ entry points.

No network and no Spark: configs are validated with the real loader and CLI, the bundle's
job definitions are parsed into the Databricks SDK's own job settings classes, and the
spark-submit entry points run as real subprocesses.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import glob
import os
import re
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from databricks.sdk.service import compute, jobs

from spark_scoring import cli
from spark_scoring.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
BUNDLE_DIR = CONF / "databricks"
CONFIGS = sorted(CONF.glob("*.yaml"))

# ---------------------------------------------------------------------------------------
# conf/*.yaml
# ---------------------------------------------------------------------------------------


def test_the_three_example_configs_are_there():
    assert {p.name for p in CONFIGS} >= {
        "demo_embedding.yaml",
        "text_classification.yaml",
        "text_generation.yaml",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_validates_through_the_cli(path: Path, capsys):
    cfg = load_config(path)
    assert cfg.name and cfg.source.table and cfg.output.table and cfg.model.uri

    assert cli.main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: OK (job {cfg.name!r}, config hash {cfg.config_hash()})" in out
    # validate prints the resolved config; it must read back as the same job
    resolved = yaml.safe_load(out.split("\n", 1)[1])
    assert resolved["model"]["uri"] == cfg.model.uri
    assert resolved["source"]["table"] == cfg.source.table


def test_demo_embedding_config_is_the_demo_job():
    cfg = load_config(CONF / "demo_embedding.yaml")
    assert cfg.source.table == ".demo/lake/reviews"
    assert cfg.source.key == "id"
    assert cfg.source.partition_by == ("event_date",)
    assert cfg.source.passthrough == ("lang", "rating")
    assert cfg.model.uri == "models:/reviews-minilm@champion"
    assert cfg.model.task == "embedding"
    assert cfg.model.input == ("text",)
    assert cfg.output.table == ".demo/lake/reviews_scored"
    assert cfg.mlflow.tracking_uri == "sqlite:///.demo/mlflow.db"
    assert cfg.mlflow.experiment == "spark-scoring-demo"


def test_classification_and_generation_configs_carry_their_task_options():
    cls = load_config(CONF / "text_classification.yaml")
    assert cls.model.task == "text-classification"
    assert cls.model.options["return_all_scores"] is False

    gen = load_config(CONF / "text_generation.yaml")
    assert gen.model.task == "text-generation"
    assert isinstance(gen.model.options["max_new_tokens"], int)
    assert gen.model.options["max_new_tokens"] > 0


def test_validate_rejects_a_broken_copy_of_a_config(tmp_path: Path, capsys):
    raw = yaml.safe_load((CONF / "demo_embedding.yaml").read_text())
    raw["model"]["task"] = "embeddings"
    raw["source"]["partition_by"] = ["event_date", "event_date"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert cli.main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "model.task: 'embeddings' is not allowed" in err


# ---------------------------------------------------------------------------------------
# The Databricks asset bundle
# ---------------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{var\.([A-Za-z0-9_-]+)\}")


def _load_bundle() -> dict[str, Any]:
    return yaml.safe_load((BUNDLE_DIR / "databricks.yml").read_text())


def _bundle_variables(bundle: dict[str, Any], target: str) -> dict[str, Any]:
    """Variable values for a target: the defaults, overridden by the target's `variables`."""
    values = {name: spec["default"] for name, spec in bundle["variables"].items()}
    values.update(bundle["targets"][target].get("variables") or {})
    return values


def _substitute(node: Any, variables: dict[str, Any]) -> Any:
    """Resolve `${var.x}` like the bundle CLI: a whole-string reference keeps the value's type.

    Other references (`${workspace.file_path}`, `${bundle.target}`) are left as they are:
    they only exist at deploy time.
    """
    if isinstance(node, dict):
        return {k: _substitute(v, variables) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, variables) for v in node]
    if isinstance(node, str):
        for name in _VAR.findall(node):
            if name not in variables:
                raise KeyError(f"${{var.{name}}} is used but not declared under variables in databricks.yml")
        whole = _VAR.fullmatch(node)
        if whole:
            return variables[whole.group(1)]
        return _VAR.sub(lambda m: str(variables[m.group(1)]), node)
    return node


def _resource_files(bundle: dict[str, Any]) -> list[Path]:
    files: list[Path] = []
    for pattern in bundle["include"]:
        files.extend(Path(p) for p in sorted(glob.glob(str(BUNDLE_DIR / pattern))))
    return files


def _bundle_jobs(target: str = "dev") -> dict[str, dict[str, Any]]:
    """Every job the bundle defines (resource key -> job settings dict), variables resolved."""
    bundle = _load_bundle()
    variables = _bundle_variables(bundle, target)
    found: dict[str, dict[str, Any]] = {}
    for path in _resource_files(bundle):
        data = yaml.safe_load(path.read_text()) or {}
        for key, job in (data.get("resources", {}).get("jobs") or {}).items():
            assert key not in found, f"job {key!r} is defined twice"
            found[key] = _substitute(job, variables)
    return found


def _strict_problems(value: Any, tp: Any, path: str = "job") -> list[str]:
    """Every key the SDK class `tp` does not know, and every value of the wrong kind.

    `JobSettings.from_dict` silently drops unknown keys (a misspelled `schedual` would
    deploy a job with no schedule), so this walks the dict against the dataclass fields
    and their type hints recursively.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return []
        tp = args[0] if len(args) == 1 else typing.Any
        origin = typing.get_origin(tp)
    if tp is typing.Any:
        return []
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping ({tp.__name__}), got {value!r}"]
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        problems: list[str] = []
        for key, sub in value.items():
            if key not in names:
                problems.append(f"{path}.{key}: unknown key for {tp.__name__}")
            else:
                problems.extend(_strict_problems(sub, hints[key], f"{path}.{key}"))
        return problems
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {value!r}"]
        (item_tp,) = typing.get_args(tp)
        return [p for i, v in enumerate(value) for p in _strict_problems(v, item_tp, f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {value!r}"]
        _key_tp, item_tp = typing.get_args(tp)
        return [p for k, v in value.items() for p in _strict_problems(v, item_tp, f"{path}.{k}")]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        allowed = [e.value for e in tp]
        return [] if value in allowed else [f"{path}: {value!r} is not one of {allowed}"]
    if tp is bool:
        return [] if isinstance(value, bool) else [f"{path}: expected true/false, got {value!r}"]
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected an integer, got {value!r}"]
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected a number, got {value!r}"]
    if tp is str:
        return [] if isinstance(value, str) else [f"{path}: expected a string, got {value!r}"]
    return []


def test_bundle_declares_name_include_targets_and_variables():
    bundle = _load_bundle()
    assert bundle["bundle"]["name"] == "spark-scoring"
    assert bundle["include"] == ["resources/*.yml"]
    assert [p.name for p in _resource_files(bundle)] == ["nightly_scoring.job.yml"]
    assert set(bundle["targets"]) == {"dev", "prod"}
    for target in bundle["targets"].values():
        assert target["workspace"]["host"].startswith("https://")
    assert bundle["targets"]["dev"]["mode"] == "development"
    assert bundle["targets"]["prod"]["mode"] == "production"
    # the wheel artifact is built from the repository root
    artifact = bundle["artifacts"]["spark_scoring_wheel"]
    assert artifact["type"] == "whl"
    assert (BUNDLE_DIR / artifact["path"] / "pyproject.toml").is_file()
    for synced in bundle["sync"]["paths"]:
        assert (BUNDLE_DIR / synced).is_dir(), synced


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_bundle_jobs_are_valid_sdk_job_settings(target: str):
    found = _bundle_jobs(target)
    assert set(found) == {"nightly_scoring", "nightly_scoring_gpu", "nightly_scoring_serverless"}
    for key, job in found.items():
        assert _strict_problems(job, jobs.JobSettings) == [], key
        settings = jobs.JobSettings.from_dict(job)
        # nothing is lost or changed on the way into the SDK classes and back
        assert settings.as_dict() == job, key


def test_nightly_job_schedule_cluster_task_and_notifications():
    job = _bundle_jobs("dev")["nightly_scoring"]
    s = jobs.JobSettings.from_dict(job)

    assert isinstance(s.schedule, jobs.CronSchedule)
    assert s.schedule.quartz_cron_expression == "0 30 2 * * ?"
    assert len(s.schedule.quartz_cron_expression.split()) in (6, 7)  # quartz: seconds first
    assert s.schedule.timezone_id == "Europe/Amsterdam"
    assert s.schedule.pause_status is jobs.PauseStatus.PAUSED  # dev: schedules stay off
    assert s.max_concurrent_runs == 1
    assert s.queue is not None and s.queue.enabled is False
    assert s.email_notifications.on_failure == ["data-platform-alerts@example.com"]

    (cluster,) = s.job_clusters
    assert isinstance(cluster, jobs.JobCluster)
    spec = cluster.new_cluster
    assert isinstance(spec, compute.ClusterSpec)
    assert re.fullmatch(r"\d+\.\d+\.x-cpu-ml-scala2\.1[23]", spec.spark_version), spec.spark_version
    assert spec.node_type_id == "i3.xlarge"
    assert spec.num_workers == 1  # dev override of the default 2
    assert spec.data_security_mode is compute.DataSecurityMode.SINGLE_USER
    assert spec.spark_conf["spark.python.worker.reuse"] == "true"

    (task,) = s.tasks
    assert isinstance(task, jobs.Task)
    assert task.job_cluster_key == cluster.job_cluster_key
    assert isinstance(task.spark_python_task, jobs.SparkPythonTask)
    script = (BUNDLE_DIR / "resources" / task.spark_python_task.python_file).resolve()
    assert script == REPO / "jobs" / "nightly_score.py"
    assert task.spark_python_task.parameters == ["${workspace.file_path}/conf/text_classification.yaml"]
    (lib,) = task.libraries
    assert isinstance(lib, compute.Library)
    assert (BUNDLE_DIR / "resources" / lib.whl).resolve() == REPO / "dist" / "*.whl"


def test_gpu_job_shares_each_gpu_between_two_tasks():
    s = jobs.JobSettings.from_dict(_bundle_jobs("dev")["nightly_scoring_gpu"])
    spec = s.job_clusters[0].new_cluster
    assert re.fullmatch(r"\d+\.\d+\.x-gpu-ml-scala2\.1[23]", spec.spark_version), spec.spark_version
    assert spec.node_type_id == "g5.xlarge"
    assert spec.spark_conf["spark.executor.resource.gpu.amount"] == "1"
    assert spec.spark_conf["spark.task.resource.gpu.amount"] == "0.5"
    tasks_per_gpu = float(spec.spark_conf["spark.executor.resource.gpu.amount"]) / float(
        spec.spark_conf["spark.task.resource.gpu.amount"]
    )
    assert tasks_per_gpu == 2
    assert s.max_concurrent_runs == 1
    assert s.schedule.quartz_cron_expression == "0 0 3 * * ?"
    (task,) = s.tasks
    assert task.spark_python_task.parameters == [
        "${workspace.file_path}/conf/text_generation.yaml", "--set", "model.device=cuda",
    ]


def test_prod_target_unpauses_the_schedules_and_scales_out():
    for key, job in _bundle_jobs("prod").items():
        s = jobs.JobSettings.from_dict(job)
        if key == "nightly_scoring_serverless":  # an alternative to nightly_scoring: off unless chosen
            assert s.schedule.pause_status is jobs.PauseStatus.PAUSED and not s.job_clusters
            continue
        assert s.schedule.pause_status is jobs.PauseStatus.UNPAUSED
        assert s.job_clusters[0].new_cluster.num_workers == 4


def test_serverless_job_is_the_cpu_job_with_an_environment_and_no_cluster():
    found = _bundle_jobs("dev")
    s = jobs.JobSettings.from_dict(found["nightly_scoring_serverless"])
    cpu = jobs.JobSettings.from_dict(found["nightly_scoring"])
    # serverless: no cluster spec anywhere, the package from the job's environment
    assert not s.job_clusters
    (env,) = s.environments
    assert isinstance(env, jobs.JobEnvironment) and isinstance(env.spec, compute.Environment)
    assert env.spec.environment_version == "4" and env.spec.client is None
    (wheel,) = env.spec.dependencies
    assert (BUNDLE_DIR / "resources" / wheel).resolve() == REPO / "dist" / "*.whl"
    (task,) = s.tasks
    assert task.environment_key == env.environment_key
    assert task.job_cluster_key is None and task.new_cluster is None and task.existing_cluster_id is None
    assert not task.libraries  # serverless tasks take their packages from the environment
    # the same entry point, config, schedule and guards as the classic CPU job, on CPUs
    (cpu_task,) = cpu.tasks
    assert task.spark_python_task.python_file == cpu_task.spark_python_task.python_file
    assert task.spark_python_task.parameters == [*cpu_task.spark_python_task.parameters, "--set", "model.device=cpu"]
    assert s.schedule.quartz_cron_expression == cpu.schedule.quartz_cron_expression
    assert s.schedule.pause_status is jobs.PauseStatus.PAUSED
    assert (s.max_concurrent_runs, s.queue.enabled, task.max_retries) == (1, False, 1)
    assert s.email_notifications.on_failure == cpu.email_notifications.on_failure
    assert s.performance_target is jobs.PerformanceTarget.STANDARD
    assert "gpu" not in str(found["nightly_scoring_serverless"]).lower()


@pytest.mark.parametrize("key", ["nightly_scoring", "nightly_scoring_gpu", "nightly_scoring_serverless"])
def test_task_parameters_are_what_the_entry_point_accepts(key: str, capsys):
    """The job's parameters, with the config path mapped back into this checkout, validate."""
    (task,) = _bundle_jobs("dev")[key]["tasks"]
    params = [p.replace("${workspace.file_path}", str(REPO)) for p in task["spark_python_task"]["parameters"]]
    assert Path(params[0]).is_file(), params[0]
    # `run` and `validate` share the config/--set arguments: validate proves they parse
    assert cli.main(["validate", *params]) == 0
    assert "OK" in capsys.readouterr().out


def test_strict_check_catches_typos_that_from_dict_silently_drops():
    job = _bundle_jobs("dev")["nightly_scoring_gpu"]

    typo = copy.deepcopy(job)
    typo["schedual"] = typo.pop("schedule")
    assert jobs.JobSettings.from_dict(typo).schedule is None  # the SDK alone would not notice
    assert _strict_problems(typo, jobs.JobSettings) == ["job.schedual: unknown key for JobSettings"]

    nested = copy.deepcopy(job)
    nested["job_clusters"][0]["new_cluster"]["spark_confs"] = nested["job_clusters"][0]["new_cluster"].pop("spark_conf")
    nested["tasks"][0]["spark_python_task"]["parameter"] = ["x"]
    assert _strict_problems(nested, jobs.JobSettings) == [
        "job.job_clusters[0].new_cluster.spark_confs: unknown key for ClusterSpec",
        "job.tasks[0].spark_python_task.parameter: unknown key for SparkPythonTask",
    ]

    wrong_values = copy.deepcopy(job)
    wrong_values["schedule"]["pause_status"] = "UNPAUSE"
    wrong_values["max_concurrent_runs"] = "1"
    assert _strict_problems(wrong_values, jobs.JobSettings) == [
        "job.max_concurrent_runs: expected an integer, got '1'",
        "job.schedule.pause_status: 'UNPAUSE' is not one of ['PAUSED', 'UNPAUSED']",
    ]


def test_an_undeclared_bundle_variable_is_reported():
    with pytest.raises(KeyError, match=r"\$\{var.nope\} is used but not declared"):
        _substitute({"a": ["${var.nope}"]}, {"x": 1})


# ---------------------------------------------------------------------------------------
# jobs/*.py entry points, as real processes
# ---------------------------------------------------------------------------------------


def _run_job(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / script), *args],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=env,
    )


def test_nightly_score_help_lists_the_run_options():
    proc = _run_job("nightly_score.py", "--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("config", "--set", "--full-refresh", "--dry-run"):
        assert option in proc.stdout


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("nightly_score.py", (), "the following arguments are required: config"),
        ("nightly_score.py", ("conf/demo_embedding.yaml", "--no-such-flag"), "unrecognized arguments: --no-such-flag"),
        ("backfill.py", (), "the following arguments are required: config"),
        ("register_model.py", ("--path", "/tmp/model"), "the following arguments are required: --name, --task"),
        ("register_model.py", ("--path", "m", "--name", "n", "--task", "regression"), "invalid choice: 'regression'"),
    ],
)
def test_entry_points_exit_2_with_usage_on_bad_arguments(script: str, args: tuple[str, ...], message: str):
    proc = _run_job(script, *args)
    assert proc.returncode == 2, proc.stderr
    assert "usage:" in proc.stderr
    assert message in proc.stderr


def test_nightly_score_exits_2_on_a_bad_config_before_starting_spark(tmp_path: Path):
    missing = tmp_path / "missing.yaml"
    proc = _run_job("nightly_score.py", str(missing))
    assert proc.returncode == 2
    assert f"config file {str(missing)!r} does not exist" in proc.stderr

    proc = _run_job("nightly_score.py", "conf/demo_embedding.yaml", "--set", "model.batch.max_rows=0")
    assert proc.returncode == 2
    assert "model.batch.max_rows: must be >= 1, got 0" in proc.stderr


def test_backfill_needs_both_ends_of_a_range():
    proc = _run_job("backfill.py", "conf/demo_embedding.yaml", "--from", "2024-05-01")
    assert proc.returncode == 2, proc.stderr
    assert "give both --from and --to" in proc.stderr
