"""Typed errors crossing from executors to the driver: `errors.for_executor` / `from_spark`.

The tag on its own first, then the real boundaries: a scoring task (mapInPandas, through
`udf.score`), a write task and the commit of the delta-rs data source. In each, Spark hands
the driver its own exception; `from_spark` must rebuild our class with our message.
"""

from __future__ import annotations

import json
import textwrap

import deltalake
import pyarrow as pa
import pytest

from spark_scoring import udf
from spark_scoring.config import ModelConfig
from spark_scoring.errors import (
    ConcurrentRunError,
    ConfigError,
    LakehouseError,
    ModelError,
    ModelOutputError,
    ScoringError,
    TableNotFoundError,
    UsageError,
    for_executor,
    from_spark,
)
from spark_scoring.lakehouse._delta_rs import DATA_SOURCE_NAME, activate, register_data_source

# --------------------------------------------------------------------------- the tag


def test_for_executor_keeps_the_class_and_makes_one_tagged_line():
    tagged = for_executor(ConcurrentRunError("output table 't' moved\n   from version 0 to 1"))
    assert type(tagged) is ConcurrentRunError
    assert str(tagged) == "[spark_scoring:ConcurrentRunError] output table 't' moved from version 0 to 1"
    assert str(for_executor(tagged)) == str(tagged)  # tagged once, however often it is passed on

    # ConfigError is built from a list of problems: UsageError (same exit code) carries it.
    config = for_executor(ConfigError(["model.uri: missing"]))
    assert type(config) is UsageError and config.exit_code == 2
    assert str(config) == "[spark_scoring:UsageError] 1 problem(s) in the job config: - model.uri: missing"

    class ElsewhereError(LakehouseError):  # a class the driver cannot look up by name
        pass

    assert str(for_executor(ElsewhereError("x"))) == "[spark_scoring:LakehouseError] x"


def test_from_spark_recognises_output_errors_in_spark_text():
    text = (
        "An exception was thrown from the Python worker.\nTraceback (most recent call last):\n  ...\n"
        "spark_scoring.errors.ModelOutputError: [spark_scoring:ModelOutputError] model output "
        "'embedding': expected 4 outputs, got 3\n"
        "\tat org.apache.spark.api.python...\n"
    )
    err = from_spark(RuntimeError(text))
    assert type(err) is ModelOutputError
    assert str(err) == "model output 'embedding': expected 4 outputs, got 3"


def test_from_spark_follows_causes_and_falls_back_to_scoring_error():
    try:
        try:
            raise RuntimeError("Job aborted\n[spark_scoring:TableNotFoundError] no Delta table at '/x'\n\tat ...")
        except RuntimeError as inner:
            raise ValueError("An error occurred while calling o42.save") from inner
    except ValueError as outer:
        found = from_spark(outer)
    assert type(found) is TableNotFoundError and str(found) == "no Delta table at '/x'"

    newer = from_spark(RuntimeError("[spark_scoring:ErrorOfANewerRelease] the executors run newer code"))
    assert type(newer) is ScoringError and str(newer) == "the executors run newer code"
    not_ours = from_spark(RuntimeError("[spark_scoring:ValueError] a name that is not a ScoringError"))
    assert type(not_ours) is ScoringError
    assert from_spark(ValueError("unrelated")) is None
    on_the_driver = ModelError("raised on the driver")
    assert from_spark(on_the_driver) is on_the_driver


# --------------------------------------------------------------------------- real Spark tasks

_SHORT_PYFUNC = textwrap.dedent(
    """
    import mlflow


    class OneShort(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return (model_input["a"] + 1.0).iloc[:-1]  # one value too few: a model bug


    mlflow.models.set_model(OneShort())
    """
)


def _one_short_pyfunc(tmp_path) -> str:
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    code = tmp_path / "one_short.py"
    code.write_text(_SHORT_PYFUNC, encoding="utf-8")
    signature = ModelSignature(inputs=Schema([ColSpec("double", "a")]), outputs=Schema([ColSpec("double")]))
    dest = tmp_path / "one_short"
    mlflow.pyfunc.save_model(str(dest), python_model=str(code), signature=signature)
    return str(dest)


def test_a_model_output_error_in_a_scoring_task_comes_back_typed(spark, tmp_path):
    model_dir = _one_short_pyfunc(tmp_path)
    cfg = ModelConfig(uri=f"file://{model_dir}", task="pyfunc", input=("a",), device="cpu")
    spec = udf.prepare_model(spark, model_dir=model_dir, model_uri=cfg.uri, model_cfg=cfg, identity="one-short")
    df = spark.createDataFrame([(1.0,), (2.0,), (3.0,)], "a double").coalesce(1)  # one task, one batch
    name = udf.output_fields(spec)[0].name
    with pytest.raises(Exception) as info:
        udf.score(df, spec).collect()
    assert not isinstance(info.value, ScoringError)  # Spark's exception: ours is only text in it
    err = from_spark(info.value)
    assert type(err) is ModelOutputError
    assert str(err) == f"model output {name!r}: expected 3 outputs, got 2"


def _seeded(path: str, versions: int) -> str:
    """A table partitioned by day at version `versions - 1` (one row per commit)."""
    for i in range(versions):
        deltalake.write_deltalake(path, pa.table({"id": pa.array([i], pa.int64()), "day": [f"d{i}"]}),
                                  partition_by=["day"], mode="append")
    return path


def _failed_write(spark, path: str, row: tuple, **options: str) -> ScoringError | None:
    """Write `row` straight through the data source (no Lakehouse.write checks); the error
    the driver gets, as `from_spark` reads it."""
    register_data_source(spark)
    activate(spark)
    rows = spark.createDataFrame([row], "id long, day string")
    options = {"path": path, "table_name": path, "partition_by": json.dumps(["day"]), "write_id": "w-1", **options}
    with pytest.raises(Exception) as info:
        rows.write.format(DATA_SOURCE_NAME).options(**options).mode("append").save()
    assert not isinstance(info.value, ScoringError)  # Spark's exception: ours is only text in it
    return from_spark(info.value)


def test_a_lakehouse_error_in_a_write_task_comes_back_typed(spark, tmp_path):
    path = _seeded(str(tmp_path / "tbl"), versions=1)
    err = _failed_write(spark, path, (9, "b"), mode="replace_partitions",
                        partitions=json.dumps([{"day": "d0"}]), expected_version="0")
    assert type(err) is LakehouseError
    assert str(err) == (
        "a row of partition {'day': 'b'} falls outside the partitions being replaced [{'day': 'd0'}]; "
        "replace_partitions only writes rows of the partitions it replaces: add the partition to "
        "`partitions` or filter the rows"
    )


def test_a_concurrent_run_error_in_the_commit_comes_back_typed(spark, tmp_path):
    path = _seeded(str(tmp_path / "tbl"), versions=2)
    err = _failed_write(spark, path, (9, "d0"), mode="append", expected_version="0")  # the table is at 1
    assert type(err) is ConcurrentRunError
    assert str(err) == (
        f"output table {path!r} moved from version 0 to 1 while this run was running; another run "
        "committed; rerun"
    )
    assert deltalake.DeltaTable(path).version() == 1
