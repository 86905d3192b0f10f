"""Typed job configuration: YAML in, frozen dataclasses out.

Every problem in a config is collected and reported at once (key path, bad value, what is
allowed), so a night's run lists all bad keys together instead of one per attempt.

Example:
    >>> cfg = load_config("conf/demo_embedding.yaml", overrides=["model.batch.max_rows=64"])
    >>> cfg.model.batch.max_rows
    64
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from spark_scoring.contract import FIXED_COLUMNS
from spark_scoring.errors import ConfigError
from spark_scoring.models.tasks import (  # a light module: the standard library only
    TASK_NAMES,
    TASK_SPECS,
    get_task,
    or_list,
    task_option_problems,
    task_spec,
)
from spark_scoring.tableref import normalise, overlap

Engine = Literal["auto", "delta-spark", "delta-rs"]
# The allowed `model.task` values are the task registry's names, never a list kept here.
TaskName = Literal[TASK_NAMES]
Device = str  # "auto", "cpu", "cuda", "cuda:N"; checked in ModelConfig.__post_init__
Precision = Literal["auto", "fp32", "bf16", "fp16"]
OnChange = Literal["rescore", "new-rows-only", "fail"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _at_least(low: float):
    def check(value: float) -> str | None:
        return None if value >= low else f"must be >= {low}, got {value}"

    return {"check": check}


def _fraction(value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else f"must be between 0 and 1, got {value}"


def _device(value: str) -> str | None:
    return None if _DEVICE_RE.match(value) else f"{value!r} is not allowed; expected auto, cpu, cuda or cuda:N"


def _name(value: str) -> str | None:
    if _NAME_RE.match(value):
        return None
    return (
        f"{value!r} is not allowed; use letters, digits, '_', '.' and '-' "
        "(it names the job's MLflow runs and Delta app id)"
    )


def _not_blank(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


@dataclass(frozen=True)
class SourceConfig:
    """The Delta table to score."""

    table: str = field(metadata={"check": _not_blank})
    key: str = field(metadata={"check": _not_blank})
    partition_by: tuple[str, ...] = ()
    passthrough: tuple[str, ...] = ()


@dataclass(frozen=True)
class BatchConfig:
    """How rows are packed into model batches on each executor.

    Rows are ordered by length inside each Arrow batch (longest first) and packed until
    `max_rows` rows or the length budget is reached. A row's length is what its task's
    model counts (`LoadedModel.length_unit`):

    * text tasks count tokens: `max_tokens` bounds the padded tokens of a batch (rows x
      longest row), i.e. the model's input tensor; `max_pixels` is ignored;
    * image tasks count decoded pixels (width x height of each image as stored, before
      the model's processor resizes it): `max_pixels` bounds rows x the largest image of
      a batch, i.e. the decoded images a batch holds in memory at once (about 3 bytes a
      pixel as RGB, plus the processor's working copies); `max_tokens` is ignored. The
      default (2**25, about 100 MB of RGB) fits 64 images of 512 x 1024, or 2 of 16 MP.

    A single row over the budget still gets a batch of its own (the decompression-bomb
    limit of image tasks, `model.options.max_image_pixels`, is what refuses huge images).
    """

    max_rows: int = field(default=64, metadata=_at_least(1))
    max_tokens: int = field(default=16384, metadata=_at_least(1))
    max_pixels: int = field(default=2**25, metadata=_at_least(1))
    sort_by_length: bool = True

    def budget(self, unit: str) -> int:
        """The length budget for rows counted in `unit` ("tokens" or "pixels")."""
        return self.max_pixels if unit == "pixels" else self.max_tokens


@dataclass(frozen=True)
class ModelConfig:
    """The model, its task, and how to run it."""

    uri: str = field(metadata={"check": _not_blank})
    task: TaskName = field()
    input: tuple[str, ...] = field()
    options: Mapping[str, Any] = field(default_factory=dict)
    batch: BatchConfig = field(default_factory=BatchConfig)
    device: Device = field(default="auto", metadata={"check": _device})
    precision: Precision = "auto"
    on_change: OnChange = "rescore"

    @property
    def input_column(self) -> str:
        """The single input column of a text task."""
        return self.input[0]


@dataclass(frozen=True)
class OutputConfig:
    """Where scored rows go. The output is always partitioned like the source.

    `max_rows_per_file` bounds the rows of each file a run writes (files hold narrow key
    ranges): a later night rewrites whole files, so smaller files make nights that change a
    few rows cheaper. 25,000 MiniLM embeddings are about 40 MB of Parquet.
    """

    table: str = field(metadata={"check": _not_blank})
    max_rows_per_file: int = field(default=25_000, metadata=_at_least(1))


@dataclass(frozen=True)
class ErrorsConfig:
    """The error budget checked before anything is published."""

    max_error_rate: float = field(default=0.01, metadata={"check": _fraction})
    max_errors: int | None = field(default=None, metadata=_at_least(0))
    quarantine_table: str | None = None


@dataclass(frozen=True)
class MlflowConfig:
    """MLflow tracking. With no tracking URI a SQLite store in the working directory is used."""

    tracking_uri: str | None = None
    experiment: str = "spark-scoring"
    registry_uri: str | None = None


_REMOTE_RE = re.compile(r"^(sc://[^/\s:;]+(:\d{1,5})?/?(;\S*)?|local(\[(\*|\d+)\])?)$")


def remote_problem(value: str) -> str | None:
    """What is wrong with a Spark Connect address (`spark.remote`, `SPARK_REMOTE`), or None."""
    if _REMOTE_RE.match(value):
        return None
    return (
        f"{value!r} is not a Spark Connect address; use sc://HOST[:PORT] (a Spark Connect server, "
        "e.g. sc://localhost:15002) or local[N] (a local Connect server started for the run)"
    )


@dataclass(frozen=True)
class SparkConfig:
    """Spark session settings. Never override what spark-submit or a cluster already set.

    `remote` runs the job over Spark Connect (`sc://host:port`, or `local[N]` for a local
    Connect server started for the run); the `SPARK_REMOTE` environment variable wins over
    it, and `master` is ignored over Connect (see `spark_scoring.session`).
    """

    master: str | None = None
    remote: str | None = field(default=None, metadata={"check": remote_problem})
    app_name: str | None = None
    conf: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LakehouseConfig:
    """Which Delta implementation reads and writes tables."""

    engine: Engine = "auto"


@dataclass(frozen=True)
class RunConfig:
    """Run-level knobs."""

    num_partitions: int | None = field(default=None, metadata=_at_least(1))
    progress: bool = True


@dataclass(frozen=True)
class JobConfig:
    """A whole scoring job."""

    name: str = field(metadata={"check": _name})
    source: SourceConfig
    model: ModelConfig
    output: OutputConfig
    errors: ErrorsConfig = field(default_factory=ErrorsConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    lakehouse: LakehouseConfig = field(default_factory=LakehouseConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (lists instead of tuples) suitable for YAML/JSON."""
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        """The resolved config as YAML, as logged with every run."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def config_hash(self) -> str:
        """A short stable hash of the resolved config."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _to_plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> JobConfig:
    """Read a YAML job config, apply `--set key=value` overrides, and validate it.

    Raises:
        ConfigError: listing every problem found (exit code 2 from the CLI).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file {str(path)!r} does not exist; pass the path of a YAML job config"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], source=str(path)) from exc
    if raw is None:
        raw = {}
    return config_from_dict(raw, overrides=overrides, source=str(path))


def config_from_dict(
    raw: Mapping[str, Any], overrides: Sequence[str] = (), source: str | None = None
) -> JobConfig:
    """Build a `JobConfig` from plain data, collecting every problem before raising."""
    problems: list[str] = []
    if not isinstance(raw, Mapping):
        raise ConfigError([f"the top level must be a mapping of keys, got {type(raw).__name__}"], source)
    data = _deep_copy(raw)
    for item in overrides:
        _apply_override(data, item, problems)
    cfg = _build(JobConfig, data, "", problems)
    if isinstance(cfg, JobConfig):
        _check_semantics(cfg, problems)
    if problems:
        raise ConfigError(problems, source)
    assert isinstance(cfg, JobConfig)  # invariant: no problems means it was built
    return cfg


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split `a.b=c` into (["a", "b"], parsed value); the value is read as a YAML scalar."""
    if "=" not in item:
        raise ValueError(f"--set {item!r} is not of the form key.path=value (e.g. model.batch.max_rows=64)")
    key, _, value = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"--set {item!r} has an empty key; use key.path=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def _apply_override(data: dict[str, Any], item: str, problems: list[str]) -> None:
    try:
        parts, value = parse_override(item)
    except ValueError as exc:
        problems.append(str(exc))
        return
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            problems.append(f"--set {item}: {'.'.join(parts[: i + 1])} is not a mapping, cannot set a key inside it")
            return
        node = child
    node[parts[-1]] = value


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if origin is tuple:
        return f"a list of {_describe(get_args(tp)[0])}"
    if origin in (Mapping, dict) or tp in (dict, Mapping):
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, str(tp))


_MISSING = object()


def _build(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """Convert plain data into `tp`, appending a problem for everything that does not fit."""
    where = path or "<top level>"
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            problems.append(f"{where}: expected {_describe(tp)}, got {value!r}")
            return None
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        for key in value:
            if key not in fields:
                allowed = ", ".join(sorted(fields))
                problems.append(f"{_join(path, key)}: unknown key; allowed keys here: {allowed}")
        kwargs: dict[str, Any] = {}
        ok = True
        for name, f in fields.items():
            sub = _join(path, name)
            if name in value:
                built = _build(hints[name], value[name], sub, problems)
                if built is not _MISSING and "check" in f.metadata and built is not None:
                    problem = f.metadata["check"](built)
                    if problem:  # well-typed but out of range: keep it so later checks run
                        problems.append(f"{sub}: {problem}")
                if built is not _MISSING:
                    kwargs[name] = built
                elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    ok = False
                # else: the problem is recorded and the default stands in, so that the
                # cross-field checks still run and every problem is reported at once.
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{sub}: required key is missing ({_describe(hints[name])})")
                ok = False
        if not ok:
            return _MISSING
        try:
            return tp(**kwargs)
        except (TypeError, ValueError) as exc:
            problems.append(f"{where}: {exc}")
            return _MISSING
    if origin is Literal:
        if value in get_args(tp):
            return value
        problems.append(f"{where}: {value!r} is not allowed; expected {_describe(tp)}")
        return _MISSING
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        # tuple[str, ...] | str style: accept a single string for a list of strings
        trial: list[str] = []
        for arg in args:
            if arg is type(None):
                continue
            trial = []
            built = _build(arg, value, path, trial)
            if not trial:
                return built
        problems.append(f"{where}: expected {_describe(tp)}, got {value!r}")
        return _MISSING
    if origin is tuple:
        (item_tp, *_rest) = get_args(tp)
        if isinstance(value, str) and item_tp is str:
            value = [value]
        if not isinstance(value, list):
            problems.append(f"{where}: expected {_describe(tp)}, got {value!r}")
            return _MISSING
        items = [_build(item_tp, v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(items)
    if origin in (Mapping, dict) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return _MISSING
        # A plain dict (not a read-only proxy): config parts are pickled into Spark jobs.
        args = get_args(tp)
        if args and args[1] is str:
            return {str(k): _scalar_str(v) for k, v in value.items()}
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a type the config classes do not use
        raise TypeError(f"config type {tp!r} is not supported")
    problems.append(f"{where}: expected {_describe(tp)}, got {value!r}")
    return _MISSING


def _scalar_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def _check_semantics(cfg: JobConfig, problems: list[str]) -> None:
    """Cross-field rules that types alone cannot express."""
    src, model = cfg.source, cfg.model
    problems.extend(_table_problems(cfg))
    if not model.input:
        problems.append("model.input: give at least one input column")
    spec = task_spec(model.task)  # model.task is one of TASK_NAMES once the config is built
    if spec.single_column and len(model.input) != 1:
        several = or_list(s.name for s in TASK_SPECS if not s.single_column)
        problems.append(
            f"model.input: task {model.task!r} takes exactly one {spec.input_kind} column, got "
            f"{list(model.input)}; only task {several} takes several columns"
        )
    reserved = {src.key, *src.partition_by}
    for col in model.input:
        if col in reserved:
            problems.append(f"model.input: {col!r} is the key or a partition column; score a text column")
    dup = [c for c in src.passthrough if c in reserved]
    if dup:
        problems.append(f"source.passthrough: {dup} are already in the output as key/partition columns")
    if src.key in src.partition_by:
        problems.append(f"source.key: {src.key!r} is also a partition column; the key must be a row-level column")
    if len(set(src.partition_by)) != len(src.partition_by):
        problems.append(f"source.partition_by: duplicate columns in {list(src.partition_by)}")
    problems.extend(task_option_problems(model.task, dict(model.options)))
    problems.extend(output_name_problems(cfg, task_output_columns(model.task, dict(model.options))))


#: (config key, what writing there would do to the other table), for each pair of tables
#: of a job where the first is written: the output and the quarantine never overlap the
#: source (or each other).
_WRITTEN_TABLES = (
    ("output.table", "source.table"),
    ("errors.quarantine_table", "source.table"),
    ("errors.quarantine_table", "output.table"),
)


def _table_problems(cfg: JobConfig) -> list[str]:
    """The written tables (output, quarantine) must be apart from the source and each other.

    Compared after normalising (`spark_scoring.tableref`): another spelling of one folder
    (`./`, `..`, a trailing slash, `file://`, a symlink) is the same table, and a table
    inside another's folder overlaps it (a VACUUM or an overwrite of the outer table would
    delete the inner one's files). A catalog name and a path are compared by the lakehouse
    once the session has resolved the name's location.
    """
    tables = {
        "source.table": cfg.source.table,
        "output.table": cfg.output.table,
        "errors.quarantine_table": cfg.errors.quarantine_table,
    }
    problems = []
    for written, other in _WRITTEN_TABLES:
        a, b = tables[written], tables[other]
        if not a or not b:
            continue
        how = overlap(a, b)
        if how is None:
            continue
        where = normalise(a).location
        if how == "same":
            what = f"is the same table as {other} {b!r} (both are {where})"
        elif how == "inside":
            what = (f"lies inside the folder of {other} {b!r} ({where}), so a VACUUM or an overwrite "
                    f"of {other} would delete its files")
        else:
            what = (f"is a folder that holds {other} {b!r} ({normalise(b).location}), so writing "
                    f"{written} would delete or corrupt that table's files")
        problems.append(
            f"{written}: {a!r} {what}; scoring never writes into its input or mixes its tables: "
            f"give {written} its own location, outside the folders of the other tables"
        )
    return problems


def task_output_columns(task: str, options: Mapping[str, Any]) -> list[str] | None:
    """The output columns of `task` with these options, from the task registry; None when
    they come from the model itself (a python_function model's signature), known only once
    the model resolves."""
    if task not in TASK_NAMES or "python_function" in task_spec(task).flavors:
        return None
    try:
        return [f.name for f in get_task(task).output_fields("", options)]
    except Exception:  # noqa: BLE001 - bad options are reported by task_option_problems
        return None


def output_name_problems(cfg: JobConfig, task_outputs: Sequence[str] | None) -> list[str]:
    """Source columns the job copies or reads that clash with a column the job writes.

    The key, partition and passthrough columns are copied into the output, which also holds
    `contract.FIXED_COLUMNS` (`error`, the lineage columns, `input_hash`) and the task's
    output columns; the model inputs travel next to them while scoring and into the
    quarantine table. Column names compare case-insensitively, as Spark and Delta do.

    Args:
        cfg: the job config.
        task_outputs: the task's output columns (None: not known yet; only the fixed
            columns are checked). For a pyfunc model, call this again with its signature's
            outputs once the model has resolved.
    """
    written = {c.lower(): f"the {c!r} column spark-scoring writes into every output row"
               for c in FIXED_COLUMNS}
    for c in task_outputs or ():
        written.setdefault(c.lower(), f"the {c!r} output column of task {cfg.model.task!r}")
    used = [("source.key", cfg.source.key), *(("source.partition_by", c) for c in cfg.source.partition_by),
            *(("source.passthrough", c) for c in cfg.source.passthrough), *(("model.input", c) for c in cfg.model.input)]
    problems = []
    for where, col in used:
        if "." in col or "`" in col:
            problems.append(
                f"{where}: column {col!r} has a '.' or a backtick in its name, which spark-scoring does not "
                "support yet (Spark reads a dot as a struct field). Rename the column in the source, or "
                "score a view that aliases it (e.g. SELECT `user.id` AS user_id ...)"
            )
            continue
        clash = written.get(col.lower())
        if clash is not None:
            problems.append(
                f"{where}: source column {col!r} has the name of {clash}; the output cannot hold both. "
                "Rename the column in the source (or in a view of it), or leave it out of the job"
            )
    return problems
