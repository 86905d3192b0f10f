"""The interface every scoring task implements.

A task is two things:

* a `Task` subclass (stateless, used on the driver): its options, its output columns,
  a cheap model check, and `load()`;
* the `LoadedModel` that `load()` returns (lives on the executor, cached per Python
  worker): it says which rows are usable, how long each row is in tokens, and predicts a
  packed batch of rows, returning one value per row for every output column.

Padding-aware packing, OOM back-off, error isolation and output validation are not the
task's business: `spark_scoring.batching` does them for every task alike.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pyspark.sql.types import StructField

from spark_scoring.errors import ModelError

#: How an output column's values are checked after every model batch (see batching.py).
#: "vector": 2-D float array or a sequence of 1-D float arrays; "string"; "double";
#: "map": dict[str, float] per row; "any": trust the model (pyfunc columns are converted
#: to their Spark type by Arrow, which reports what does not fit).
OutputKind = str


@dataclass(frozen=True)
class OptionSpec:
    """One task option: the Python types allowed, a description, and an optional check."""

    types: tuple[type, ...]
    description: str
    check: Callable[[Any], str | None] | None = None  # returns a problem, or None if fine


def positive_int(value: Any) -> str | None:
    return None if value >= 1 else f"must be >= 1, got {value!r}"


def non_negative_int(value: Any) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value!r}"


def positive_number(value: Any) -> str | None:
    return None if value > 0 else f"must be > 0, got {value!r}"


def probability(value: Any) -> str | None:
    return None if 0 < value <= 1 else f"must be in (0, 1], got {value!r}"


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


class LoadedModel(ABC):
    """A model loaded on an executor, ready to predict packed batches.

    Attributes:
        outputs: output column name -> OutputKind, in output order.
        row_overhead: tokens each row costs on top of its input length when packing
            (text-generation adds `max_new_tokens`: the KV cache grows with them).
        length_unit: what `lengths` counts: "tokens" (packed under `model.batch.max_tokens`,
            counted in the padding statistics) or "pixels" (image tasks: decoded width x
            height, packed under `model.batch.max_pixels`).
    """

    outputs: Mapping[str, OutputKind]
    row_overhead: int = 0
    length_unit: str = "tokens"

    def invalid_rows(self, inputs: pd.DataFrame) -> dict[int, str]:
        """Rows that cannot be scored at all (positional index -> error message).

        The default refuses nulls in any input column; those rows get the message as
        their `error` and null predictions, the others still score.
        """
        problems: dict[int, str] = {}
        for col in inputs.columns:
            nulls = np.flatnonzero(inputs[col].isna().to_numpy())
            for i in nulls:
                problems.setdefault(int(i), f"input column {col!r} is null")
        return problems

    def lengths(self, inputs: pd.DataFrame) -> np.ndarray | None:
        """Length of every row in `length_unit` (tokens truncated to the model limit), or None.

        Only called with usable rows. Used for packing; predictions never depend on it.
        """
        return None

    @abstractmethod
    def predict(self, inputs: pd.DataFrame) -> Mapping[str, Any]:
        """Predict a packed batch: output column -> one value per input row."""

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context in which `predict` runs (inference mode; autocast for bf16/fp16)."""
        return contextlib.nullcontext()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free what the model holds (called when the cache evicts it)."""


class TextModel(LoadedModel):
    """A model over one text column with a Hugging Face tokenizer.

    Shares the input checks, the token lengths used for packing and the batch encoding.
    Subclasses set `tokenizer`, `max_length` and `device` when they load.
    """

    tokenizer: Any
    max_length: int
    device: str

    def invalid_rows(self, inputs: pd.DataFrame) -> dict[int, str]:
        return text_invalid_rows(inputs)

    def lengths(self, inputs: pd.DataFrame) -> np.ndarray:
        return text_lengths(self.tokenizer, inputs.iloc[:, 0].tolist(), self.max_length)

    def tokenize(self, inputs: pd.DataFrame) -> Any:
        """The batch as padded, truncated tensors on the model's device."""
        return self.tokenizer(
            inputs.iloc[:, 0].tolist(),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)


class Task(ABC):
    """A scoring task: options, output columns, driver-side check, executor-side load."""

    name: ClassVar[str]
    options: ClassVar[Mapping[str, OptionSpec]] = {}

    @classmethod
    def option_problems(cls, options: Mapping[str, Any]) -> list[str]:
        """Unknown options and bad values, each starting with `model.options.<name>:`."""
        problems = []
        allowed = ", ".join(sorted(cls.options)) or "none"
        for key, value in options.items():
            spec = cls.options.get(key)
            if spec is None:
                problems.append(
                    f"model.options.{key}: unknown option for task {cls.name!r}; allowed options: {allowed}"
                )
                continue
            ok_type = isinstance(value, spec.types) and not (
                isinstance(value, bool) and bool not in spec.types
            )
            if not ok_type:
                want = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in spec.types)
                problems.append(
                    f"model.options.{key}: expected {want} ({spec.description}), got {value!r}"
                )
                continue
            if spec.check is not None:
                problem = spec.check(value)
                if problem:
                    problems.append(f"model.options.{key}: {problem} ({spec.description})")
        return problems

    @classmethod
    def option(cls, options: Mapping[str, Any], name: str, default: Any) -> Any:
        """The value of an option, or its default."""
        value = options.get(name, default)
        return value

    @classmethod
    @abstractmethod
    def output_fields(cls, model_dir: str, options: Mapping[str, Any]) -> list[StructField]:
        """The Spark fields the task adds (not `error` or lineage)."""

    @classmethod
    def check_model(cls, model_dir: str) -> None:
        """Cheap driver-side check that `model_dir` holds a model this task can load.

        Raises:
            Exception: whatever the underlying reader raises; the caller wraps it in a
                ModelError naming the URI.
        """
        from transformers import AutoConfig

        AutoConfig.from_pretrained(model_dir, local_files_only=True)

    @classmethod
    @abstractmethod
    def load(
        cls, model_dir: str, options: Mapping[str, Any], device: str, precision: str
    ) -> LoadedModel:
        """Load the model on this executor (called once per Python worker)."""


# --------------------------------------------------------------------------------------
# Helpers shared by the Hugging Face tasks
# --------------------------------------------------------------------------------------


def autocast_context(device: str, precision: str) -> contextlib.AbstractContextManager:
    """torch.autocast for bf16/fp16, nothing for fp32/auto. fp16 on CPU is refused.

    Raises:
        ModelError: precision fp16 on a CPU device.
    """
    import torch

    if precision in ("auto", "fp32"):
        return contextlib.nullcontext()
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if precision == "fp16" and device_type == "cpu":
        raise ModelError(
            "model.precision: fp16 is not supported on CPU (device "
            f"{device!r}); use fp32 or bf16 on CPU, or run on a CUDA device"
        )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype)


def quiet_transformers() -> None:
    """No per-load progress bars or advisory warnings in executor logs."""
    with contextlib.suppress(Exception):
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def model_max_length(tokenizer: Any, config: Any | None, fallback: int = 512) -> int:
    """The longest input the model takes: the tokenizer's limit unless it is a sentinel."""
    limits = []
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
        limits.append(tok_limit)
    pos = getattr(config, "max_position_embeddings", None) if config is not None else None
    if isinstance(pos, int) and pos > 0:
        limits.append(pos)
    return min(limits) if limits else fallback


def text_lengths(tokenizer: Any, texts: Sequence[str], max_length: int) -> np.ndarray:
    """Token counts with truncation to `max_length` and no padding (one fast-tokenizer call)."""
    if len(texts) == 0:
        return np.zeros(0, dtype=np.int64)
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    return np.fromiter((len(ids) for ids in enc["input_ids"]), dtype=np.int64, count=len(texts))


def text_invalid_rows(inputs: pd.DataFrame) -> dict[int, str]:
    """Nulls and non-string values in the single text column."""
    col = inputs.columns[0]
    problems: dict[int, str] = {}
    values = inputs[col]
    nulls = values.isna().to_numpy()
    for i in np.flatnonzero(nulls):
        problems[int(i)] = f"input column {col!r} is null"
    if values.dtype == object:
        # Cheap vectorised type check; only odd rows pay a Python-level look.
        not_str = ~values.map(type).eq(str).to_numpy() & ~nulls
        for i in np.flatnonzero(not_str):
            problems[int(i)] = (
                f"input column {col!r} is not a string: {type(values.iloc[i]).__name__}"
            )
    return problems
