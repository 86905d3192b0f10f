"""Register through the CLI, score with `models:/name@alias`, check lineage with MLflow's own client."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from deltalake import DeltaTable
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from spark_scoring import pipeline
from spark_scoring.cli import main
from spark_scoring.errors import ModelError
from tests.pipeline_helpers import job_config, read_output, source_rows, write_source
from tests.tiny_models import build_classifier, build_gpt2


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> str:
    return build_classifier(tmp_path_factory.mktemp("clf") / "model")


def register(path: str, name: str, task: str, uri: str, capsys) -> str:
    assert main(["register-model", "--path", path, "--name", name, "--task", task,
                 "--alias", "champion", "--tracking-uri", uri]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def direct_predictions(model_dir: str, texts: list[str]) -> tuple[list[str], np.ndarray]:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    labels, scores = [], []
    with torch.inference_mode():
        for text in texts:  # one at a time: no padding at all
            probs = model(**tok(text, return_tensors="pt", truncation=True)).logits.softmax(-1)[0]
            labels.append(model.config.id2label[int(probs.argmax())])
            scores.append(float(probs.max()))
    return labels, np.array(scores)


def test_registered_alias_scores_with_full_lineage(spark, tmp_path, classifier, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert register(classifier, "reviews-clf", "text-classification", uri, capsys) == "models:/reviews-clf/1"
    write_source(tmp_path / "source", source_rows(range(1, 31), "2026-01-01"))
    cfg = job_config(tmp_path, "models:/reviews-clf@champion", model__task="text-classification",
                     mlflow={"tracking_uri": uri, "experiment": "e2e"})
    result = pipeline.run(cfg, spark=spark)
    out = read_output(tmp_path / "output")
    assert set(out["model_uri"]) == {"models:/reviews-clf/1"}
    assert set(out["model_version"]) == {"1"}
    labels, scores = direct_predictions(classifier, source_rows(range(1, 31), "x")["text"].tolist())
    assert out["label"].tolist() == labels
    np.testing.assert_allclose(out["score"].to_numpy(), scores, atol=1e-4)

    client = mlflow.MlflowClient(uri, registry_uri=uri)
    run = client.get_run(out["run_id"][0])
    assert run.info.run_id == result.run_id and run.info.status == "FINISHED"
    assert run.data.params["model_uri"] == "models:/reviews-clf/1"
    assert run.data.params["model_version"] == "1"
    assert run.data.params["source_version"] == str(int(out["source_version"][0]))
    assert run.data.tags["spark_scoring.output_version"] == str(DeltaTable(str(tmp_path / "output")).version())
    assert run.data.metrics["rows_scored"] == 30
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "report.json", "report.md", "distribution.png"} <= artifacts
    version = client.get_model_version("reviews-clf", "1")
    assert version.run_id and version.tags["spark_scoring.task"] == "text-classification"

    # the alias moves to a new version: the next run follows it and (on_change=rescore) rescores
    assert register(classifier, "reviews-clf", "text-classification", uri, capsys) == "models:/reviews-clf/2"
    second = pipeline.run(cfg, spark=spark)
    assert second.rows_scored == 30
    out = read_output(tmp_path / "output")
    assert set(out["model_uri"]) == {"models:/reviews-clf/2"} and set(out["model_version"]) == {"2"}


def test_task_mismatch_and_unknown_alias_fail_before_anything_is_published(spark, tmp_path, classifier, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register(classifier, "clf", "text-classification", uri, capsys)
    write_source(tmp_path / "source", source_rows(range(1, 4), "2026-01-01"))
    cfg = job_config(tmp_path, "models:/clf@champion", model__task="embedding",
                     mlflow={"tracking_uri": uri, "experiment": "e2e"})
    with pytest.raises(ModelError, match=r"text-classification.*embedding|embedding.*text-classification"):
        pipeline.run(cfg, spark=spark)
    cfg = job_config(tmp_path, "models:/clf@nope", model__task="text-classification",
                     mlflow={"tracking_uri": uri, "experiment": "e2e"})
    with pytest.raises(ModelError, match=r"champion"):  # says which aliases exist
        pipeline.run(cfg, spark=spark)
    assert not DeltaTable.is_deltatable(str(tmp_path / "output"))


def test_text_generation_end_to_end_matches_generate(spark, tmp_path):
    model_dir = build_gpt2(tmp_path / "gpt2")
    write_source(tmp_path / "source", source_rows(range(1, 9), "2026-01-01"))
    cfg = job_config(tmp_path, model_dir, model__task="text-generation", model__options={"max_new_tokens": 5},
                     model__batch={"max_rows": 3})
    pipeline.run(cfg, spark=spark)
    out = read_output(tmp_path / "output")
    from transformers import AutoModelForCausalLM

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    texts = source_rows(range(1, 9), "x")["text"].tolist()
    expected = []
    for text in texts:
        ids = tok(text, return_tensors="pt")
        gen = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.eos_token_id)
        expected.append(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    assert out["generated_text"].tolist() == expected
    assert out["error"].isna().all()
