"""score() on a real local Spark session, for every task, against direct computation."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid

import numpy as np
import pandas as pd
import pytest
import torch
from pyspark.sql import Row

from spark_scoring import udf
from spark_scoring.config import BatchConfig, ModelConfig
from spark_scoring.errors import ModelError, SchemaDriftError, UsageError, from_spark
from tests.tiny_models import LABELS, SAMPLE_TEXTS, tiny_models  # noqa: F401


def _spec(
    spark,
    model_dir,
    task,
    *,
    inputs=("text",),
    options=None,
    batch=None,
    device="cpu",
    precision="auto",
    identity=None,
):
    cfg = ModelConfig(
        uri=f"file://{model_dir}",
        task=task,
        input=tuple(inputs),
        options=options or {},
        batch=batch or BatchConfig(),
        device=device,
        precision=precision,
    )
    return udf.prepare_model(
        spark,
        model_dir=model_dir,
        model_uri=cfg.uri,
        model_cfg=cfg,
        identity=identity or f"test-{uuid.uuid4().hex[:8]}",
    )


def _text_df(spark, texts):
    rows = [
        (
            i,
            t,
            i * 10 if i % 3 else None,
            dt.datetime(2024, 1, 1 + i % 28, 12, 0),
            [f"tag{i}"],
            i / 7,
        )
        for i, t in enumerate(texts)
    ]
    return spark.createDataFrame(
        rows, "id long, text string, n long, ts timestamp, tags array<string>, x double"
    )


@pytest.fixture(scope="module")
def minilm_ref(minilm_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_dir, device="cpu")


def test_prepare_model_local_master_uses_the_path(spark, minilm_dir):
    spec = _spec(spark, minilm_dir, "embedding")
    assert spec.shipped_name is None
    assert spec.model_dir.endswith("model")
    assert [f.name for f in udf.output_fields(spec)] == ["embedding"]
    assert udf.output_fields(spec)[0].dataType.simpleString() == "array<float>"


def test_embedding_scores_every_row_keeps_columns_and_matches_encode(spark, minilm_dir, minilm_ref):
    texts = [
        *SAMPLE_TEXTS,
        None,
        *[f"sentence number {i} about spark and delta" for i in range(20)],
    ]
    df = _text_df(spark, texts)
    spec = _spec(spark, minilm_dir, "embedding", batch=BatchConfig(max_rows=8, max_tokens=600))
    out = udf.score(df, spec)
    assert out.columns == [*df.columns, "embedding", "error"]
    assert out.schema.fields[: len(df.columns)] == df.schema.fields
    rows = sorted(out.collect(), key=lambda r: r.id)
    originals = sorted(df.collect(), key=lambda r: r.id)
    assert len(rows) == len(texts)
    for row, orig in zip(rows, originals, strict=True):
        assert tuple(row)[: len(df.columns)] == tuple(orig)  # pass-through unchanged
    failed = [r for r in rows if r.error is not None]
    assert [(r.text, r.error, r.embedding) for r in failed] == [
        (None, "input column 'text' is null", None)
    ]
    ok = [r for r in rows if r.error is None]
    expected = minilm_ref.encode([r.text for r in ok], show_progress_bar=False)
    np.testing.assert_allclose(np.array([r.embedding for r in ok]), expected, atol=1e-4)



def test_stats_come_back_with_the_scoring_action(spark, minilm_dir):
    # The counters ride on the rows (no accumulators): collect_stats runs the scoring once
    # and totals them with the rows and failures, and equal the batches computed directly.
    from spark_scoring import batching
    from spark_scoring.models.tasks import get_task

    texts = [*SAMPLE_TEXTS, None, *[f"sentence number {i} about spark and delta" for i in range(20)]]
    df = _text_df(spark, texts).coalesce(1)  # one Arrow batch: the same packing as below
    batch = BatchConfig(max_rows=8, max_tokens=600)
    spec = _spec(spark, minilm_dir, "embedding", batch=batch)
    with_stats = udf.score(df, spec, stats=True)
    assert with_stats.columns == [*df.columns, "embedding", "error", udf.STATS_COLUMN]
    stats = udf.collect_stats(with_stats)

    model = get_task("embedding").load(minilm_dir, {}, "cpu", "auto")
    direct = batching.score_rows(
        pd.DataFrame({"text": texts}), model.predict, kinds=model.outputs, lengths=model.lengths,
        invalid_rows=model.invalid_rows, max_rows=8, max_tokens=600, row_overhead=model.row_overhead,
        length_unit=model.length_unit,
    ).stats
    assert (stats.rows, stats.rows_failed) == (len(texts), 1)
    assert (stats.batches, stats.real_tokens, stats.padded_tokens) == (
        direct.batches, direct.real_tokens, direct.padded_tokens)
    assert stats.batches >= (len(texts) - 1) // 8 and stats.oom_backoffs == 0
    assert 0 < stats.real_tokens <= stats.padded_tokens
    assert stats.padding_efficiency == pytest.approx(stats.real_tokens / stats.padded_tokens)
    assert stats.as_dict()["padding_efficiency"] == stats.padding_efficiency
    assert stats.model_loads <= 1  # this worker may hold the model from an earlier test

    with pytest.raises(UsageError, match="collect_stats needs the _spark_scoring_stats column"):
        udf.collect_stats(udf.score(df, spec))


def _python_workers() -> int:
    """Python worker processes (and daemons) under this test process's Spark JVM."""
    import psutil

    count = 0
    for proc in psutil.Process().children(recursive=True):
        try:
            count += "pyspark.daemon" in " ".join(proc.cmdline())
        except psutil.Error:  # a process that ended meanwhile
            continue
    return count


def test_model_loads_once_per_worker_across_jobs(spark, minilm_dir):
    # Spark keeps a pool of reusable Python workers (it can hold more workers than cores);
    # each worker must load the model at most once, whatever the number of tasks and jobs.
    df = _text_df(spark, [f"text {i}" for i in range(48)]).repartition(12)
    spec = _spec(spark, minilm_dir, "embedding", identity=f"once-{uuid.uuid4().hex[:8]}")
    first = udf.collect_stats(udf.score(df, spec, stats=True))
    second = udf.collect_stats(udf.score(df, spec, stats=True))
    stats = first + second
    workers = _python_workers()
    assert (stats.rows, stats.rows_failed) == (96, 0)
    assert 1 <= stats.model_loads <= workers < 24, (stats, workers)
    assert first.model_loads >= 1


def test_text_classification_with_all_scores(spark, tiny_models):  # noqa: F811
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    df = _text_df(spark, SAMPLE_TEXTS)
    spec = _spec(
        spark,
        tiny_models.classifier,
        "text-classification",
        options={"return_all_scores": True},
        batch=BatchConfig(max_rows=3, max_tokens=100),
    )
    fields = udf.output_fields(spec)
    assert [(f.name, f.dataType.simpleString()) for f in fields] == [
        ("label", "string"),
        ("score", "double"),
        ("scores", "map<string,double>"),
    ]
    rows = sorted(udf.score(df, spec).collect(), key=lambda r: r.id)
    tok = AutoTokenizer.from_pretrained(tiny_models.classifier)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models.classifier).eval()
    for row in rows:
        assert row.error is None
        enc = tok([row.text], truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(model(**enc).logits[0], -1).numpy()
        assert row.label == LABELS[int(probs.argmax())]
        assert row.score == pytest.approx(float(probs.max()), abs=1e-4)
        assert row.scores == pytest.approx(
            {LABELS[k]: float(p) for k, p in enumerate(probs)}, abs=1e-4
        )


def test_text_generation_greedy(spark, tiny_models):  # noqa: F811
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = ["hello world", "the quick brown fox", "", "中文 😀", None]
    df = _text_df(spark, texts)
    spec = _spec(spark, tiny_models.gpt2, "text-generation", options={"max_new_tokens": 5})
    rows = sorted(udf.score(df, spec).collect(), key=lambda r: r.id)
    tok = AutoTokenizer.from_pretrained(tiny_models.gpt2)
    model = AutoModelForCausalLM.from_pretrained(tiny_models.gpt2).eval()
    for row in rows[:-1]:
        ids = tok([row.text])["input_ids"][0] or [tok.bos_token_id]
        x = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=5,
                do_sample=False,
                pad_token_id=tok.eos_token_id,
            )
        assert row.error is None
        assert row.generated_text == tok.decode(out[0, x.shape[1] :], skip_special_tokens=True)
    assert rows[-1].error == "input column 'text' is null" and rows[-1].generated_text is None


def test_pyfunc_columns_from_signature_and_isolated_failures(spark, tiny_models):  # noqa: F811
    df = spark.createDataFrame(
        [(1, 1.5, "a"), (2, 2.0, "boom"), (3, None, "c"), (4, 4.0, "d")],
        "id long, a double, b string",
    )
    spec = _spec(
        spark, tiny_models.pyfunc, "pyfunc", inputs=("a", "b"), batch=BatchConfig(max_rows=2)
    )
    out = udf.score(df, spec)
    assert out.columns == ["id", "a", "b", "total", "tag", "error"]
    assert [f.dataType.simpleString() for f in out.schema.fields[3:]] == [
        "double",
        "string",
        "string",
    ]
    rows = {r.id: r for r in out.collect()}
    assert (rows[1].total, rows[1].tag, rows[1].error) == (3.0, "A", None)
    assert (rows[2].total, rows[2].tag, rows[2].error) == (
        None,
        None,
        "ValueError: boom is not allowed",
    )
    assert (rows[3].total, rows[3].error) == (None, "input column 'a' is null")
    assert (rows[4].total, rows[4].tag, rows[4].error) == (8.0, "D", None)

    unnamed = _spec(spark, tiny_models.pyfunc_unnamed, "pyfunc", inputs=("a",))
    got = udf.score(df.select("id", "a").filter("a is not null"), unnamed).orderBy("id").collect()
    assert [(r.prediction, r.error) for r in got] == [(2.5, None), (3.0, None), (5.0, None)]


def test_missing_or_non_text_input_and_column_clash_fail_before_running(spark, minilm_dir):
    spec = _spec(spark, minilm_dir, "embedding")
    with pytest.raises(
        SchemaDriftError, match=r"input column 'text' \(model.input\) is not in the data"
    ):
        udf.score(spark.createDataFrame([(1,)], "body string"), spec)
    with pytest.raises(
        SchemaDriftError, match="input column 'text' is bigint, but task 'embedding' scores text"
    ):
        udf.score(spark.createDataFrame([(1,)], "text long"), spec)
    with pytest.raises(UsageError, match=r"already has column\(s\) \['error'\]"):
        udf.score(spark.createDataFrame([("a", "x")], "text string, error string"), spec)


def test_prepare_model_errors_name_the_uri_and_cause(spark, tmp_path, tiny_models):  # noqa: F811
    with pytest.raises(
        ModelError, match=r"model file:///nope: local model directory '/nope' does not exist"
    ):
        _spec(spark, "/nope", "embedding")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        ModelError,
        match=rf"model file://{empty}: '{empty}' is not a model task 'embedding' can load: ValueError: Unrecognized model",
    ):
        _spec(spark, str(empty), "embedding")
    with pytest.raises(ModelError, match="no MLmodel file"):
        _spec(spark, tiny_models.bert_mean, "pyfunc", inputs=("a",))
    with pytest.raises(ModelError, match="fp16 is not supported on CPU"):
        _spec(spark, tiny_models.bert_mean, "embedding", precision="fp16")


def test_executor_load_failure_becomes_a_model_error(spark, tmp_path, tiny_models):  # noqa: F811
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models.bert_mean, broken)
    (broken / "model.safetensors").write_bytes(b"this is not a safetensors file")
    spec = _spec(spark, str(broken), "embedding")  # config.json is fine: the driver check passes
    with pytest.raises(Exception) as info:
        udf.score(_text_df(spark, ["a", "b"]), spec).collect()
    err = from_spark(info.value)
    assert isinstance(err, ModelError)
    assert f"could not load model file://{broken} (task embedding)" in str(err)
    assert "Error" in str(err).split("on the executor:")[1]  # the cause's type and message
    assert from_spark(ValueError("unrelated")) is None


@pytest.mark.gpu
def test_embedding_on_gpu_matches_cpu(spark, minilm_dir, minilm_ref):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: torch.cuda.is_available() is False")
    texts = [*SAMPLE_TEXTS, *[f"gpu sentence {i}" for i in range(30)]]
    expected = minilm_ref.encode(texts, show_progress_bar=False)
    df = spark.createDataFrame([Row(id=i, text=t) for i, t in enumerate(texts)])
    for precision, atol in (("fp32", 1e-4), ("fp16", 5e-3), ("bf16", 3e-2)):
        spec = _spec(spark, minilm_dir, "embedding", device="cuda", precision=precision)
        rows = sorted(udf.score(df, spec).collect(), key=lambda r: r.id)
        assert all(r.error is None for r in rows)
        np.testing.assert_allclose(np.array([r.embedding for r in rows]), expected, atol=atol)


_CLUSTER_SCRIPT = r"""
import json, os, sys
import pandas as pd
from pyspark.sql import SparkSession
from spark_scoring import udf
from spark_scoring.config import ModelConfig

model_dir = sys.argv[1]
spark = (
    SparkSession.builder.master("local-cluster[1,1,1024]")
    .config("spark.ui.enabled", "false")
    .config("spark.python.worker.reuse", "true")
    .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    .getOrCreate()
)
spark.sparkContext.setLogLevel("ERROR")
cfg = ModelConfig(uri="file://" + model_dir, task="embedding", input=("text",))
spec = udf.prepare_model(spark, model_dir=model_dir, model_uri=cfg.uri, model_cfg=cfg, identity="cluster")
df = spark.createDataFrame([(1, "hello"), (2, None), (3, "spark")], "id long, text string")
rows = sorted(udf.score(df, spec).collect(), key=lambda r: r.id)


def where(it):
    for _ in it:
        yield pd.DataFrame({"dir": [udf._local_model_dir(spec)], "pid": [os.getpid()]})


used = spark.range(1).mapInPandas(where, "dir string, pid long").collect()[0]
print("RESULT " + json.dumps({
    "shipped_name": spec.shipped_name,
    "executor_dir": used.dir,
    "embeddings": [r.embedding for r in rows],
    "errors": [r.error for r in rows],
}))
spark.stop()
"""


@pytest.mark.cluster
def test_model_is_shipped_to_separate_executors(tmp_path, tiny_models):  # noqa: F811
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "cluster_job.py"
    script.write_text(_CLUSTER_SCRIPT, encoding="utf-8")
    env = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "PYTHONPATH": str(udf.Path(__file__).parents[1]),
    }
    proc = subprocess.run(
        [sys.executable, str(script), tiny_models.bert_mean],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["shipped_name"] == "cluster-bert_mean.tar"
    # the executor read the copy Spark shipped and unpacked, not the driver's directory
    executor_dir = udf.Path(result["executor_dir"])
    assert executor_dir.name == "cluster-bert_mean.tar" and executor_dir.is_dir()
    assert (executor_dir / "config.json").is_file()
    app_dir = executor_dir.parents[
        1
    ]  # SPARK_HOME/work/app-*/<executor>/ (local-cluster ignores SPARK_WORKER_DIR)
    if app_dir.name.startswith("app-"):
        shutil.rmtree(app_dir, ignore_errors=True)
    assert result["errors"] == [None, "input column 'text' is null", None]
    from spark_scoring.models.tasks import get_task

    direct = get_task("embedding").load(tiny_models.bert_mean, {}, "cpu", "fp32")
    import pandas as pd

    expected = direct.predict(pd.DataFrame({"text": ["hello", "spark"]}))["embedding"]
    got = np.array([result["embeddings"][0], result["embeddings"][2]])
    np.testing.assert_allclose(got, expected, atol=1e-4)
