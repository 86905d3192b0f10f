"""The thin Spark wrapper: ship the model, score a DataFrame on the executors.

Driver side: `prepare_model` checks the model directory cheaply and ships it to the
executors (one tar via `SparkContext.addArchive` when the master is not local), and
returns a small picklable `ModelSpec`. `score` adds the task's output columns and `error`
to a DataFrame with `mapInPandas`.

Executor side: the model loads once per Python worker (`spark_scoring.models.cache`) and
`spark_scoring.batching.score_rows` does the padding-aware packing, OOM back-off, error
isolation and output validation on each Arrow batch.

Example:
    >>> spec = prepare_model(spark, model_dir=d, model_uri=uri, model_cfg=cfg.model, identity="m1")
    >>> stats = ScoringStats(spark)
    >>> scored = score(df, spec, stats)   # df's columns + embedding + error
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import BinaryType, StringType, StructField, StructType

from spark_scoring import batching
from spark_scoring.config import BatchConfig, ModelConfig
from spark_scoring.errors import (
    ConfigError,
    ModelError,
    SchemaDriftError,
    ScoringError,
    UsageError,
    for_executor,
)
from spark_scoring.models.tasks import get_task, task_spec

log = logging.getLogger(__name__)

ERROR_COLUMN = "error"


@dataclass(frozen=True)
class ModelSpec:
    """Everything an executor needs to load and run the model; made on the driver, pickled.

    Attributes:
        identity: the model identity made on the driver (`incremental.model_identity`);
            keys the per-worker model cache.
        model_uri: the resolved URI (for messages and lineage).
        task: registered task name.
        model_dir: the local model directory on the driver.
        shipped_name: name of the archive the directory was shipped as (executors
            resolve the unpacked copy with `SparkFiles.get`), or None when executors
            read `model_dir` directly (local master).
        input_columns: the input column(s).
        options: task options (plain dict).
        batch: packing settings.
        device: "auto", "cpu", "cuda" or "cuda:N".
        precision: "auto", "fp32", "bf16" or "fp16".
    """

    identity: str
    model_uri: str
    task: str
    model_dir: str
    shipped_name: str | None
    input_columns: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    batch: BatchConfig = field(default_factory=BatchConfig)
    device: str = "auto"
    precision: str = "auto"


# --------------------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------------------


def prepare_model(
    spark: SparkSession, *, model_dir: str, model_uri: str, model_cfg: ModelConfig, identity: str
) -> ModelSpec:
    """Check the model directory on the driver and ship it to the executors.

    The check is cheap (directory exists; its config/MLmodel is readable); the weights
    load on the executors. On a non-local master the directory is shipped once per
    executor as one tar archive (`SparkContext.addArchive`; Spark refuses `addFile` of a
    local directory on a cluster), unpacked there and found with `SparkFiles.get`;
    `local[...]` masters read the path directly.

    Raises:
        ModelError: the directory is missing or not a model this task can load, or it
            could not be shipped (the message names the URI and the cause).
        ConfigError: bad task options.
    """
    task = get_task(model_cfg.task)
    options = dict(model_cfg.options)
    problems = task.option_problems(options)
    if problems:
        raise ConfigError(problems)
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelError(
            f"model {model_uri}: local model directory {model_dir!r} does not exist or is not a "
            "directory; check model.uri (and that the artifact download finished)"
        )
    try:
        task.check_model(str(path))
    except Exception as exc:
        raise ModelError(
            f"model {model_uri}: {str(path)!r} is not a model task {model_cfg.task!r} can load: "
            f"{type(exc).__name__}: {_one_line(exc)}"
        ) from exc
    if model_cfg.device == "cpu" and model_cfg.precision == "fp16":
        raise ModelError(
            "model.precision: fp16 is not supported on CPU (model.device 'cpu'); use fp32 or "
            "bf16, or run on a CUDA device"
        )

    shipped_name = None
    master = spark.sparkContext.master
    if not _is_local_master(master):
        shipped_name = _ship(spark, path.resolve(), identity, model_uri)
    return ModelSpec(
        identity=identity,
        model_uri=model_uri,
        task=model_cfg.task,
        model_dir=str(path.resolve()),
        shipped_name=shipped_name,
        input_columns=tuple(model_cfg.input),
        options=options,
        batch=model_cfg.batch,
        device=model_cfg.device,
        precision=model_cfg.precision,
    )


def _is_local_master(master: str) -> bool:
    # local, local[4], local[*], local[2,3]: one JVM on this machine. local-cluster[...]
    # starts separate executors, so it ships like a real cluster (and tests that path).
    return master == "local" or master.startswith("local[")


def _ship(spark: SparkSession, path: Path, model_id: str, model_uri: str) -> str:
    """Pack the model directory into one uncompressed tar and ship it with `addArchive`.

    Spark refuses `addFile(local_dir, recursive=True)` on a non-local master
    (UNSUPPORTED_ADD_FILE.LOCAL_DIRECTORY: directories only ship from Hadoop file
    systems), and flat `addFile` per file would clash on names such as `config.json` in
    sub-folders. An archive keeps the layout; each executor fetches and unpacks it once,
    and `SparkFiles.get(name)` is the unpacked directory. The name carries the model id,
    so two models never clash. The tar stays on the driver for the application's life
    (executors that join later fetch it too); it is removed when the driver exits.
    """
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{model_id}-{path.name}") + ".tar"
    sc = spark.sparkContext
    if any(uri.rstrip("/").endswith("/" + name) for uri in sc.listArchives):
        return name  # already shipped in this application
    staging = Path(tempfile.mkdtemp(prefix="spark-scoring-ship-"))
    atexit.register(shutil.rmtree, staging, True)
    try:
        archive = staging / name
        # Entries relative to the directory, with no "./" entry: Hadoop's unpacker refuses
        # an entry named "./" as "outside" the target directory.
        with tarfile.open(archive, "w") as tar:
            for item in sorted(path.rglob("*")):
                if item.is_file():
                    tar.add(item, arcname=item.relative_to(path).as_posix())
        sc.addArchive(str(archive))
    except Exception as exc:
        raise ModelError(
            f"model {model_uri}: could not ship {str(path)!r} to the executors: "
            f"{type(exc).__name__}: {_one_line(exc)}"
        ) from exc
    log.info("shipped model %s to the executors as %s", model_uri, name)
    return name


def output_fields(spec: ModelSpec) -> list[StructField]:
    """The task's output columns (not `error`, not lineage)."""
    return get_task(spec.task).output_fields(spec.model_dir, spec.options)


class ScoringStats:
    """Spark accumulators summed over every scoring task.

    Counters: rows, rows_failed, batches (model calls), real_tokens, padded_tokens,
    oom_backoffs, model_loads. Read them with `snapshot()` after an action ran.
    """

    FIELDS = (
        "rows",
        "rows_failed",
        "batches",
        "real_tokens",
        "padded_tokens",
        "oom_backoffs",
        "model_loads",
    )

    def __init__(self, spark: SparkSession):
        sc = spark.sparkContext
        self._accs = {name: sc.accumulator(0) for name in self.FIELDS}

    def snapshot(self) -> dict[str, Any]:
        """Current totals, plus padding_efficiency = real_tokens / padded_tokens (None
        when no tokens were counted, e.g. pyfunc)."""
        values: dict[str, Any] = {name: int(acc.value) for name, acc in self._accs.items()}
        padded = values["padded_tokens"]
        values["padding_efficiency"] = values["real_tokens"] / padded if padded else None
        return values

    def _executor_handles(self) -> dict[str, Any]:
        return dict(self._accs)


def score(df: DataFrame, spec: ModelSpec, stats: ScoringStats | None = None) -> DataFrame:
    """Score `df` with the model in `spec`.

    Returns ALL of `df`'s columns unchanged and in order, then the task's output columns,
    then `error` (string; null where the row scored). Lazy: nothing runs until an action.

    Raises:
        SchemaDriftError: an input column is missing, or (text tasks) not a string, or
            (image tasks) neither binary nor a string.
        UsageError: `df` already has a column the scoring would add.
    """
    input_kind = task_spec(spec.task).input_kind
    names = df.columns
    for col in spec.input_columns:
        if col not in names:
            raise SchemaDriftError(
                f"input column {col!r} (model.input) is not in the data; available columns: {names}"
            )
        if input_kind == "text" and not isinstance(df.schema[col].dataType, StringType):
            raise SchemaDriftError(
                f"input column {col!r} is {df.schema[col].dataType.simpleString()}, but task "
                f"{spec.task!r} scores text; choose a string column or cast it"
            )
        if input_kind == "image" and not isinstance(df.schema[col].dataType, (BinaryType, StringType)):
            raise SchemaDriftError(
                f"input column {col!r} is {df.schema[col].dataType.simpleString()}, but task "
                f"{spec.task!r} scores images: choose a binary column of encoded images (PNG, "
                "JPEG, WebP, ...) or a string column of image paths"
            )
    added = [*output_fields(spec), StructField(ERROR_COLUMN, StringType(), nullable=True)]
    clash = [f.name for f in added if f.name in names]
    if clash:
        raise UsageError(
            f"the data already has column(s) {clash}, which scoring adds; drop or rename them "
            "(or leave them out of source.passthrough)"
        )
    schema = StructType([*df.schema.fields, *added])
    accs = stats._executor_handles() if stats is not None else None
    fn = _make_partition_scorer(spec, [f.name for f in added[:-1]], accs)
    # mapInPandas rather than a pandas_udf / predict_batch_udf: the task returns several
    # columns plus `error`, the pass-through columns come back in the same rows (no join
    # on a key afterwards), and the whole Arrow batch is in hand to sort by length before
    # packing model batches.
    return df.mapInPandas(fn, schema)


# --------------------------------------------------------------------------------------
# Executor side
# --------------------------------------------------------------------------------------


class _Worker:
    """What the cache keeps per model: the loaded model, its device, and OOM memory."""

    def __init__(self, model: Any, device: str):
        self.model = model
        self.device = device
        self.backoff = batching.BackoffState()

    def empty_cache(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def close(self) -> None:
        self.model.close()
        self.model = None
        self.empty_cache()


def _make_partition_scorer(spec: ModelSpec, output_names: list[str], accs: dict[str, Any] | None):
    # The returned closure is pickled into the Spark job: it only references `spec`
    # (small), accumulator handles, and functions of this importable module.
    def score_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        return _score_partition(batches, spec, output_names, accs)

    return score_partition


def _score_partition(
    batches: Iterator[pd.DataFrame],
    spec: ModelSpec,
    output_names: list[str],
    accs: dict[str, Any] | None,
) -> Iterator[pd.DataFrame]:
    worker: _Worker | None = None
    totals = batching.BatchStats()
    loads = 0
    try:
        for pdf in batches:
            if worker is None:  # load lazily: an empty partition never loads the model
                worker, loaded = _get_worker(spec)
                loads += int(loaded)
                _set_cpu_threads(worker.device)
            model = worker.model
            result = batching.score_rows(
                pdf[list(spec.input_columns)],
                model.predict,
                kinds=model.outputs,
                lengths=model.lengths,
                invalid_rows=model.invalid_rows,
                max_rows=spec.batch.max_rows,
                max_tokens=spec.batch.budget(model.length_unit),
                sort_by_length=spec.batch.sort_by_length,
                row_overhead=model.row_overhead,
                length_unit=model.length_unit,
                state=worker.backoff,
                on_out_of_memory=worker.empty_cache,
            )
            totals.add(result.stats)
            added = {
                name: pd.Series(result.outputs[name], index=pdf.index, dtype=object)
                for name in output_names
            }
            added[ERROR_COLUMN] = pd.Series(result.errors, index=pdf.index, dtype=object)
            yield pd.concat([pdf, pd.DataFrame(added, index=pdf.index)], axis=1)
    except ScoringError as exc:  # a model that fails to load, wrong model output: typed, for the driver
        raise for_executor(exc) from exc
    finally:
        if accs is not None:
            for name in batching.BatchStats.__dataclass_fields__:
                value = getattr(totals, name)
                if value:
                    accs[name].add(value)
            if loads:
                accs["model_loads"].add(loads)


def _get_worker(spec: ModelSpec) -> tuple[_Worker, bool]:
    from spark_scoring.models import cache

    device = _resolve_device(spec.device)
    key = f"{spec.identity}|{spec.task}|{device}|{spec.precision}"

    def load() -> _Worker:
        model_dir = _local_model_dir(spec)
        try:
            model = get_task(spec.task).load(model_dir, spec.options, device, spec.precision)
        except ModelError as exc:
            raise ModelError(
                f"could not load model {spec.model_uri} on the executor: {_one_line(exc)}"
            ) from exc
        except Exception as exc:
            raise ModelError(
                f"could not load model {spec.model_uri} (task {spec.task}) from {model_dir!r} on the "
                f"executor: {type(exc).__name__}: {_one_line(exc)}"
            ) from exc
        return _Worker(model, device)

    return cache.get_or_load(key, load)


def _local_model_dir(spec: ModelSpec) -> str:
    if spec.shipped_name:
        from pyspark import SparkFiles

        shipped = SparkFiles.get(spec.shipped_name)
        if os.path.isdir(shipped):
            return shipped
    return spec.model_dir


def _resolve_device(requested: str) -> str:
    """cpu | cuda:N for this task: "auto" = CUDA when available; "cuda" = the GPU Spark
    assigned to the task (resources()["gpu"]), else cuda:0."""
    if requested == "cpu":
        return "cpu"
    import torch

    if requested == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        requested = "cuda"
    if not torch.cuda.is_available():
        raise ModelError(
            f"model.device is {requested!r} but CUDA is not available on this executor; "
            "use model.device auto or cpu, or run on GPU executors"
        )
    if requested == "cuda":
        from pyspark import TaskContext

        ctx = TaskContext.get()
        gpus = ctx.resources().get("gpu") if ctx is not None else None
        if gpus is not None and gpus.addresses:
            return f"cuda:{gpus.addresses[0]}"
        return "cuda:0"
    return requested


def _set_cpu_threads(device: str) -> None:
    # Torch threads x concurrent Python workers must not exceed the cores: give torch
    # exactly the cores Spark gave this task (spark.task.cpus, default 1).
    if device != "cpu":
        return
    import torch
    from pyspark import TaskContext

    ctx = TaskContext.get()
    cpus = 1
    if ctx is not None:
        try:
            cpus = max(1, int(ctx.cpus()))
        except Exception:  # pragma: no cover - older Spark without TaskContext.cpus()
            cpus = 1
    if torch.get_num_threads() != cpus:
        torch.set_num_threads(cpus)


# --------------------------------------------------------------------------------------
# Errors from executors
# --------------------------------------------------------------------------------------

def _one_line(exc: BaseException) -> str:
    # Executor errors travel as traceback text; one line keeps them recognisable.
    return " ".join(str(exc).split()) or type(exc).__name__
