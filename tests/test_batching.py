"""Padding-aware packing, ordering, OOM back-off, error isolation, output validation.

Plain unit tests: no Spark, no model. Predict functions are small real functions; CUDA
out-of-memory is simulated by raising torch's real `torch.cuda.OutOfMemoryError`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from spark_scoring.batching import (
    BackoffState,
    BatchStats,
    decode_utf8,
    is_out_of_memory,
    plan_batches,
    score_rows,
    validate_outputs,
)
from spark_scoring.errors import ModelError, ModelOutputError

KINDS = {"n": "double", "echo": "string"}


def _frame(texts):
    return pd.DataFrame({"text": list(texts)})


class Recorder:
    """predict fn: n = length of the text, echo = the text; records the batch sizes."""

    def __init__(
        self, oom_above: int | None = None, bad: str | None = None, oom_runtime: bool = False
    ):
        self.calls: list[list[str]] = []
        self.oom_above = oom_above
        self.bad = bad
        self.oom_runtime = oom_runtime

    def __call__(self, rows: pd.DataFrame):
        texts = rows["text"].tolist()
        self.calls.append(texts)
        if self.oom_above is not None and len(texts) > self.oom_above:
            if self.oom_runtime:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if self.bad is not None and self.bad in texts:
            raise ValueError(f"cannot score {self.bad!r}")
        return {"n": np.array([len(t) for t in texts], dtype=np.float64), "echo": texts}


def _lengths(rows: pd.DataFrame) -> np.ndarray:
    return rows["text"].str.len().to_numpy()


# --------------------------------------------------------------------------------------
# plan_batches
# --------------------------------------------------------------------------------------


def test_plan_batches_respects_row_and_token_limits_and_covers_every_row():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=500)
    batches = plan_batches(lengths, max_rows=16, max_tokens=1000)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))
    for b in batches:
        assert 1 <= len(b) <= 16
        assert len(b) * lengths[b].max() <= 1000 or len(b) == 1
    # longest first, so each batch's rows are no longer than the previous batch's
    maxima = [lengths[b].max() for b in batches]
    assert maxima == sorted(maxima, reverse=True)


def test_plan_batches_sorting_reduces_padding():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 300, size=1000)

    def padded(batches):
        return sum(len(b) * lengths[b].max() for b in batches)

    sorted_pad = padded(plan_batches(lengths, max_rows=32, max_tokens=10**9))
    unsorted_pad = padded(
        plan_batches(lengths, max_rows=32, max_tokens=10**9, sort_by_length=False)
    )
    assert lengths.sum() / sorted_pad > 0.95
    assert lengths.sum() / unsorted_pad < 0.65


def test_plan_batches_unsorted_keeps_order_and_oversized_row_gets_its_own_batch():
    lengths = np.array([3, 50, 3, 3])
    batches = plan_batches(lengths, max_rows=10, max_tokens=20, sort_by_length=False)
    assert [b.tolist() for b in batches] == [[0], [1], [2, 3]]
    assert plan_batches(np.array([], dtype=int), max_rows=4, max_tokens=10) == []


def test_plan_batches_docstring_example():
    assert [
        b.tolist() for b in plan_batches(np.array([5, 1, 5, 1]), max_rows=2, max_tokens=100)
    ] == [[0, 2], [1, 3]]


# --------------------------------------------------------------------------------------
# score_rows: order, stats
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_rows,max_tokens", [(1, 10**6), (3, 10**6), (64, 10**6), (64, 40)])
def test_score_rows_restores_original_order_whatever_the_packing(max_rows, max_tokens):
    texts = [f"row {i} " + "x" * ((i * 37) % 23) for i in range(50)]
    rec = Recorder()
    res = score_rows(
        _frame(texts), rec, kinds=KINDS, lengths=_lengths, max_rows=max_rows, max_tokens=max_tokens
    )
    assert res.outputs["echo"] == texts
    assert res.outputs["n"] == [float(len(t)) for t in texts]
    assert res.errors == [None] * 50
    assert all(len(c) <= max_rows for c in rec.calls)
    assert all(len(c) * max(map(len, c)) <= max_tokens or len(c) == 1 for c in rec.calls)
    assert res.stats.batches == len(rec.calls)
    assert res.stats.rows == 50 and res.stats.rows_failed == 0
    assert res.stats.real_tokens == sum(map(len, texts))
    assert res.stats.padded_tokens == sum(len(c) * max(map(len, c)) for c in rec.calls)
    assert 0 < res.stats.padding_efficiency <= 1


def test_score_rows_without_lengths_packs_by_rows_only_and_counts_no_tokens():
    rec = Recorder()
    res = score_rows(_frame([str(i) for i in range(10)]), rec, kinds=KINDS, max_rows=4)
    assert [len(c) for c in rec.calls] == [4, 4, 2]
    assert [c for call in rec.calls for c in call] == [str(i) for i in range(10)]  # order kept
    assert res.stats.padded_tokens == 0 and res.stats.padding_efficiency is None


def test_batch_stats_add():
    a = BatchStats(rows=2, batches=1, real_tokens=3, padded_tokens=4)
    a.add(BatchStats(rows=1, rows_failed=1, real_tokens=1, padded_tokens=4, oom_backoffs=2))
    assert (a.rows, a.rows_failed, a.batches, a.real_tokens, a.padded_tokens, a.oom_backoffs) == (
        3,
        1,
        1,
        4,
        8,
        2,
    )
    assert a.padding_efficiency == 0.5


# --------------------------------------------------------------------------------------
# OOM back-off
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime_error", [False, True])
def test_oom_halves_the_batch_and_remembers_the_limit(runtime_error):
    texts = ["same len"] * 100  # equal lengths: the token limit is a row limit
    rec = Recorder(oom_above=10, oom_runtime=runtime_error)
    state = BackoffState()
    freed = []
    res = score_rows(
        _frame(texts),
        rec,
        kinds=KINDS,
        lengths=_lengths,
        max_rows=64,
        state=state,
        on_out_of_memory=lambda: freed.append(1),
    )
    assert res.errors == [None] * 100
    assert res.outputs["echo"] == texts
    assert res.stats.oom_backoffs >= 1
    assert len(freed) == res.stats.oom_backoffs
    assert state.max_tokens is not None and state.max_tokens <= 10 * len("same len")
    successful = [c for c in rec.calls if len(c) <= 10]
    assert sum(len(c) for c in successful) == 100
    # 64 -> 32 -> 16 -> 8: three back-offs at most, then the learned limit holds
    assert res.stats.oom_backoffs <= 3

    rec2 = Recorder(oom_above=10, oom_runtime=runtime_error)
    res2 = score_rows(_frame(texts), rec2, kinds=KINDS, lengths=_lengths, max_rows=64, state=state)
    assert res2.stats.oom_backoffs == 0, "a later batch must start below the learned limit"
    assert all(len(c) <= 10 for c in rec2.calls)
    assert res2.errors == [None] * 100


def test_row_that_ooms_alone_gets_a_per_row_error():
    texts = ["a", "b", "c"]
    rec = Recorder(oom_above=0)  # even one row is too much
    res = score_rows(_frame(texts), rec, kinds=KINDS, lengths=_lengths, max_rows=8)
    assert res.outputs["echo"] == [None, None, None]
    assert all(e.startswith("OutOfMemoryError: CUDA out of memory") for e in res.errors)
    assert "even for this row alone" in res.errors[0]
    assert res.stats.rows_failed == 3


def test_is_out_of_memory():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


# --------------------------------------------------------------------------------------
# Per-row errors
# --------------------------------------------------------------------------------------


def test_failing_row_is_isolated_by_bisection_and_only_it_gets_the_error():
    texts = [f"t{i}" for i in range(40)]
    texts[17] = "bad"
    rec = Recorder(bad="bad")
    res = score_rows(_frame(texts), rec, kinds=KINDS, lengths=_lengths, max_rows=16)
    assert res.errors[17] == "ValueError: cannot score 'bad'"
    assert [e for i, e in enumerate(res.errors) if i != 17] == [None] * 39
    assert res.outputs["echo"][17] is None
    assert res.outputs["echo"][:17] == texts[:17] and res.outputs["echo"][18:] == texts[18:]
    assert res.stats.rows_failed == 1
    # bisection, not row-by-row: far fewer calls than rows
    assert len(rec.calls) < 20


def test_invalid_rows_get_errors_without_reaching_the_model():
    texts = ["ok", None, "fine"]
    rec = Recorder()

    def invalid(rows):
        return {i: "input column 'text' is null" for i, v in enumerate(rows["text"]) if v is None}

    res = score_rows(
        _frame(texts),
        rec,
        kinds=KINDS,
        lengths=lambda r: r["text"].str.len().to_numpy(),
        invalid_rows=invalid,
    )
    assert res.errors == [None, "input column 'text' is null", None]
    assert res.outputs["echo"] == ["ok", None, "fine"]
    assert sorted(t for c in rec.calls for t in c) == ["fine", "ok"]

    all_bad = score_rows(_frame([None]), rec, kinds=KINDS, invalid_rows=invalid)
    assert all_bad.errors == ["input column 'text' is null"] and all_bad.stats.rows_failed == 1


def test_inputs_shipped_as_bytes_are_decoded_and_invalid_utf8_fails_its_row_only():
    raw = [b"ok", b"bad \xc3\x28 bytes", None, "Zoë 😀".encode(), b"\xff"]
    rec = Recorder()

    def invalid(rows):
        return {i: "input column 'text' is null" for i, v in enumerate(rows["text"]) if v is None}

    res = score_rows(_frame(raw), rec, kinds=KINDS, lengths=_lengths, invalid_rows=invalid, decode=["text"])
    assert res.outputs["echo"] == ["ok", None, None, "Zoë 😀", None]
    assert res.errors[0] is None and res.errors[3] is None
    assert res.errors[1] == ("input column 'text' is not valid UTF-8 text (invalid continuation byte: byte(s) c3 "
                             "at offset 4 of 12); fix or remove the value in the source table")
    assert res.errors[2] == "input column 'text' is null"  # a null is a null, not a decoding error
    assert res.errors[4].startswith("input column 'text' is not valid UTF-8 text (invalid start byte: byte(s) ff at offset 0")
    assert res.stats.rows_failed == 3
    assert sorted(t for c in rec.calls for t in c) == ["Zoë 😀", "ok"]  # the model saw only text


def test_decode_utf8_leaves_other_columns_and_the_frame_alone():
    frame = pd.DataFrame({"a": [b"x", b"\xc3"], "b": [b"\xc3", b"y"]}, index=[7, 9])
    decoded, errors = decode_utf8(frame, ["a"])
    assert decoded["a"].tolist() == ["x", None] and decoded["b"].tolist() == [b"\xc3", b"y"]
    assert list(decoded.index) == [7, 9] and set(errors) == {1}  # positional, like invalid_rows
    assert frame["a"].tolist() == [b"x", b"\xc3"]  # the caller's frame is not changed
    assert decode_utf8(frame, []) == (frame, {})


def test_scoring_error_from_predict_fails_the_batch_instead_of_per_row_errors():
    def predict(rows):
        raise ModelError("model.precision: fp16 is not supported on CPU")

    with pytest.raises(ModelError, match="fp16"):
        score_rows(_frame(["a", "b"]), predict, kinds=KINDS)


# --------------------------------------------------------------------------------------
# Output validation
# --------------------------------------------------------------------------------------


def test_wrong_number_of_outputs_is_a_model_output_error():
    def short(rows):
        return {"n": np.zeros(len(rows) - 1), "echo": ["x"] * (len(rows) - 1)}

    with pytest.raises(ModelOutputError, match=r"model output 'n': expected 3 outputs, got 2"):
        score_rows(_frame(["a", "b", "c"]), short, kinds=KINDS, max_rows=8)


def test_validate_outputs_checks_columns_and_types():
    with pytest.raises(ModelOutputError, match=r"expected columns \['n', 'echo'\]"):
        validate_outputs({"n": [1.0]}, 1, KINDS)
    with pytest.raises(ModelOutputError, match="expected a string per row, got int"):
        validate_outputs({"n": [1.0], "echo": [3]}, 1, KINDS)
    with pytest.raises(ModelOutputError, match="expected a number per row, got str"):
        validate_outputs({"n": ["x"], "echo": ["a"]}, 1, KINDS)
    with pytest.raises(ModelOutputError, match="expected a 2-D float array"):
        validate_outputs({"v": np.zeros(3)}, 3, {"v": "vector"})
    with pytest.raises(ModelOutputError, match="expected a mapping"):
        validate_outputs(["not", "a", "mapping"], 3, KINDS)
    out = validate_outputs({"v": np.ones((2, 4), dtype=np.float64)}, 2, {"v": "vector"})
    assert len(out["v"]) == 2 and out["v"][0].dtype == np.float32 and out["v"][0].shape == (4,)
    ok = validate_outputs({"n": np.array([1, 2]), "echo": ["a", None]}, 2, KINDS)
    assert ok == {"n": [1.0, 2.0], "echo": ["a", None]}
    longs = validate_outputs(
        {"k": [np.int64(3), None], "b": [True, np.bool_(False)]}, 2, {"k": "long", "b": "bool"}
    )
    assert longs == {"k": [3, None], "b": [True, False]}
