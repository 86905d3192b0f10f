"""Task `pyfunc`: any MLflow pyfunc model.

The model is loaded with `mlflow.pyfunc.load_model(model_dir)` and called with a pandas
DataFrame of the configured input columns (`model.input`, one or several), `max_rows`
rows at a time (no token lengths: packing is by rows only).

Output columns come from the model signature's outputs: each named `ColSpec` becomes a
column of the matching Spark type (string, double, float, long, integer, boolean,
binary, datetime, or an array of one of these); a single unnamed output becomes column
`prediction`; a single tensor output of shape (-1,) or (-1, k) becomes `prediction`
(a scalar or an array per row). A model without an output signature is refused on the
driver: log it with `signature=infer_signature(...)`.

Rows with a null in a required input column (every ColSpec is required unless logged
with `required=False`) get an error and are not sent to the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DataType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
)

from spark_scoring.errors import ModelOutputError
from spark_scoring.models.tasks.base import LoadedModel, Task

UNNAMED_OUTPUT = "prediction"


class PyfuncTask(Task):
    """Any MLflow pyfunc model; output columns from its signature."""

    name = "pyfunc"
    options = {}

    @classmethod
    def check_model(cls, model_dir: str) -> None:
        _output_specs(model_dir)

    @classmethod
    def output_fields(cls, model_dir: str, options: Mapping[str, Any]) -> list[StructField]:
        return [StructField(name, dtype, True) for name, dtype in _output_specs(model_dir)]

    @classmethod
    def load(
        cls, model_dir: str, options: Mapping[str, Any], device: str, precision: str
    ) -> LoadedModel:
        return _PyfuncModel(model_dir)


def _read_signature(model_dir: str) -> Any:
    from mlflow.models import Model

    mlmodel = Path(model_dir) / "MLmodel"
    if not mlmodel.is_file():
        raise FileNotFoundError(
            f"no MLmodel file in {model_dir!r}; is this an MLflow model directory?"
        )
    model = Model.load(str(mlmodel))
    if "python_function" not in model.flavors:
        raise ValueError(
            f"the model has no python_function flavor (flavors: {sorted(model.flavors)})"
        )
    return model.signature


def _output_specs(model_dir: str) -> list[tuple[str, DataType]]:
    """(column, Spark type) per model output, from the signature."""
    signature = _read_signature(model_dir)
    if signature is None or signature.outputs is None:
        raise ValueError(
            "the pyfunc model has no output signature, so its output columns are unknown; log it "
            "with signature=mlflow.models.infer_signature(example_input, example_output)"
        )
    outputs = signature.outputs
    if outputs.is_tensor_spec():
        specs = outputs.inputs
        if len(specs) != 1:
            raise ValueError(
                f"only a single tensor output is supported, the signature has {len(specs)}"
            )
        spec = specs[0]
        base = _numpy_to_spark(spec.type)
        shape = tuple(spec.shape)
        if len(shape) == 1:
            return [(spec.name or UNNAMED_OUTPUT, base)]
        if len(shape) == 2:
            return [(spec.name or UNNAMED_OUTPUT, ArrayType(base))]
        raise ValueError(f"tensor output of shape {shape} is not supported; use (-1,) or (-1, k)")
    specs = outputs.inputs
    if len(specs) == 1 and specs[0].name is None:
        return [(UNNAMED_OUTPUT, _mlflow_to_spark(specs[0].type))]
    unnamed = [i for i, s in enumerate(specs) if s.name is None]
    if unnamed:
        raise ValueError("several outputs must all be named in the signature")
    return [(str(s.name), _mlflow_to_spark(s.type)) for s in specs]


def _mlflow_to_spark(tp: Any) -> DataType:
    from mlflow.types.schema import Array
    from mlflow.types.schema import DataType as MlflowType

    if isinstance(tp, MlflowType):
        return tp.to_spark()
    if isinstance(tp, Array):
        return ArrayType(_mlflow_to_spark(tp.dtype))
    raise ValueError(
        f"output type {tp!r} is not supported; supported: string, double, float, long, integer, "
        "boolean, binary, datetime and arrays of these"
    )


def _numpy_to_spark(dtype: np.dtype) -> DataType:
    dtype = np.dtype(dtype)
    mapping = {
        "f": {4: FloatType(), 8: DoubleType()},
        "i": {1: IntegerType(), 2: IntegerType(), 4: IntegerType(), 8: LongType()},
        "b": {1: BooleanType()},
    }
    try:
        return mapping[dtype.kind][dtype.itemsize]
    except KeyError:
        raise ValueError(f"tensor output dtype {dtype} is not supported") from None


def _kind(dtype: DataType) -> str:
    if isinstance(dtype, StringType):
        return "string"
    if isinstance(dtype, (DoubleType, FloatType)):
        return "double"
    if isinstance(dtype, (LongType, IntegerType)):
        return "long"
    if isinstance(dtype, BooleanType):
        return "bool"
    return "any"


class _PyfuncModel(LoadedModel):
    def __init__(self, model_dir: str):
        import mlflow.pyfunc

        self.specs = _output_specs(model_dir)
        self.outputs = {name: _kind(dtype) for name, dtype in self.specs}
        self.model = mlflow.pyfunc.load_model(model_dir)
        signature = self.model.metadata.get_input_schema()
        self.optional_inputs: set[str] = set()
        if signature is not None and not signature.is_tensor_spec() and signature.has_input_names():
            self.optional_inputs = {str(s.name) for s in signature.inputs if not s.required}

    def invalid_rows(self, inputs: pd.DataFrame) -> dict[int, str]:
        problems: dict[int, str] = {}
        for col in inputs.columns:
            if col in self.optional_inputs:
                continue
            for i in np.flatnonzero(inputs[col].isna().to_numpy()):
                problems.setdefault(int(i), f"input column {col!r} is null")
        return problems

    def predict(self, inputs: pd.DataFrame) -> Mapping[str, Any]:
        result = self.model.predict(inputs.reset_index(drop=True))
        return _to_columns(result, [name for name, _ in self.specs])


def _to_columns(result: Any, names: list[str]) -> Mapping[str, Any]:
    """Model result (DataFrame, Series, array, list, dict) -> output column -> values.

    Raises:
        ModelOutputError: the result does not have the signature's columns.
    """
    if isinstance(result, pd.DataFrame):
        if len(names) == 1 and names[0] not in result.columns and result.shape[1] == 1:
            return {names[0]: result.iloc[:, 0].tolist()}
        missing = [n for n in names if n not in result.columns]
        if missing:
            raise ModelOutputError(
                f"model output: expected columns {names} (from the signature), got {list(result.columns)}"
            )
        return {n: result[n].tolist() for n in names}
    if isinstance(result, Mapping):
        return {n: result[n] for n in names if n in result}
    if len(names) != 1:
        raise ModelOutputError(
            f"model output: expected a DataFrame with columns {names} (from the signature), got {type(result).__name__}"
        )
    if isinstance(result, pd.Series):
        return {names[0]: result.tolist()}
    if isinstance(result, np.ndarray):
        return {names[0]: result.tolist() if result.ndim == 1 else [row.tolist() for row in result]}
    return {names[0]: result}
