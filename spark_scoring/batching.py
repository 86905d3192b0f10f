"""Padding-aware packing, OOM back-off, per-row error isolation and output validation.

Pure Python/numpy (torch only to recognise CUDA out-of-memory), so all of it is tested
without Spark. `udf.py` calls `score_rows` once per Arrow batch on the executors.

How one chunk of rows (an Arrow batch) is scored:

1. inputs that arrive as UTF-8 bytes (`decode`: Spark strings travel to the Python
   workers as their bytes) are decoded row by row; a value that is not valid UTF-8 fails
   its row only. Rows the model cannot take at all (null input, not a string, not valid
   UTF-8) get an error at once;
2. the others are prepared once (`prepare`: a text model tokenizes them all in one call
   and says each row's token length), ordered by length, longest first (the first batch
   is the largest in padded tokens, so a CUDA OOM shows up early and the learned limit
   then holds for the rest), and packed greedily: a batch closes at `max_rows` rows or when
   rows x longest row would exceed `max_tokens`;
3. each batch is predicted and its output validated (as many values as rows, the
   declared type); a CUDA OOM halves the batch and remembers the limit in `BackoffState`
   (which lives with the cached model, so later batches and tasks start below it); any
   other exception bisects the batch until the failing rows are alone, and only they get
   the error (`"<ExceptionType>: <message>"`);
4. results go back into the original row order.

Predictions never depend on the packing: padded positions are masked by the models.

Example:
    >>> result = score_rows(df[["text"]], kinds=model.outputs, prepare=model.prepare,
    ...                     invalid_rows=model.invalid_rows, max_rows=64, max_tokens=16384)
    >>> result.outputs["embedding"][0], result.errors[0], result.stats.model_ns
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from spark_scoring.errors import ModelOutputError, ScoringError

log = logging.getLogger(__name__)

#: A predict function: the packed rows (a DataFrame of the input columns) -> column -> values.
PredictFn = Callable[[pd.DataFrame], Mapping[str, Any]]


class PreparedRows(Protocol):
    """What a `prepare` function returns for a chunk's usable rows (the models'
    `LoadedModel.prepare` returns `models.tasks.base.Prepared`, which fits this).

    Attributes:
        lengths: each row's length (None: every row costs 1).
        predict: row positions into the chunk's usable rows -> column -> one value per row.
    """

    @property
    def lengths(self) -> np.ndarray | None: ...

    @property
    def predict(self) -> Callable[[np.ndarray], Mapping[str, Any]]: ...


_MAX_ERROR_CHARS = 2000


@dataclass
class BatchStats:
    """Counters for one or more `score_rows` calls (udf.collect_stats sums them over the tasks).

    Times are integer nanoseconds (`time.perf_counter_ns`), so sums over tasks are exact:
    `prepare_ns` is spent decoding, checking and preparing (tokenizing) the rows,
    `model_ns` inside the model's predict calls (retries after an OOM or a failing row
    included). Summed over tasks that run side by side, they can exceed the wall time.
    """

    rows: int = 0
    rows_failed: int = 0
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    oom_backoffs: int = 0
    prepare_ns: int = 0
    model_ns: int = 0

    def add(self, other: BatchStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def padding_efficiency(self) -> float | None:
        """real / padded tokens of the batches that ran; None when no tokens were counted."""
        return self.real_tokens / self.padded_tokens if self.padded_tokens else None

    @property
    def prepare_seconds(self) -> float:
        """`prepare_ns` in seconds."""
        return self.prepare_ns / 1e9

    @property
    def model_seconds(self) -> float:
        """`model_ns` in seconds."""
        return self.model_ns / 1e9


@dataclass
class BackoffState:
    """What CUDA out-of-memory errors taught: the largest padded-token batch that is safe.

    Kept with the cached model so that later Arrow batches, tasks and stages start below
    the limit instead of hitting the OOM again.
    """

    max_tokens: int | None = None

    def learn(self, padded_tokens: int) -> None:
        limit = max(1, padded_tokens)
        self.max_tokens = limit if self.max_tokens is None else min(self.max_tokens, limit)


@dataclass
class ScoredRows:
    """Outputs of `score_rows`, in the original row order.

    Attributes:
        outputs: column -> list with one value per input row (None where the row failed).
        errors: one entry per row: None when it scored, else the message.
        stats: counters for this call.
    """

    outputs: dict[str, list[Any]]
    errors: list[str | None]
    stats: BatchStats = field(default_factory=BatchStats)


def plan_batches(
    lengths: np.ndarray,
    *,
    max_rows: int,
    max_tokens: int,
    sort_by_length: bool = True,
) -> list[np.ndarray]:
    """Pack row positions into batches of at most `max_rows` rows and `max_tokens` padded tokens.

    Padded tokens of a batch = rows x longest row. A row longer than `max_tokens` on its
    own still gets a batch (of one). With `sort_by_length`, rows are taken longest first
    (stable for equal lengths); otherwise in their given order.

    Args:
        lengths: token length of each row (what the row costs in a padded batch).
        max_rows: most rows in a batch (>= 1).
        max_tokens: most padded tokens in a batch (>= 1).
        sort_by_length: order rows by length before packing.

    Returns:
        Arrays of row positions, one per batch; every position appears exactly once.

    Example:
        >>> plan_batches(np.array([5, 1, 5, 1]), max_rows=2, max_tokens=100)
        [array([0, 2]), array([1, 3])]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if n == 0:
        return []
    max_rows = max(1, int(max_rows))
    max_tokens = max(1, int(max_tokens))
    order = np.argsort(-lengths, kind="stable") if sort_by_length else np.arange(n)
    ordered = lengths[order]
    batches: list[np.ndarray] = []
    start = 0
    longest = 0
    # One pass; a few hundred ns per row, negligible next to the model.
    for pos in range(n):
        rows = pos - start
        new_longest = max(longest, int(ordered[pos]))
        if rows and (rows >= max_rows or (rows + 1) * new_longest > max_tokens):
            batches.append(order[start:pos])
            start, new_longest = pos, int(ordered[pos])
        longest = new_longest
    batches.append(order[start:])
    return batches


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a CUDA out-of-memory error (torch's class, or a RuntimeError that says so)."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def validate_outputs(outputs: Any, n: int, kinds: Mapping[str, str]) -> dict[str, list[Any]]:
    """Check one model output batch and turn it into column -> list of n row values.

    Kinds: "vector" (2-D float array, or n 1-D float arrays/lists), "double" (numbers),
    "long" (integers), "bool", "string" (str), "map" (mapping per row), "any" (length
    only). None (null) is accepted for every kind but "vector".

    Raises:
        ModelOutputError: a missing column, the wrong number of values ("expected N
            outputs, got M"), or values of the wrong type.
    """
    if not isinstance(outputs, Mapping):
        raise ModelOutputError(
            f"model output: expected a mapping of column -> values for columns {list(kinds)}, "
            f"got {type(outputs).__name__}"
        )
    missing = [c for c in kinds if c not in outputs]
    if missing:
        raise ModelOutputError(
            f"model output: expected columns {list(kinds)}, got {list(outputs)} (missing {missing})"
        )
    result: dict[str, list[Any]] = {}
    for col, kind in kinds.items():
        values = outputs[col]
        try:
            m = len(values)
        except TypeError:
            raise ModelOutputError(
                f"model output {col!r}: expected {n} outputs, got a {type(values).__name__} without a length"
            ) from None
        if m != n:
            raise ModelOutputError(f"model output {col!r}: expected {n} outputs, got {m}")
        result[col] = _check_kind(col, kind, values)
    return result


def _check_kind(col: str, kind: str, values: Any) -> list[Any]:
    if kind == "vector":
        if isinstance(values, np.ndarray):
            if values.ndim != 2 or not np.issubdtype(values.dtype, np.floating):
                raise ModelOutputError(
                    f"model output {col!r}: expected a 2-D float array (rows x dims), "
                    f"got a {values.ndim}-D {values.dtype} array"
                )
            return list(values.astype(np.float32, copy=False))
        rows = []
        for v in values:
            arr = np.asarray(v, dtype=np.float32) if v is not None else None
            if arr is None or arr.ndim != 1:
                raise ModelOutputError(
                    f"model output {col!r}: expected a 1-D float vector per row, got {v!r:.80}"
                )
            rows.append(arr)
        return rows
    if kind == "double":
        if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "fiu":
            return values.astype(np.float64).tolist()
        return _check_scalars(col, values, (float, int, np.floating, np.integer), "a number", float)
    if kind == "long":
        if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "iu":
            return values.astype(np.int64).tolist()
        return _check_scalars(col, values, (int, np.integer), "an integer", int)
    if kind == "bool":
        return _check_scalars(col, values, (bool, np.bool_), "true/false", bool)
    if kind == "string":
        return _check_scalars(col, values, (str,), "a string", None)
    if kind == "map":
        return _check_scalars(col, values, (Mapping,), "a mapping", None)
    if kind == "any":
        return list(values)
    raise ValueError(f"unknown output kind {kind!r}")  # our own invariant, not user input


def _check_scalars(
    col: str, values: Any, types: tuple[type, ...], what: str, convert: Any
) -> list[Any]:
    # None is a valid (null) value; a NaN float stays NaN (Arrow writes it as NaN).
    out = list(values)
    for i, v in enumerate(out):
        if v is None:
            continue
        if not isinstance(v, types) or (convert is not bool and isinstance(v, (bool, np.bool_))):
            raise ModelOutputError(
                f"model output {col!r}: expected {what} per row, got {type(v).__name__} {v!r:.80}"
            )
        if convert is not None:
            out[i] = convert(v)
    return out


def decode_utf8(inputs: pd.DataFrame, columns: Sequence[str]) -> tuple[pd.DataFrame, dict[int, str]]:
    """`inputs` with `columns` (values as UTF-8 bytes) decoded into str, row by row.

    Spark hands a string column to Python as text only when every value of the Arrow batch
    is valid UTF-8 (one bad value fails the whole batch), so the scoring UDF ships strings
    as their bytes and decodes the model inputs here: a value that is not valid UTF-8
    becomes None, and its row gets the error returned for it.

    Returns:
        (the decoded inputs, positional index -> error message).
    """
    if not columns or inputs.empty:
        return inputs, {}
    decoded = inputs.copy(deep=False)
    errors: dict[int, str] = {}
    for column in columns:
        values = decoded[column].tolist()
        for i, value in enumerate(values):
            if isinstance(value, (bytes, bytearray, memoryview)):
                try:
                    values[i] = bytes(value).decode("utf-8")
                except UnicodeDecodeError as exc:
                    values[i] = None
                    errors.setdefault(i, _not_utf8(column, exc))
        decoded[column] = pd.Series(values, index=decoded.index, dtype=object)
    return decoded, errors


def _not_utf8(column: str, exc: UnicodeDecodeError) -> str:
    raw = bytes(exc.object)
    bad = raw[exc.start : min(exc.end, exc.start + 4)].hex(" ")
    return (
        f"input column {column!r} is not valid UTF-8 text ({exc.reason}: byte(s) {bad} at "
        f"offset {exc.start} of {len(raw)}); fix or remove the value in the source table"
    )


def score_rows(
    inputs: pd.DataFrame,
    predict: PredictFn | None = None,
    *,
    kinds: Mapping[str, str],
    prepare: Callable[[pd.DataFrame], PreparedRows] | None = None,
    lengths: np.ndarray | Callable[[pd.DataFrame], np.ndarray | None] | None = None,
    invalid_rows: Callable[[pd.DataFrame], Mapping[int, str]] | None = None,
    decode: Sequence[str] = (),
    max_rows: int = 64,
    max_tokens: int = 16384,
    sort_by_length: bool = True,
    row_overhead: int = 0,
    length_unit: str = "tokens",
    state: BackoffState | None = None,
    on_out_of_memory: Callable[[], None] | None = None,
) -> ScoredRows:
    """Score a chunk of rows in padding-aware batches, isolating per-row failures.

    Args:
        inputs: the input columns, one row per row to score.
        predict: packed rows -> column -> one value per row (when `prepare` is not given).
        kinds: output column -> kind checked by `validate_outputs`.
        prepare: the usable rows -> `PreparedRows` (their lengths and a predict function
            by row position), called once per call: what a model computes once for all
            rows (tokens) is not computed again per batch. Replaces `predict` and `lengths`.
        lengths: token length per row, or a function of the usable rows giving it; None
            means every row costs 1 token (non-text models: only `max_rows` packs).
        invalid_rows: usable-row check: positional index -> error message.
        decode: input columns holding UTF-8 bytes, decoded first (`decode_utf8`).
        max_rows: most rows per model batch.
        max_tokens: the length budget: most padded tokens (rows x longest) per model
            batch, or, for `length_unit` "pixels", most rows x largest decoded image.
        sort_by_length: order rows by length before packing.
        row_overhead: tokens added to every row's length when packing (not in stats).
        length_unit: what `lengths` counts: "tokens" (counted in `real_tokens` /
            `padded_tokens`) or "pixels" (image tasks: packs alike, not counted as tokens).
        state: OOM back-off memory shared across calls (with the cached model).
        on_out_of_memory: called after a CUDA OOM (e.g. torch.cuda.empty_cache).

    Returns:
        ScoredRows in the original order.

    Raises:
        ModelOutputError: a model batch had the wrong length or type (a model bug: the
            whole job fails rather than publish misaligned predictions).
        ScoringError: raised by `predict` for a reason that is not row-specific.
    """
    if (predict is None) == (prepare is None):
        raise TypeError("score_rows takes exactly one of predict and prepare")
    started = time.perf_counter_ns()
    n = len(inputs)
    state = state if state is not None else BackoffState()
    stats = BatchStats(rows=n)
    outputs: dict[str, list[Any]] = {col: [None] * n for col in kinds}
    errors: list[str | None] = [None] * n

    inputs, undecodable = decode_utf8(inputs, decode)
    bad = dict(invalid_rows(inputs)) if invalid_rows is not None and n else {}
    bad.update(undecodable)  # said first: the null left in their place is not the reason
    for i, message in bad.items():
        errors[i] = message
    usable = (
        np.array([i for i in range(n) if i not in bad], dtype=np.int64) if bad else np.arange(n)
    )
    if len(usable) == 0:
        stats.rows_failed = sum(e is not None for e in errors)
        stats.prepare_ns = time.perf_counter_ns() - started
        return ScoredRows(outputs, errors, stats)
    usable_inputs = inputs.iloc[usable] if bad else inputs

    if prepare is not None:
        prepared = prepare(usable_inputs)
        lens, predict_at = prepared.lengths, prepared.predict
    else:
        if callable(lengths):
            lens = lengths(usable_inputs)
        elif lengths is not None:
            lens = np.asarray(lengths, dtype=np.int64)[usable]
        else:
            lens = None

        def predict_at(idx: np.ndarray) -> Mapping[str, Any]:
            return predict(usable_inputs.iloc[idx])
    counted = lens is not None and length_unit == "tokens"
    lens = (
        np.ones(len(usable), dtype=np.int64) if lens is None else np.asarray(lens, dtype=np.int64)
    )
    if len(lens) != len(usable):
        raise ModelOutputError(f"token lengths: expected {len(usable)} lengths, got {len(lens)}")
    cost = lens + int(row_overhead)

    stats.prepare_ns = time.perf_counter_ns() - started

    def padded(idx: np.ndarray) -> int:
        return len(idx) * int(cost[idx].max())

    def run(idx: np.ndarray) -> None:
        # idx: positions into `usable`.
        if state.max_tokens is not None and len(idx) > 1 and padded(idx) > state.max_tokens:
            per = max(1, state.max_tokens // int(cost[idx].max()))
            for start in range(0, len(idx), per):
                run(idx[start : start + per])
            return
        begin = time.perf_counter_ns()
        try:
            try:
                raw = predict_at(idx)
            finally:
                stats.model_ns += time.perf_counter_ns() - begin
            values = validate_outputs(raw, len(idx), kinds)
        except (ModelOutputError, ScoringError):
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
                if on_out_of_memory is not None:
                    on_out_of_memory()
                if len(idx) == 1:
                    errors[int(usable[idx[0]])] = _message(
                        exc, "out of memory even for this row alone"
                    )
                    return
                stats.oom_backoffs += 1
                half = (len(idx) + 1) // 2
                state.learn(half * int(cost[idx].max()))
                log.warning(
                    "CUDA out of memory on %d rows; retrying in halves (limit %s tokens)",
                    len(idx),
                    state.max_tokens,
                )
            elif len(idx) == 1:
                errors[int(usable[idx[0]])] = _message(exc)
                return
            else:
                half = (len(idx) + 1) // 2
            run(idx[:half])
            run(idx[half:])
            return
        stats.batches += 1
        if counted:
            stats.real_tokens += int(lens[idx].sum())
            stats.padded_tokens += len(idx) * int(lens[idx].max())
        rows = usable[idx]
        for col, vals in values.items():
            out = outputs[col]
            for r, v in zip(rows.tolist(), vals, strict=True):
                out[r] = v

    limit = max_tokens if state.max_tokens is None else min(max_tokens, state.max_tokens)
    for batch in plan_batches(
        cost, max_rows=max_rows, max_tokens=limit, sort_by_length=sort_by_length
    ):
        run(batch)
    stats.rows_failed = sum(e is not None for e in errors)
    return ScoredRows(outputs, errors, stats)


def _message(exc: BaseException, note: str | None = None) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if note:
        text = f"{text} ({note})"
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."
