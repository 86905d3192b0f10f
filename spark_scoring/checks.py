"""Checks a run makes before it scores anything: schemas and keys.

Each check fails with `SchemaDriftError` (exit code 1, nothing published) listing every
problem it found, in words a user can act on.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, BinaryType, DataType, MapType, StringType, StructType

from spark_scoring.config import JobConfig, task_output_columns
from spark_scoring.contract import FIXED_COLUMNS, INPUT_HASH
from spark_scoring.errors import SchemaDriftError
from spark_scoring.models.tasks import task_spec

#: The Spark types a task's `model.input` column may have, per input kind (None: any).
_INPUT_TYPES: dict[str, tuple[tuple[type[DataType], ...], str] | None] = {
    "text": ((StringType,), "a string column"),
    "image": ((BinaryType, StringType), "a binary column of encoded images or a string column of image paths"),
    "columns": None,
}


def passthrough_columns(cfg: JobConfig) -> list[str]:
    """Columns copied from the source to the output unchanged: key, partition, passthrough."""
    return list(dict.fromkeys([cfg.source.key, *cfg.source.partition_by, *cfg.source.passthrough]))


def source_columns(cfg: JobConfig) -> list[str]:
    """Every source column a run reads: the passthrough columns and the model inputs."""
    return list(dict.fromkeys([*passthrough_columns(cfg), *cfg.model.input]))


def check_source_schema(cfg: JobConfig, schema: StructType, partition_cols: Sequence[str]) -> None:
    """Fail before any work when the source lost a column or changed a type."""
    fields = {f.name: f.dataType for f in schema.fields}
    problems = []
    needed = [("source.key", cfg.source.key), *[("model.input", c) for c in cfg.model.input]]
    needed += [("source.partition_by", c) for c in cfg.source.partition_by]
    needed += [("source.passthrough", c) for c in cfg.source.passthrough]
    for where, col in needed:
        if col not in fields:
            problems.append(f"{where}: column {col!r} is not in the source table (columns: {', '.join(fields)})")
    allowed = _INPUT_TYPES[task_spec(cfg.model.task).input_kind]
    if allowed is not None:
        types, words = allowed
        for col in cfg.model.input:
            if col in fields and not isinstance(fields[col], types):
                problems.append(
                    f"model.input: column {col!r} has type {fields[col].simpleString()}, "
                    f"task {cfg.model.task!r} needs {words}"
                )
    key_type = fields.get(cfg.source.key)
    if isinstance(key_type, (ArrayType, StructType, MapType)):
        problems.append(f"source.key: column {cfg.source.key!r} has type {key_type.simpleString()}; a key must be a scalar")
    if list(partition_cols) != list(cfg.source.partition_by):
        problems.append(
            f"source.partition_by: the config says {list(cfg.source.partition_by)} but the table is "
            f"partitioned by {list(partition_cols)}; set source.partition_by to {list(partition_cols)}"
        )
    if problems:
        raise SchemaDriftError(
            f"source table {cfg.source.table!r} does not match the job config (nothing was scored or published):\n  - "
            + "\n  - ".join(problems)
        )


def check_output_schema(
    cfg: JobConfig, source_schema: StructType, output_schema: StructType, task_outputs: Sequence[str] | None = None
) -> None:
    """Fail when the output's columns no longer follow the job config and the source: a
    passthrough column added to (or dropped from) the config since the output was written,
    or one whose type changed in the source.

    Args:
        task_outputs: the task's output columns; None: from the task registry (a pyfunc
            model's come from its signature: without them, extra columns are not checked).
    """
    src = {f.name: f.dataType for f in source_schema.fields}
    out = {f.name: f.dataType for f in output_schema.fields}
    problems = []
    for col in passthrough_columns(cfg):
        if col not in out:
            problems.append(f"column {col!r} is missing from the output table (added to the job config since the "
                            "output was written?)")
        elif src.get(col) is not None and out[col] != src[col]:
            problems.append(f"column {col!r} is {src[col].simpleString()} in the source but {out[col].simpleString()} in the output")
    outputs = task_outputs if task_outputs is not None else task_output_columns(cfg.model.task, cfg.model.options)
    if outputs is not None:
        expected = {*passthrough_columns(cfg), *outputs, *FIXED_COLUMNS}
        for col in out:
            if col not in expected:
                problems.append(f"column {col!r} is in the output table but not in the job config (source.key, "
                                "source.partition_by, source.passthrough) nor an output of task "
                                f"{cfg.model.task!r} (dropped from source.passthrough since the output was written?)")
    if INPUT_HASH not in out:
        problems.append(f"column {INPUT_HASH!r} is missing: the output table was not written by spark-scoring")
    if problems:
        raise SchemaDriftError(
            f"output table {cfg.output.table!r} no longer matches the job config and the source:\n  - "
            + "\n  - ".join(problems)
            + "\nNothing was published. Run with --full-refresh to rebuild the output with the columns the job "
            "config names now (or restore the config the output was written with)."
        )


def check_unique_keys(cfg: JobConfig, rows: DataFrame, everywhere: DataFrame | None = None) -> None:
    """Every key of `rows` is non-null and appears once in the whole source.

    Args:
        rows: the source rows a run publishes.
        everywhere: the key column of the whole source when `rows` are only some of it.
    """
    key = cfg.source.key
    keys = rows.select(key)
    if everywhere is not None:  # count the affected keys over the whole table
        keys = everywhere.join(rows.select(key).distinct(), key, "left_semi")
    bad = keys.groupBy(key).count().filter((F.col("count") > 1) | F.col(key).isNull()).limit(5).collect()
    if bad:
        sample = ", ".join(f"{r[key]!r} x{r['count']}" for r in bad)
        raise SchemaDriftError(
            f"source.key: {key!r} is not a unique, non-null key in {cfg.source.table!r} (e.g. {sample}). "
            "Each row must have its own key so it is scored and published exactly once; fix the source or "
            "choose another key column. Nothing was published."
        )


def check_new_keys(cfg: JobConfig, rows: DataFrame, existing: DataFrame | None) -> None:
    """The keys of `rows`, new to the part of the table a run reads, are nowhere else.

    Args:
        rows: source rows whose keys the output does not hold where the run looked.
        existing: keys the output holds elsewhere that could be the same (None: none).
    """
    if existing is None:
        return
    key = cfg.source.key
    quoted = F.col(f"`{key.replace('`', '``')}`")
    clash = rows.select(quoted).join(existing, key, "left_semi").limit(5).collect()
    if clash:
        sample = ", ".join(f"{r[0]!r} x2" for r in clash)
        raise SchemaDriftError(
            f"source.key: {key!r} is not a unique, non-null key in {cfg.source.table!r} (e.g. {sample}): rows "
            "added or changed since the last run have keys other rows of the table still hold. Each row must "
            "have its own key so it is scored and published exactly once; fix the source or choose another key "
            "column. Nothing was published."
        )
