"""The thin Spark wrapper: ship the model, score a DataFrame on the executors.

Driver side: `prepare_model` checks the model directory cheaply and ships it to the
executors where they cannot read it (one tar: `SparkContext.addArchive` on a classic
cluster, `SparkSession.addArtifacts(..., archive=True)` over Spark Connect), and returns a
small picklable `ModelSpec`. `score` adds the task's output columns and `error` to a
DataFrame with `mapInPandas`.

Executor side: the model loads once per Python worker (`spark_scoring.models.cache`) and
`spark_scoring.batching.score_rows` does the padding-aware packing, OOM back-off, error
isolation and output validation on each Arrow batch.

The scoring counters (batches, tokens, OOM back-offs, model loads) travel with the rows,
not in accumulators (Spark Connect has none): `score(..., stats=True)` adds `STATS_COLUMN`,
set on the first row of each Arrow batch, and `collect_stats` totals it, with the row and
failure counts, in the one action that runs the scoring. The same on classic and Connect
sessions.

Example:
    >>> spec = prepare_model(spark, model_dir=d, model_uri=uri, model_cfg=cfg.model, identity="m1")
    >>> scored = score(df, spec, stats=True).persist()   # df's columns + embedding + error (+ stats)
    >>> stats = collect_stats(scored)                      # runs the scoring once
    >>> stats.rows, stats.padding_efficiency
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import re
import shutil
import tarfile
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, BinaryType, LongType, StringType, StructField, StructType

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
from spark_scoring.lakehouse._partitions import quote_identifier
from spark_scoring.models.tasks import get_task, task_spec
from spark_scoring.session import is_connect, is_local_server

log = logging.getLogger(__name__)

ERROR_COLUMN = "error"
#: The counters column of `score(..., stats=True)`: array<long> in `_STAT_FIELDS` order.
STATS_COLUMN = "_spark_scoring_stats"


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
            resolve the unpacked copy with `SparkFiles.get`, on classic and Connect alike),
            or None when executors read `model_dir` directly (a local master, or a local
            Connect server started by this process).
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
    spark: SparkSession,
    *,
    model_dir: str,
    model_uri: str,
    model_cfg: ModelConfig,
    identity: str,
    ship: bool | None = None,
) -> ModelSpec:
    """Check the model directory on the driver and ship it to the executors.

    The check is cheap (directory exists; its config/MLmodel is readable); the weights
    load on the executors. Where the executors cannot read this machine's files the
    directory is shipped once as one tar archive (`_ship`), unpacked there and found with
    `SparkFiles.get`: a classic session on a non-local master, and a Spark Connect server
    this process did not start. `local[...]` masters and local Connect servers read the
    path directly.

    Args:
        ship: True ships even where the executors could read the path (a Connect server on
            this machine), False never ships; None decides from the session as above.

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
    if ship if ship is not None else _executors_elsewhere(spark):
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


def _executors_elsewhere(spark: SparkSession) -> bool:
    """Whether the executors may not see this machine's files (so the model must ship)."""
    if is_connect(spark):
        return not is_local_server(spark)
    # local, local[4], local[*], local[2,3]: one JVM on this machine. local-cluster[...]
    # starts separate executors, so it ships like a real cluster (and tests that path).
    master = spark.sparkContext.master
    return not (master == "local" or master.startswith("local["))


#: Archives shipped over Spark Connect, per session (Connect has no listArchives).
_shipped: weakref.WeakKeyDictionary[SparkSession, set[str]] = weakref.WeakKeyDictionary()


def _ship(spark: SparkSession, path: Path, model_id: str, model_uri: str) -> str:
    """Pack the model directory into one uncompressed tar and ship it as an archive.

    Classic: `SparkContext.addArchive`. Spark refuses `addFile(local_dir, recursive=True)`
    on a non-local master (UNSUPPORTED_ADD_FILE.LOCAL_DIRECTORY: directories only ship
    from Hadoop file systems), and flat `addFile` per file would clash on names such as
    `config.json` in sub-folders. Spark Connect: `SparkSession.addArtifacts(archive=True)`
    uploads it to the server, into this session's artifacts. Either way an archive keeps
    the layout; each executor fetches and unpacks it once, and `SparkFiles.get(name)` is
    the unpacked directory. The name carries the model id, so two models never clash. The
    tar stays on the driver for the application's life (executors that join later fetch it
    too); it is removed when the driver exits.
    """
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{model_id}-{path.name}") + ".tar"
    if name in _already_shipped(spark):
        return name  # already shipped in this application (Connect: this session)
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
        if is_connect(spark):
            spark.addArtifacts(str(archive), archive=True)
            _shipped.setdefault(spark, set()).add(name)
        else:
            spark.sparkContext.addArchive(str(archive))
    except Exception as exc:
        raise ModelError(
            f"model {model_uri}: could not ship {str(path)!r} to the executors: "
            f"{type(exc).__name__}: {_one_line(exc)}"
        ) from exc
    log.info("shipped model %s to the executors as %s", model_uri, name)
    return name


def _already_shipped(spark: SparkSession) -> set[str]:
    if is_connect(spark):
        return _shipped.get(spark, set())
    return {uri.rstrip("/").rsplit("/", 1)[-1] for uri in spark.sparkContext.listArchives}


def output_fields(spec: ModelSpec) -> list[StructField]:
    """The task's output columns (not `error`, not lineage)."""
    return get_task(spec.task).output_fields(spec.model_dir, spec.options)


@dataclass
class ScoringStats(batching.BatchStats):
    """The counters of one scoring action (`collect_stats`), summed over every task.

    Attributes:
        rows: rows scored; rows_failed: rows with an `error`.
        batches: model calls; real_tokens / padded_tokens: tokens of those batches without
            and with padding (0 for tasks that count no tokens, e.g. pyfunc), whose ratio
            is `padding_efficiency`.
        oom_backoffs: CUDA out-of-memory errors that made a batch split.
        model_loads: models loaded by the Python workers (0 where every worker had it cached).
    """

    model_loads: int = 0

    def __add__(self, other: ScoringStats) -> ScoringStats:
        total = dataclasses.replace(self)
        total.add(other)
        return total

    def as_dict(self) -> dict[str, Any]:
        """Every counter, plus padding_efficiency."""
        return {**dataclasses.asdict(self), "padding_efficiency": self.padding_efficiency}


#: Counted per Arrow batch on the executors (rows and failures are counted from the rows).
_STAT_FIELDS = tuple(name for name in ScoringStats.__dataclass_fields__ if name not in ("rows", "rows_failed"))


def score(df: DataFrame, spec: ModelSpec, *, stats: bool = False) -> DataFrame:
    """Score `df` with the model in `spec`.

    Returns ALL of `df`'s columns unchanged and in order, then the task's output columns,
    then `error` (string; null where the row scored). Lazy: nothing runs until an action.

    Args:
        stats: also return `STATS_COLUMN` (last) for `collect_stats`. Persist the frame
            and select the columns to publish: the stats column is not output data.

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
    added = [
        *output_fields(spec),
        StructField(ERROR_COLUMN, StringType(), nullable=True),
        StructField(STATS_COLUMN, ArrayType(LongType(), containsNull=False), nullable=True),
    ]
    clash = [f.name for f in added if f.name in names]
    if clash:
        raise UsageError(
            f"the data already has column(s) {clash}, which scoring adds; drop or rename them "
            "(or leave them out of source.passthrough)"
        )
    # Strings travel to the Python workers as their bytes (a cast: the bytes are kept as they
    # are) and come back as strings: Arrow -> pandas refuses a whole batch over one value
    # that is not valid UTF-8, so only the model inputs are decoded, row by row (a bad value
    # fails its row: batching.decode_utf8), and every other column returns untouched.
    as_bytes = [f.name for f in df.schema.fields if isinstance(f.dataType, StringType)]
    # Positional names on the way through Python: PySpark's mapInPandas cannot take every
    # legal column name (it fails on a backtick in a name); the task sees the real ones.
    slots = [f"__spark_scoring_{i}" for i in range(len(names))]
    shipped = df.select(*[(_column(c).cast("binary") if c in as_bytes else _column(c)).alias(slot)
                          for c, slot in zip(names, slots, strict=True)])
    schema = StructType([*shipped.schema.fields, *added])
    inputs = {slots[names.index(c)]: c for c in spec.input_columns}
    fn = _make_partition_scorer(spec, [f.name for f in added[:-2]], inputs, [c for c in spec.input_columns if c in as_bytes])
    # mapInPandas rather than a pandas_udf / predict_batch_udf: the task returns several
    # columns plus `error`, the pass-through columns come back in the same rows (no join
    # on a key afterwards), and the whole Arrow batch is in hand to sort by length before
    # packing model batches.
    scored = shipped.mapInPandas(fn, schema)
    scored = scored.select(*[(F.col(slot).cast("string") if c in as_bytes else F.col(slot)).alias(c)
                             for c, slot in zip(names, slots, strict=True)], *[_column(f.name) for f in added])
    return scored if stats else scored.drop(STATS_COLUMN)


def _column(name: str):
    """A column by its exact name (dots, spaces and backticks are part of the name)."""
    return F.col(quote_identifier(name))


def collect_stats(scored: DataFrame) -> ScoringStats:
    """Run `scored` (made by `score(..., stats=True)`) in ONE action and total its counters.

    Persist `scored` first when its rows are used again (the write, the error summary):
    this action then computes and keeps them, and the counters describe exactly the rows
    kept, whatever actions follow.

    Raises:
        UsageError: `scored` has no `STATS_COLUMN` (it was made without `stats=True`).
    """
    if STATS_COLUMN not in scored.columns:
        raise UsageError(f"collect_stats needs the {STATS_COLUMN} column: score the frame with stats=True")
    counters = F.col(STATS_COLUMN)
    row = scored.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count(F.col(ERROR_COLUMN)).alias("rows_failed"),
        *[F.coalesce(F.sum(counters.getItem(i)), F.lit(0)).alias(name) for i, name in enumerate(_STAT_FIELDS)],
    ).collect()[0]
    return ScoringStats(**{name: int(row[name]) for name in ("rows", "rows_failed", *_STAT_FIELDS)})


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


def _make_partition_scorer(spec: ModelSpec, output_names: list[str], inputs: dict[str, str], decode: list[str]):
    # The returned closure is pickled into the Spark job: it only references `spec`
    # (small) and functions of this importable module.
    def score_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        return _score_partition(batches, spec, output_names, inputs, decode)

    return score_partition


def _score_partition(
    batches: Iterator[pd.DataFrame], spec: ModelSpec, output_names: list[str], inputs: dict[str, str], decode: list[str]
) -> Iterator[pd.DataFrame]:
    """Score each Arrow batch; `inputs` maps the batch's positional column names of the model
    inputs to their real names, `decode` names the inputs that arrive as UTF-8 bytes."""
    worker: _Worker | None = None
    try:
        for pdf in batches:
            if pdf.empty:  # nothing to score: an empty partition never loads the model
                yield pdf.assign(**{name: pd.Series(dtype=object) for name in [*output_names, ERROR_COLUMN, STATS_COLUMN]})
                continue
            loads = 0
            if worker is None:
                worker, loaded = _get_worker(spec)
                loads = int(loaded)
                _set_cpu_threads(worker.device)
            model = worker.model
            result = batching.score_rows(
                pdf[list(inputs)].set_axis(list(inputs.values()), axis=1),
                kinds=model.outputs,
                prepare=model.prepare,
                invalid_rows=model.invalid_rows,
                decode=decode,
                max_rows=spec.batch.max_rows,
                max_tokens=spec.batch.budget(model.length_unit),
                sort_by_length=spec.batch.sort_by_length,
                row_overhead=model.row_overhead,
                length_unit=model.length_unit,
                state=worker.backoff,
                on_out_of_memory=worker.empty_cache,
            )
            added = {name: pd.Series(result.outputs[name], index=pdf.index, dtype=object) for name in output_names}
            added[ERROR_COLUMN] = pd.Series(result.errors, index=pdf.index, dtype=object)
            # This batch's counters ride on its first row; collect_stats sums them.
            counts = {**{f: getattr(result.stats, f, 0) for f in _STAT_FIELDS}, "model_loads": loads}
            counters: list[list[int] | None] = [None] * len(pdf)
            counters[0] = [int(counts[f]) for f in _STAT_FIELDS]
            added[STATS_COLUMN] = pd.Series(counters, index=pdf.index, dtype=object)
            yield pd.concat([pdf, pd.DataFrame(added, index=pdf.index)], axis=1)
    except ScoringError as exc:  # a model that fails to load, wrong model output: typed, for the driver
        raise for_executor(exc) from exc


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
