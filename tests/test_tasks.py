"""Each task, loaded for real and run through `batching.score_rows` with different packings,
against the same model run directly, one text at a time. No Spark here."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import torch

from spark_scoring.batching import score_rows
from spark_scoring.config import config_from_dict
from spark_scoring.errors import ConfigError, ModelError
from spark_scoring.models.tasks import (
    TASK_NAMES,
    TASK_SPECS,
    HfDirectory,
    TaskSpec,
    get_task,
    or_list,
    task_option_problems,
    task_spec,
)
from tests.tiny_models import LABELS, SAMPLE_TEXTS, TINY_MAX_POSITIONS, tiny_models  # noqa: F401

PACKINGS = [(1, 16384), (3, 16384), (64, 16384), (64, 70)]


def _run(model, texts, max_rows, max_tokens, column="text"):
    frame = pd.DataFrame({column: list(texts)})
    return score_rows(
        frame,
        kinds=model.outputs,
        prepare=model.prepare,  # what the UDF calls: each chunk tokenized once
        invalid_rows=model.invalid_rows,
        max_rows=max_rows,
        max_tokens=max_tokens,
        row_overhead=model.row_overhead,
    )


# --------------------------------------------------------------------------------------
# Registry and options
# --------------------------------------------------------------------------------------


def test_registry_lists_every_task_once():
    assert TASK_NAMES == (
        "embedding", "text-classification", "text-generation", "image-classification", "image-embedding", "pyfunc",
    )
    for name in TASK_NAMES:
        assert get_task(name).name == name
    with pytest.raises(KeyError, match="unknown task 'nope'; known tasks: embedding"):
        get_task("nope")


def test_registry_entries_say_everything_about_a_task():
    assert [s.name for s in TASK_SPECS] == list(TASK_NAMES)
    assert {n: task_spec(n).input_kind for n in TASK_NAMES} == {
        "embedding": "text", "text-classification": "text", "text-generation": "text",
        "image-classification": "image", "image-embedding": "image", "pyfunc": "columns",
    }
    assert [n for n in TASK_NAMES if task_spec(n).single_column] == [
        "embedding", "text-classification", "text-generation", "image-classification", "image-embedding",
    ]
    emb = task_spec("embedding")
    assert emb.flavors == ("sentence_transformers", "transformers")
    assert emb.pipeline_tasks == ("feature-extraction", "sentence-similarity")
    assert (emb.hf_directory.log_as, emb.hf_directory.refuse_generative) == ("feature-extraction", True)
    assert task_spec("text-classification").hf_directory.architectures == ("ForSequenceClassification",)
    assert task_spec("text-generation").hf_directory.architectures == ("ForCausalLM", "LMHeadModel")
    assert task_spec("pyfunc").flavors == ("python_function",) and task_spec("pyfunc").hf_directory is None
    for spec in TASK_SPECS:
        assert spec.load() is get_task(spec.name)
        assert spec.target.endswith(":" + get_task(spec.name).__name__)
    with pytest.raises(KeyError, match="unknown task 'image-captioning'; known tasks: embedding, text-classification"):
        task_spec("image-captioning")
    with pytest.raises(AttributeError):
        emb.name = "x"  # frozen


def test_registry_refuses_inconsistent_entries():
    """An entry added for a new task is checked when the registry is imported."""
    with pytest.raises(ValueError, match="input_kind 'audio' is not one of"):
        TaskSpec(name="t", target="m:C", input_kind="audio", flavors=("python_function",))
    with pytest.raises(ValueError, match=r"flavors \('onnx',\) must be some of"):
        TaskSpec(name="t", target="m:C", input_kind="image", flavors=("onnx",))
    with pytest.raises(ValueError, match="pipeline_tasks are needed exactly for the transformers flavour"):
        TaskSpec(name="t", target="m:C", input_kind="image", flavors=("transformers",))
    with pytest.raises(ValueError, match="hf_directory.log_as must be one of its pipeline_tasks"):
        TaskSpec(
            name="t", target="m:C", input_kind="image", flavors=("transformers",),
            pipeline_tasks=("image-classification",), hf_directory=HfDirectory(log_as="x", needs="y"),
        )


def test_or_list():
    assert or_list([]) == "none"
    assert or_list(["pyfunc"]) == "'pyfunc'"
    assert or_list(TASK_NAMES[:3]) == "'embedding', 'text-classification' or 'text-generation'"


def test_registry_and_config_import_no_model_libraries():
    """Parsing a config (or printing --help) must not import torch, transformers or pyspark."""
    import subprocess
    import sys

    code = (
        "import sys; import spark_scoring.config, spark_scoring.cli, spark_scoring.models.tasks as t; "
        "t.task_spec('embedding'); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'pyspark', 'mlflow'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_task_option_problems():
    assert task_option_problems("embedding", {}) == []
    assert (
        task_option_problems(
            "text-generation",
            {
                "max_new_tokens": 8,
                "do_sample": True,
                "seed": 3,
                "temperature": 0.7,
                "top_p": 0.9,
                "top_k": 5,
            },
        )
        == []
    )
    problems = task_option_problems(
        "text-generation",
        {"max_new_tokens": "8", "top_p": 1.5, "beam": 2, "do_sample": 1, "seed": -1},
    )
    assert len(problems) == 5
    assert all(p.startswith("model.options.") for p in problems)
    text = "\n".join(problems)
    assert "model.options.max_new_tokens: expected an integer" in text
    assert "model.options.top_p: must be in (0, 1], got 1.5" in text
    assert (
        "model.options.beam: unknown option for task 'text-generation'; allowed options: do_sample, max_new_tokens"
        in text
    )
    assert "model.options.do_sample: expected true or false" in text
    assert "model.options.seed: must be >= 0" in text
    assert task_option_problems("text-classification", {"return_all_scores": "yes"}) == [
        "model.options.return_all_scores: expected true or false (also output `scores`, a map label -> "
        "score over all classes), got 'yes'"
    ]
    assert task_option_problems("embedding", {"normalize": True})[0].startswith(
        "model.options.normalize: unknown option for task 'embedding'; allowed options: none"
    )
    assert task_option_problems("text-generation", {"max_new_tokens": True})[0].startswith(
        "model.options.max_new_tokens: expected an integer"
    )


def test_config_reports_option_problems_with_the_others():
    raw = {
        "name": "j",
        "source": {"table": "/s", "key": "id"},
        "model": {
            "uri": "/m",
            "task": "text-generation",
            "input": "text",
            "options": {"max_new_tokens": 0},
        },
        "output": {"table": "/o"},
    }
    with pytest.raises(ConfigError, match=r"model.options.max_new_tokens: must be >= 1, got 0"):
        config_from_dict(raw)


# --------------------------------------------------------------------------------------
# embedding
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return get_task("embedding").load(minilm_dir, {}, "cpu", "fp32")


@functools.cache
def _encode_one_by_one(model_dir):
    from sentence_transformers import SentenceTransformer

    ref_model = SentenceTransformer(model_dir, device="cpu")
    return np.stack([ref_model.encode([t], show_progress_bar=False)[0] for t in SAMPLE_TEXTS])


@pytest.mark.parametrize("max_rows,max_tokens", PACKINGS)
def test_embedding_sentence_transformers_equals_encode_one_by_one(
    minilm, minilm_dir, max_rows, max_tokens
):
    expected = _encode_one_by_one(minilm_dir)
    res = _run(minilm, SAMPLE_TEXTS, max_rows, max_tokens)
    assert res.errors == [None] * len(SAMPLE_TEXTS)
    got = np.stack(res.outputs["embedding"])
    assert got.shape == (len(SAMPLE_TEXTS), 384)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # the Normalize module ran
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_embedding_lengths_are_truncated_to_the_model_limit(minilm):
    lengths = minilm.lengths(pd.DataFrame({"text": ["word " * 1000, "", "hi"]}))
    assert lengths.tolist() == [256, 2, 3]


@functools.cache
def _hf(model_dir, kind):
    """(tokenizer, model) loaded directly with transformers, once per directory."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = getattr(transformers, kind).from_pretrained(model_dir).eval()
    return tok, model


@functools.cache
def _mean_pool_direct(model_dir, text):
    tok, model = _hf(model_dir, "AutoModel")
    enc = tok([text], truncation=True, max_length=TINY_MAX_POSITIONS, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state[0]
    return hidden.mean(dim=0).numpy()


@pytest.mark.parametrize("max_rows,max_tokens", PACKINGS)
def test_embedding_mean_pooling_for_plain_transformers(tiny_models, max_rows, max_tokens):  # noqa: F811
    model = get_task("embedding").load(tiny_models.bert_mean, {}, "cpu", "auto")
    res = _run(model, SAMPLE_TEXTS, max_rows, max_tokens)
    assert res.errors == [None] * len(SAMPLE_TEXTS)
    expected = np.stack([_mean_pool_direct(tiny_models.bert_mean, t) for t in SAMPLE_TEXTS])
    np.testing.assert_allclose(np.stack(res.outputs["embedding"]), expected, atol=1e-4)
    assert max(model.lengths(pd.DataFrame({"text": SAMPLE_TEXTS}))) == TINY_MAX_POSITIONS


def test_embedding_uses_sentence_transformers_modules_when_present(tiny_models):  # noqa: F811
    """The tiny ST model pools CLS and normalises: not the mean pooling of the plain dir."""
    from sentence_transformers import SentenceTransformer

    st_model = get_task("embedding").load(tiny_models.bert_st, {}, "cpu", "fp32")
    plain = get_task("embedding").load(tiny_models.bert_mean, {}, "cpu", "fp32")
    texts = SAMPLE_TEXTS[:6]
    got = np.stack(_run(st_model, texts, 3, 16384).outputs["embedding"])
    expected = SentenceTransformer(tiny_models.bert_st, device="cpu").encode(
        texts, show_progress_bar=False
    )
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    mean = np.stack(_run(plain, texts, 3, 16384).outputs["embedding"])
    assert not np.allclose(mean / np.linalg.norm(mean, axis=1, keepdims=True), got, atol=1e-3)


def test_embedding_null_and_non_string_inputs_get_row_errors(minilm):
    res = _run(minilm, ["ok", None, 42, "fine"], 64, 16384)
    assert res.errors[0] is None and res.errors[3] is None
    assert res.errors[1] == "input column 'text' is null"
    assert res.errors[2] == "input column 'text' is not a string: int"
    assert res.outputs["embedding"][1] is None and res.outputs["embedding"][2] is None


def test_fp16_on_cpu_is_refused_with_a_clear_error(minilm_dir):
    with pytest.raises(ModelError, match="fp16 is not supported on CPU"):
        get_task("embedding").load(minilm_dir, {}, "cpu", "fp16")


def test_bf16_on_cpu_runs_under_autocast(minilm, minilm_dir):
    model = get_task("embedding").load(minilm_dir, {}, "cpu", "bf16")
    texts = SAMPLE_TEXTS[:4]
    got = np.stack(_run(model, texts, 64, 16384).outputs["embedding"])
    ref = np.stack(_run(minilm, texts, 64, 16384).outputs["embedding"])
    assert got.dtype == np.float32
    # bf16 keeps ~3 significant digits: close to fp32, but not equal
    cos = (got * ref).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert (cos > 0.99).all()


# --------------------------------------------------------------------------------------
# text-classification
# --------------------------------------------------------------------------------------


@functools.cache
def _logits_direct(model_dir, text):
    tok, model = _hf(model_dir, "AutoModelForSequenceClassification")
    enc = tok([text], truncation=True, max_length=TINY_MAX_POSITIONS, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits[0]


@pytest.mark.parametrize("max_rows,max_tokens", PACKINGS)
def test_classification_single_label_softmax(tiny_models, max_rows, max_tokens):  # noqa: F811
    model = get_task("text-classification").load(
        tiny_models.classifier, {"return_all_scores": True}, "cpu", "auto"
    )
    res = _run(model, SAMPLE_TEXTS, max_rows, max_tokens)
    assert res.errors == [None] * len(SAMPLE_TEXTS)
    for i, text in enumerate(SAMPLE_TEXTS):
        probs = torch.softmax(_logits_direct(tiny_models.classifier, text), dim=-1).numpy()
        top = int(probs.argmax())
        assert res.outputs["label"][i] == LABELS[top]
        assert res.outputs["score"][i] == pytest.approx(float(probs[top]), abs=1e-4)
        scores = res.outputs["scores"][i]
        assert set(scores) == set(LABELS.values())
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
        for k, label in LABELS.items():
            assert scores[label] == pytest.approx(float(probs[k]), abs=1e-4)


def test_classification_multi_label_uses_sigmoid(tiny_models):  # noqa: F811
    model = get_task("text-classification").load(tiny_models.classifier_multi, {}, "cpu", "auto")
    assert "scores" not in model.outputs
    texts = SAMPLE_TEXTS[:5]
    res = _run(model, texts, 2, 16384)
    for i, text in enumerate(texts):
        probs = torch.sigmoid(_logits_direct(tiny_models.classifier_multi, text)).numpy()
        top = int(probs.argmax())
        assert res.outputs["label"][i] == LABELS[top]
        assert res.outputs["score"][i] == pytest.approx(float(probs[top]), abs=1e-4)


# --------------------------------------------------------------------------------------
# text-generation
# --------------------------------------------------------------------------------------


@functools.cache
def _generate_direct(model_dir, text, max_new_tokens):
    tok, model = _hf(model_dir, "AutoModelForCausalLM")
    limit = TINY_MAX_POSITIONS * 2 - max_new_tokens
    ids = tok([text], truncation=True, max_length=limit)["input_ids"][0] or [tok.bos_token_id]
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.eos_token_id,
        )
    return tok.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
@pytest.mark.parametrize("max_rows,max_tokens", [(1, 16384), (3, 16384), (64, 16384), (64, 200)])
def test_generation_greedy_equals_generate_one_by_one(tiny_models, which, max_rows, max_tokens):  # noqa: F811
    model_dir = getattr(tiny_models, which)
    model = get_task("text-generation").load(model_dir, {"max_new_tokens": 6}, "cpu", "auto")
    assert model.tokenizer.padding_side == "left" and model.tokenizer.pad_token is not None
    res = _run(model, SAMPLE_TEXTS, max_rows, max_tokens)
    assert res.errors == [None] * len(SAMPLE_TEXTS)
    expected = [_generate_direct(model_dir, t, 6) for t in SAMPLE_TEXTS]
    assert res.outputs["generated_text"] == expected
    assert any(len(t) > 0 for t in expected)


def test_generation_sampling_is_seeded(tiny_models):  # noqa: F811
    opts = {"max_new_tokens": 8, "do_sample": True, "seed": 7, "temperature": 1.5, "top_k": 50}
    model = get_task("text-generation").load(tiny_models.gpt2, opts, "cpu", "auto")
    texts = SAMPLE_TEXTS[:6]
    first = _run(model, texts, 3, 16384).outputs["generated_text"]
    again = _run(model, texts, 3, 16384).outputs["generated_text"]
    assert first == again
    other = get_task("text-generation").load(tiny_models.gpt2, {**opts, "seed": 8}, "cpu", "auto")
    assert _run(other, texts, 3, 16384).outputs["generated_text"] != first
    greedy = get_task("text-generation").load(
        tiny_models.gpt2, {"max_new_tokens": 8}, "cpu", "auto"
    )
    assert _run(greedy, texts, 3, 16384).outputs["generated_text"] != first


# --------------------------------------------------------------------------------------
# pyfunc
# --------------------------------------------------------------------------------------


def test_pyfunc_outputs_follow_the_signature_and_bad_rows_are_isolated(tiny_models):  # noqa: F811
    task = get_task("pyfunc")
    fields = task.output_fields(tiny_models.pyfunc, {})
    assert [(f.name, f.dataType.simpleString()) for f in fields] == [
        ("total", "double"),
        ("tag", "string"),
    ]
    model = task.load(tiny_models.pyfunc, {}, "cpu", "auto")
    frame = pd.DataFrame({"a": [1.0, 2.5, None, 4.0, 5.0], "b": ["x", "boom", "z", None, "w"]})
    res = score_rows(
        frame, model.predict, kinds=model.outputs, invalid_rows=model.invalid_rows, max_rows=2
    )
    assert res.outputs["total"] == [2.0, None, None, None, 10.0]
    assert res.outputs["tag"] == ["X", None, None, None, "W"]
    assert res.errors[1] == "ValueError: boom is not allowed"
    assert res.errors[2] == "input column 'a' is null"
    assert res.errors[3] == "input column 'b' is null"
    assert res.errors[0] is None and res.errors[4] is None


def test_pyfunc_single_unnamed_output_is_prediction(tiny_models):  # noqa: F811
    task = get_task("pyfunc")
    assert [f.name for f in task.output_fields(tiny_models.pyfunc_unnamed, {})] == ["prediction"]
    model = task.load(tiny_models.pyfunc_unnamed, {}, "cpu", "auto")
    res = score_rows(
        pd.DataFrame({"a": [1.0, 2.0, 3.0]}), model.predict, kinds=model.outputs, max_rows=2
    )
    assert res.outputs["prediction"] == [2.0, 3.0, 4.0]


def test_pyfunc_check_model_refuses_non_mlflow_dirs(tiny_models, tmp_path):  # noqa: F811
    with pytest.raises(FileNotFoundError, match="no MLmodel file"):
        get_task("pyfunc").check_model(str(tmp_path))
    get_task("pyfunc").check_model(tiny_models.pyfunc)
