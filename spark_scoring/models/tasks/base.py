"""The interface every scoring task implements.

A task is two things:

* a `Task` subclass (stateless, used on the driver): its options, its output columns,
  a cheap model check, and `load()`;
* the `LoadedModel` that `load()` returns (lives on the executor, cached per Python
  worker): it says which rows are usable, prepares a chunk of rows once (`prepare`: text
  models tokenize the whole chunk in one call), says how long each row is in tokens, and
  predicts a packed batch of those rows, returning one value per row for every output
  column.

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


@dataclass(frozen=True)
class Prepared:
    """A chunk of usable rows after the work done once per chunk (`LoadedModel.prepare`).

    `batching.score_rows` packs the rows by `lengths` and calls `predict` once per model
    batch with the batch's row positions (into the chunk).

    Attributes:
        lengths: each row's length in the model's `length_unit`, or None (every row costs 1).
        predict: row positions (an int array) -> output column -> one value per row.
    """

    lengths: np.ndarray | None
    predict: Callable[[np.ndarray], Mapping[str, Any]]


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

    def prepare(self, inputs: pd.DataFrame) -> Prepared:
        """The usable rows of a chunk, ready to be predicted in batches by position.

        The default measures `lengths` and predicts `inputs.iloc[positions]`; text models
        tokenize the chunk once here instead of once for the lengths and again per batch.
        """
        return Prepared(self.lengths(inputs), lambda positions: self.predict(inputs.iloc[positions]))

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context in which `predict` runs (inference mode; autocast for bf16/fp16)."""
        return contextlib.nullcontext()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free what the model holds (called when the cache evicts it)."""


class TextModel(LoadedModel):
    """A model over one text column with a Hugging Face tokenizer.

    Shares the input checks, the tokenizing (once per chunk: `prepare` tokenizes every row
    in one call, padded to the chunk's longest row, and each model batch is a slice of
    those tensors) and the batch encoding. Subclasses set `tokenizer`, `max_length` and
    `device` when they load, and implement `forward` on the tokenized batch.
    """

    tokenizer: Any
    max_length: int
    device: str

    def invalid_rows(self, inputs: pd.DataFrame) -> dict[int, str]:
        return text_invalid_rows(inputs)

    def lengths(self, inputs: pd.DataFrame) -> np.ndarray:
        return text_lengths(self.tokenizer, inputs.iloc[:, 0].tolist(), self.max_length)

    def tokenize(self, inputs: pd.DataFrame) -> Any:
        """The rows as padded, truncated tensors on the CPU (one tokenizer call)."""
        return self.tokenizer(
            inputs.iloc[:, 0].tolist(),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )

    @abstractmethod
    def forward(self, features: Mapping[str, Any]) -> Mapping[str, Any]:
        """Predict a tokenized batch (`tokenize`'s tensors for some rows, on the model's
        device): output column -> one value per row."""

    def predict(self, inputs: pd.DataFrame) -> Mapping[str, Any]:
        return self.forward(to_device(self.tokenize(inputs), self.device))

    def prepare(self, inputs: pd.DataFrame) -> Prepared:
        batches = TokenBatches(self.tokenize(inputs))
        return Prepared(
            batches.lengths, lambda positions: self.forward(to_device(batches.take(positions), self.device))
        )


class TokenBatches:
    """A chunk tokenized once, padded to its longest row, cut into model batches by position.

    A batch is the chunk's tensors at the batch's rows, cut to the columns where any of
    those rows has a token (`attention_mask`): exactly what tokenizing those rows alone
    would give, right- or left-padded, since padding only fills a row beyond its tokens.
    Everything else in the features (a modality name, a prompt length) is passed as it is.

    Attributes:
        lengths: tokens per row (the attention mask's sum: truncated, special tokens in).
    """

    def __init__(self, features: Mapping[str, Any]):
        mask = features["attention_mask"]
        self.features = features
        self.rows, self.width = int(mask.shape[0]), int(mask.shape[1])
        self.mask = mask.bool()
        self.lengths = self.mask.sum(dim=1).numpy().astype(np.int64)

    def take(self, positions: np.ndarray) -> dict[str, Any]:
        """The features of the rows at `positions`, cut to the columns they use."""
        import torch

        idx = torch.from_numpy(np.asarray(positions, dtype=np.int64))
        used = self.mask.index_select(0, idx).any(dim=0).nonzero().flatten()
        lo, hi = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 0)
        batch: dict[str, Any] = {}
        for name, value in self.features.items():
            if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == self.rows:
                value = value.index_select(0, idx)
                if value.dim() >= 2 and value.shape[1] == self.width:
                    value = value[:, lo:hi]
            batch[name] = value
        return batch

    @staticmethod
    def fits(features: Any) -> bool:
        """Whether `features` has the per-row, padded layout this class slices."""
        import torch

        mask = features.get("attention_mask") if isinstance(features, Mapping) else None
        return isinstance(mask, torch.Tensor) and mask.dim() == 2


def to_device(features: Mapping[str, Any], device: str) -> dict[str, Any]:
    """`features` with every tensor moved to `device` (other values as they are)."""
    import torch

    return {
        name: value.to(device) if isinstance(value, torch.Tensor) else value
        for name, value in features.items()
    }


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

    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if precision in ("auto", "fp32"):
        return contextlib.nullcontext()
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
