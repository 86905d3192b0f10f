"""resolve_model and register_model against a real local MLflow store (SQLite in tmp)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from spark_scoring.errors import ModelError, TrackingError
from spark_scoring.models.flavors import TASK_TAG
from spark_scoring.models.register import register_model
from spark_scoring.models.resolve import ResolvedModel, resolve_model

TEXTS = ["Delta tables are scored every night.", "A short one.", "MLflow keeps the lineage."]


def _embed(model_dir: str) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_dir, device="cpu").encode(TEXTS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory, minilm_dir):
    """A SQLite MLflow store with the MiniLM registered once as minilm v1 @champion."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    t0 = time.perf_counter()
    model_uri = register_model(minilm_dir, "minilm", task="embedding", alias="champion", tracking_uri=uri)
    seconds = time.perf_counter() - t0
    return {"root": root, "uri": uri, "model_uri": model_uri, "register_seconds": seconds}


@pytest.fixture(scope="module")
def client(store):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"])


@pytest.fixture(scope="module")
def reference_embeddings(minilm_dir):
    return _embed(minilm_dir)


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def _no_default_store(no_default_mlflow_store):
    """Every test here runs with the guard from conftest."""


# --------------------------------------------------------------------------------------
# register_model
# --------------------------------------------------------------------------------------


def test_register_creates_version_alias_and_task_tag(store, client):
    assert store["model_uri"] == "models:/minilm/1"
    mv = client.get_model_version("minilm", "1")
    assert mv.tags[TASK_TAG] == "embedding"
    assert {k: str(v) for k, v in client.get_registered_model("minilm").aliases.items()} == {"champion": "1"}
    assert mv.source.startswith("models:/m-")  # an MLflow 3 LoggedModel
    run = client.get_run(mv.run_id)
    assert run.info.status == "FINISHED"
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "spark-scoring-models"
    # artifacts live next to the database, never in the working directory
    assert exp.artifact_location.startswith(Path(store["root"]).resolve().as_uri())
    assert not (Path.cwd() / "mlruns").exists() or Path.cwd() == store["root"]


def test_registered_model_has_signature_and_input_example(store, client, tmp_path):
    import mlflow

    local = mlflow.artifacts.download_artifacts(
        client.get_model_version_download_uri("minilm", "1"), dst_path=str(tmp_path), tracking_uri=store["uri"]
    )
    info = mlflow.models.Model.load(local)
    assert "sentence_transformers" in info.flavors
    assert info.signature is not None
    assert info.signature.inputs.input_types()[0].name == "string"
    assert (Path(local) / "input_example.json").is_file()


def test_register_rejects_wrong_task_before_logging(store, client, minilm_dir):
    runs_before = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    with pytest.raises(ModelError, match=r"sentence-transformers model \(modules.json\): it serves task 'embedding', not 'text-classification'"):
        register_model(minilm_dir, "minilm-bad", task="text-classification", tracking_uri=store["uri"])
    with pytest.raises(ModelError, match="task 'pyfunc' needs an MLflow model directory"):
        register_model(minilm_dir, "minilm-bad", task="pyfunc", tracking_uri=store["uri"])
    with pytest.raises(ModelError, match="task 'regression' is not supported; use one of embedding"):
        register_model(minilm_dir, "minilm-bad", task="regression", tracking_uri=store["uri"])
    runs_after = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    assert runs_after == runs_before
    assert "minilm-bad" not in [m.name for m in client.search_registered_models()]


def test_register_rejects_missing_and_non_model_dirs(store, tmp_path):
    with pytest.raises(ModelError, match="model directory .*nope does not exist"):
        register_model(tmp_path / "nope", "x", task="embedding", tracking_uri=store["uri"])
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelError, match=r"is not a model directory: it has no MLmodel .*files there: \['notes.txt'\]"):
        register_model(tmp_path, "x", task="embedding", tracking_uri=store["uri"])


# --------------------------------------------------------------------------------------
# the shared directory and flavour rules (models/flavors.py), read from the task registry
# --------------------------------------------------------------------------------------

_ST = {"sentence_transformers": {}, "python_function": {"data": "model.sentence_transformer"}}
_PIPE = {"transformers": {"task": "text-classification"}, "python_function": {}}
_PYFUNC = {"python_function": {"loader_module": "mlflow.pyfunc.model"}}


def test_serving_flavor_follows_the_registry():
    from spark_scoring.models.flavors import serving_flavor

    assert serving_flavor(_ST, "embedding", "m") == "sentence_transformers"
    assert serving_flavor(_ST, "pyfunc", "m") == "python_function"
    assert serving_flavor(_PIPE, "text-classification", "m") == "transformers"
    assert serving_flavor({"transformers": {"task": "sentence-similarity"}}, "embedding", "m") == "transformers"
    assert serving_flavor(_PIPE, "pyfunc", "m") == "python_function"
    assert serving_flavor(_PYFUNC, "pyfunc", "m") == "python_function"
    with pytest.raises(ModelError, match=r"^m is a sentence-transformers model: it serves task 'embedding' \(or 'pyfunc'\), not 'text-generation'$"):
        serving_flavor(_ST, "text-generation", "m")
    with pytest.raises(ModelError, match=r"^m is a transformers 'text-classification' pipeline; task 'text-generation' needs one of \['text-generation'\]; fix the task or the model$"):
        serving_flavor(_PIPE, "text-generation", "m")
    with pytest.raises(ModelError, match=r"^m has flavours \['python_function'\]; task 'text-classification' needs a transformers model; use task 'pyfunc' for other MLflow models$"):
        serving_flavor(_PYFUNC, "text-classification", "m")
    with pytest.raises(ModelError, match=r"^task 'pyfunc' needs an MLflow model with the python_function flavour; m has flavours \['transformers'\]$"):
        serving_flavor({"transformers": {"task": "text-generation"}}, "pyfunc", "m")


def _hf_dir(path: Path, **config) -> Path:
    import json

    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_plain_directory_and_architecture_rules(tmp_path, minilm_dir):
    from spark_scoring.models.flavors import (
        check_architectures,
        check_plain_directory,
        directory_kind,
        is_generative,
    )

    st = Path(minilm_dir)
    assert directory_kind(st) == "sentence_transformers"
    check_plain_directory(st, "sentence_transformers", "embedding")
    with pytest.raises(ModelError, match=r"task 'pyfunc' needs an MLflow model directory .*or use task 'embedding'$"):
        check_plain_directory(st, "sentence_transformers", "pyfunc")
    gpt = _hf_dir(tmp_path / "gpt", architectures=["GPT2LMHeadModel"])
    assert directory_kind(gpt) == "transformers"
    for task in ("embedding", "text-classification", "text-generation"):
        check_plain_directory(gpt, "transformers", task)  # the architectures are checked separately
    with pytest.raises(ModelError, match=r"or use task 'embedding', 'text-classification', 'text-generation', 'image-classification' or 'image-embedding'$"):
        check_plain_directory(gpt, "transformers", "pyfunc")
    check_architectures(gpt, "text-generation")
    with pytest.raises(ModelError, match=r"task 'embedding' needs an encoder or sentence-transformers model; .*gpt is a generative model \(architectures \['GPT2LMHeadModel'\]\)"):
        check_architectures(gpt, "embedding")
    t5 = _hf_dir(tmp_path / "t5", architectures=["T5Model"], is_encoder_decoder=True)
    assert is_generative(["T5Model"], {"is_encoder_decoder": True}) and not is_generative(["BertModel"], {})
    with pytest.raises(ModelError, match="is a generative model"):
        check_architectures(t5, "embedding")
    clf = _hf_dir(tmp_path / "clf", architectures=["RobertaForSequenceClassification"])
    check_architectures(clf, "text-classification")
    check_architectures(clf, "embedding")  # an encoder: its hidden states embed
    with pytest.raises(ModelError, match=r"needs a causal language model .*\['RobertaForSequenceClassification'\]"):
        check_architectures(clf, "text-generation")
    (tmp_path / "clf" / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read .*config.json"):
        check_architectures(clf, "text-classification")


# --------------------------------------------------------------------------------------
# resolve_model: registry, runs, local
# --------------------------------------------------------------------------------------


def test_resolve_alias_pins_version_and_loads_same_embeddings(store, cache, reference_embeddings):
    r = resolve_model("models:/minilm@champion", task="embedding", tracking_uri=store["uri"], cache_dir=cache)
    assert isinstance(r, ResolvedModel)
    assert r.requested_uri == "models:/minilm@champion"
    assert r.resolved_uri == "models:/minilm/1"
    assert (r.name, r.version, r.flavor, r.task_tag) == ("minilm", "1", "sentence_transformers", "embedding")
    assert r.run_id and len(r.model_hash) == 16
    local = Path(r.local_dir)
    assert local.is_dir() and local.is_relative_to(cache)
    assert (local / "modules.json").is_file()
    np.testing.assert_allclose(_embed(r.local_dir), reference_embeddings, atol=1e-5)
    with pytest.raises(AttributeError):
        r.version = "2"  # frozen


def test_resolve_version_reuses_the_cached_download(store, cache):
    a = resolve_model("models:/minilm@champion", task="embedding", tracking_uri=store["uri"], cache_dir=cache)
    marker = Path(a.local_dir).parent / ".spark_scoring_complete"
    assert marker.is_file()
    stamp = marker.stat().st_mtime_ns
    b = resolve_model("models:/minilm/1", task="embedding", tracking_uri=store["uri"], cache_dir=cache)
    assert b.local_dir == a.local_dir
    assert b.model_hash == a.model_hash  # same pinned model -> same executor cache key
    assert b.resolved_uri == "models:/minilm/1"
    assert marker.stat().st_mtime_ns == stamp  # not downloaded again


def test_resolve_env_cache_dir(store, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARK_SCORING_MODEL_CACHE", str(tmp_path / "envcache"))
    r = resolve_model("models:/minilm/1", task="embedding", tracking_uri=store["uri"])
    assert Path(r.local_dir).is_relative_to(tmp_path / "envcache")


def test_incomplete_cache_entry_is_replaced(store, cache):
    first = resolve_model("models:/minilm/1", task="embedding", tracking_uri=store["uri"], cache_dir=cache)
    slot = Path(first.local_dir).parent  # .../1/mlflow
    (slot / ".spark_scoring_complete").unlink()  # as if a crash hit before the marker
    (slot / "model.sentence_transformer" / "model.safetensors").write_bytes(b"truncated")
    again = resolve_model("models:/minilm/1", task="embedding", tracking_uri=store["uri"], cache_dir=cache)
    assert again.local_dir == first.local_dir
    assert (slot / ".spark_scoring_complete").is_file()
    assert (slot / "model.sentence_transformer" / "model.safetensors").stat().st_size > 1_000_000


def test_concurrent_resolves_share_one_complete_download(store, cache):
    results: list[ResolvedModel] = []
    errors: list[BaseException] = []

    def work():
        try:
            results.append(resolve_model("models:/minilm/1", task="embedding", tracking_uri=store["uri"], cache_dir=cache))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({r.local_dir for r in results}) == 1
    slot_parent = Path(results[0].local_dir).parent.parent
    assert sorted(p.name for p in slot_parent.iterdir()) == ["mlflow"]  # no temp leftovers


def test_resolve_runs_uri(store, client, cache, reference_embeddings):
    run_id = client.get_model_version("minilm", "1").run_id
    r = resolve_model(f"runs:/{run_id}/model", task="embedding", tracking_uri=store["uri"], cache_dir=cache)
    assert r.resolved_uri == f"runs:/{run_id}/model"
    assert (r.name, r.version, r.run_id, r.flavor) == (None, None, run_id, "sentence_transformers")
    np.testing.assert_allclose(_embed(r.local_dir), reference_embeddings, atol=1e-5)


def test_resolve_local_dir_absolute_and_relative(minilm_dir, tmp_path, monkeypatch, cache):
    copy = tmp_path / "models" / "minilm"
    shutil.copytree(minilm_dir, copy)
    a = resolve_model(str(copy), task="embedding", cache_dir=cache)
    assert a.resolved_uri == str(copy.resolve()) == a.local_dir
    assert (a.flavor, a.name, a.version, a.run_id) == ("sentence_transformers", None, None, None)
    monkeypatch.chdir(tmp_path)
    b = resolve_model("models/minilm", task="embedding", cache_dir=cache)
    assert b.local_dir == a.local_dir and b.model_hash == a.model_hash
    assert b.requested_uri == "models/minilm"


def _weights(model_dir: Path) -> Path:
    return max((p for p in model_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_a_local_model_is_identified_by_its_content_not_its_path_or_mtimes(minilm_dir, tmp_path, cache):
    first = tmp_path / "deploy1" / "minilm"
    shutil.copytree(minilm_dir, first)
    a = resolve_model(str(first), task="embedding", cache_dir=cache)
    # a redeploy of the same weights: copied elsewhere with new modification times
    second = tmp_path / "deploy2" / "minilm"
    shutil.copytree(first, second, copy_function=shutil.copyfile)
    assert _weights(second).stat().st_mtime_ns != _weights(first).stat().st_mtime_ns
    b = resolve_model(str(second), task="embedding", cache_dir=cache)
    assert b.model_hash == a.model_hash and b.resolved_uri != a.resolved_uri
    config = first / "config_sentence_transformers.json"
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10_000_000_000))
    (first / ".git").mkdir()
    (first / ".git" / "HEAD").write_text("ref: refs/heads/main")  # hidden: not the model
    assert resolve_model(str(first), task="embedding", cache_dir=cache).model_hash == a.model_hash
    # one changed byte in the weights (same size, same mtime) is another model
    weights = _weights(second)
    st = weights.stat()
    with weights.open("r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # a writer moves the mtime
    c = resolve_model(str(second), task="embedding", cache_dir=cache)
    assert c.model_hash != a.model_hash
    # a renamed file is another model too
    (first / "README.md").rename(first / "README2.md")
    assert resolve_model(str(first), task="embedding", cache_dir=cache).model_hash not in (a.model_hash, c.model_hash)


def test_large_files_are_hashed_once_per_size_and_mtime(minilm_dir, tmp_path, cache):
    import hashlib

    copy = tmp_path / "minilm"
    shutil.copytree(minilm_dir, copy)
    first = resolve_model(str(copy), task="embedding", cache_dir=cache)
    weights = _weights(copy)
    (entry,) = (cache / "local" / "file-hashes").iterdir()  # only the weights are large
    assert entry.read_text() == hashlib.sha256(weights.read_bytes()).hexdigest()
    # the remembered hash is what the next resolve uses (the file is not read again) ...
    entry.write_text("0" * 64)
    assert resolve_model(str(copy), task="embedding", cache_dir=cache).model_hash != first.model_hash
    entry.write_text(hashlib.sha256(weights.read_bytes()).hexdigest())
    assert resolve_model(str(copy), task="embedding", cache_dir=cache).model_hash == first.model_hash
    # ... for the same (path, size, mtime) only: a rewritten file is hashed again
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert resolve_model(str(copy), task="embedding", cache_dir=cache).model_hash != first.model_hash
    # a cache that cannot be written (here: a file where the folder should be) only costs a rehash
    unwritable = tmp_path / "not-a-folder"
    unwritable.write_text("")
    assert resolve_model(str(copy), task="embedding", cache_dir=unwritable).model_hash == resolve_model(
        str(copy), task="embedding", cache_dir=cache).model_hash


def test_alias_moved_after_resolution_does_not_change_the_pinned_model(store, client, cache):
    v1 = client.get_model_version("minilm", "1")
    client.create_registered_model("pinned")
    source = client.get_model_version_download_uri("minilm", v1.version)
    for _ in range(2):  # two versions with the same (real) artifacts, no second logging
        client.create_model_version("pinned", source=source, run_id=v1.run_id, tags={TASK_TAG: "embedding"})
    client.set_registered_model_alias("pinned", "prod", "1")
    pinned = resolve_model("models:/pinned@prod", task="embedding", tracking_uri=store["uri"], cache_dir=cache)
    client.set_registered_model_alias("pinned", "prod", "2")
    assert pinned.version == "1" and pinned.resolved_uri == "models:/pinned/1"
    assert Path(pinned.local_dir, "modules.json").is_file()
    fresh = resolve_model("models:/pinned@prod", task="embedding", tracking_uri=store["uri"], cache_dir=cache)
    assert fresh.version == "2" and fresh.resolved_uri == "models:/pinned/2"
    assert fresh.local_dir != pinned.local_dir and fresh.model_hash != pinned.model_hash


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------


def test_unknown_model_name_lists_existing_names(store, cache):
    with pytest.raises(ModelError, match=r"registered model 'minilmm' \(from 'models:/minilmm@champion'\) does not exist .*existing models: \[.*'minilm'.*\]; register it first"):
        resolve_model("models:/minilmm@champion", task="embedding", tracking_uri=store["uri"], cache_dir=cache)


def test_unknown_alias_lists_aliases_and_versions(store, cache):
    with pytest.raises(ModelError, match=r"registered model 'minilm' has no alias 'prod' .*its aliases: \{'champion': '1'\}; its versions: \['1'\]"):
        resolve_model("models:/minilm@prod", task="embedding", tracking_uri=store["uri"], cache_dir=cache)


def test_unknown_version_lists_versions(store, cache):
    with pytest.raises(ModelError, match=r"registered model 'minilm' has no version 7 .*its versions: \['1'\]"):
        resolve_model("models:/minilm/7", task="embedding", tracking_uri=store["uri"], cache_dir=cache)


def test_task_tag_mismatch(store, cache):
    with pytest.raises(ModelError, match=r"models:/minilm/1 .* is registered for task 'embedding' .*model.task='text-classification'"):
        resolve_model("models:/minilm@champion", task="text-classification", tracking_uri=store["uri"], cache_dir=cache)
    assert not cache.exists()  # refused before downloading anything


def test_bad_uris(store, cache, tmp_path):
    from mlflow import MlflowClient

    with pytest.raises(ModelError, match=r"'Production' is not a version number \(stages are not supported\)"):
        resolve_model("models:/minilm/Production", task="embedding", tracking_uri=store["uri"], cache_dir=cache)
    with pytest.raises(ModelError, match="has an unsupported scheme; use models:/NAME@ALIAS"):
        resolve_model("s3://bucket/model", task="embedding", cache_dir=cache)
    with pytest.raises(ModelError, match=r"MLflow run '0123abc' \(from 'runs:/0123abc/model'\) does not exist"):
        resolve_model("runs:/0123abc/model", task="embedding", tracking_uri=store["uri"], cache_dir=cache)
    run_id = MlflowClient(store["uri"], store["uri"]).get_model_version("minilm", "1").run_id
    with pytest.raises(ModelError, match=rf"run {run_id} has no model at 'weights' .*models logged by that run: \['model'\]"):
        resolve_model(f"runs:/{run_id}/weights", task="embedding", tracking_uri=store["uri"], cache_dir=cache)
    with pytest.raises(ModelError, match="task 'summarize' is not supported"):
        resolve_model("models:/minilm/1", task="summarize", tracking_uri=store["uri"], cache_dir=cache)


def test_local_dir_errors(tmp_path, cache, minilm_dir):
    with pytest.raises(ModelError, match=r"local model directory .*missing-model \(from model.uri 'missing-model'\) does not exist"):
        resolve_model("missing-model", task="embedding", cache_dir=cache)
    with pytest.raises(ModelError, match="task 'pyfunc' needs an MLflow model directory"):
        resolve_model(minilm_dir, task="pyfunc", cache_dir=cache)
    with pytest.raises(ModelError, match=r"sentence-transformers model \(modules.json\): it serves task 'embedding', not 'text-generation'"):
        resolve_model(minilm_dir, task="text-generation", cache_dir=cache)


def test_unreachable_tracking_server_fails_fast(cache):
    uri = f"http://127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(TrackingError, match=rf"the MLflow tracking server {uri} is unreachable"):
        resolve_model("models:/minilm@champion", task="embedding", tracking_uri=uri, cache_dir=cache)
    assert time.perf_counter() - t0 < 10


def test_missing_sqlite_store(tmp_path, cache):
    uri = f"sqlite:///{tmp_path / 'nothing.db'}"
    with pytest.raises(TrackingError, match=r"the MLflow store .*nothing.db does not exist"):
        resolve_model("models:/minilm/1", task="embedding", tracking_uri=uri, cache_dir=cache)
    assert not (tmp_path / "nothing.db").exists()


# --------------------------------------------------------------------------------------
# transformers and pyfunc flavours
# --------------------------------------------------------------------------------------

_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def tiny_classifier_dir(tmp_path_factory, minilm_dir) -> Path:
    """A tiny randomly initialised BERT sequence classifier + the MiniLM tokenizer (no hub)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-clf")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=2,
        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
    )
    BertForSequenceClassification(config).eval().save_pretrained(path)
    for name in _TOKENIZER_FILES:
        shutil.copy(Path(minilm_dir) / name, path / name)
    return path


def test_transformers_classifier_roundtrip(store, client, tiny_classifier_dir, cache):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    uri = register_model(tiny_classifier_dir, "tiny-clf", task="text-classification", alias="prod", tracking_uri=store["uri"])
    assert uri == "models:/tiny-clf/1"
    assert client.get_model_version("tiny-clf", "1").tags[TASK_TAG] == "text-classification"
    r = resolve_model("models:/tiny-clf@prod", task="text-classification", tracking_uri=store["uri"], cache_dir=cache)
    assert r.flavor == "transformers" and r.version == "1"
    local = Path(r.local_dir)
    # MLflow splits model/ and components/tokenizer/; the engine gets ONE directory
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= {p.name for p in local.iterdir()}
    assert (local / ".spark_scoring_complete").is_file()
    tok = AutoTokenizer.from_pretrained(local)
    model = AutoModelForSequenceClassification.from_pretrained(local).eval()
    ref_tok = AutoTokenizer.from_pretrained(tiny_classifier_dir)
    ref = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir).eval()
    assert model.config.id2label == {0: "negative", 1: "positive"}
    with torch.no_grad():
        got = model(**tok(TEXTS, padding=True, return_tensors="pt")).logits
        want = ref(**ref_tok(TEXTS, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # resolving again reuses both the download and the merged directory
    again = resolve_model("models:/tiny-clf/1", task="text-classification", tracking_uri=store["uri"], cache_dir=cache)
    assert again.local_dir == r.local_dir
    with pytest.raises(ModelError, match="is registered for task 'text-classification'"):
        resolve_model("models:/tiny-clf/1", task="embedding", tracking_uri=store["uri"], cache_dir=cache)


def test_register_and_resolve_neither_read_nor_change_mlflow_process_state(
    store, client, tiny_classifier_dir, cache, monkeypatch, no_default_mlflow_store
):
    """A notebook may point MLflow's process-wide URIs elsewhere: registering ignores them."""
    mlflow_state = no_default_mlflow_store
    elsewhere = "elsewhere-sentinel://not-our-store"  # no store answers: reading it fails at once
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", elsewhere)
    before = mlflow_state()
    uri = register_model(tiny_classifier_dir, "tiny-clf-isolated", task="text-classification", tracking_uri=store["uri"])
    assert mlflow_state() == before  # URIs (module state) and MLFLOW_* variables alike
    mv = client.get_model_version("tiny-clf-isolated", uri.rsplit("/", 1)[1])
    assert mv.source.startswith("models:/m-")  # linked to its LoggedModel
    logged = client.get_logged_model(mv.source[len("models:/"):])
    assert (str(logged.status), logged.source_run_id) == ("READY", mv.run_id)
    r = resolve_model(uri, task="text-classification", tracking_uri=store["uri"], cache_dir=cache)
    assert mlflow_state() == before
    assert (Path(r.local_dir) / "config.json").is_file()


def test_transformers_task_checked_against_config(store, tiny_classifier_dir, tmp_path):
    with pytest.raises(ModelError, match=r"task 'text-generation' needs a causal language model .*\['BertForSequenceClassification'\]"):
        register_model(tiny_classifier_dir, "tiny-gen", task="text-generation", tracking_uri=store["uri"])
    from transformers import BertConfig, BertModel

    encoder = tmp_path / "encoder"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(encoder)
    with pytest.raises(ModelError, match=r"task 'text-classification' needs a sequence-classification model .*\['BertModel'\]"):
        register_model(encoder, "tiny-enc", task="text-classification", tracking_uri=store["uri"])


def test_plain_hf_encoder_registers_as_feature_extraction(store, client, tmp_path, cache, minilm_dir, capfd):
    import torch
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    src = tmp_path / "encoder"
    torch.manual_seed(1)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).eval().save_pretrained(src)
    for name in _TOKENIZER_FILES:
        shutil.copy(Path(minilm_dir) / name, src / name)
    capfd.readouterr()
    uri = register_model(src, "tiny-enc", task="embedding", tracking_uri=store["uri"])
    assert capfd.readouterr().out == ""  # register_model prints nothing
    assert uri == "models:/tiny-enc/1"
    r = resolve_model(uri, task="embedding", tracking_uri=store["uri"], cache_dir=cache)
    assert (r.flavor, r.task_tag) == ("transformers", "embedding")
    tok = AutoTokenizer.from_pretrained(r.local_dir)
    with torch.no_grad():
        got = AutoModel.from_pretrained(r.local_dir).eval()(**tok(TEXTS, padding=True, return_tensors="pt")).last_hidden_state
        want = BertModel.from_pretrained(src).eval()(**tok(TEXTS, padding=True, return_tensors="pt")).last_hidden_state
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # the registry tag refuses a wrong task first; a local MLflow copy is checked by its flavour
    import mlflow

    local = mlflow.artifacts.download_artifacts(
        client.get_model_version_download_uri("tiny-enc", "1"), dst_path=str(tmp_path / "copy"), tracking_uri=store["uri"]
    )
    with pytest.raises(ModelError, match=r"is a transformers 'feature-extraction' pipeline; task 'text-classification' needs one of \['sentiment-analysis', 'text-classification'\]"):
        resolve_model(local, task="text-classification", cache_dir=cache)
    merged = resolve_model(local, task="embedding", cache_dir=cache)
    assert Path(merged.local_dir).is_relative_to(cache / "local")  # merged copy lives in the cache
    assert (Path(merged.local_dir) / "tokenizer.json").is_file()


def _save_pyfunc_model(path: Path) -> None:
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    class Doubler(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return pd.DataFrame({"y": model_input["x"] * 2.0})

    example = pd.DataFrame({"x": [1.0, 2.5]})
    mlflow.pyfunc.save_model(
        str(path),
        python_model=Doubler(),
        signature=infer_signature(example, pd.DataFrame({"y": [2.0, 5.0]})),
        input_example=example,
        pip_requirements=["mlflow"],
    )


def test_pyfunc_mlflow_dir_roundtrip(store, client, tmp_path, cache):
    import mlflow
    import pandas as pd

    src = tmp_path / "doubler"
    _save_pyfunc_model(src)
    uri = register_model(src, "doubler", task="pyfunc", alias="prod", tracking_uri=store["uri"])
    assert uri == "models:/doubler/1"
    r = resolve_model("models:/doubler@prod", task="pyfunc", tracking_uri=store["uri"], cache_dir=cache)
    assert r.flavor == "python_function"
    assert (Path(r.local_dir) / "MLmodel").is_file()
    loaded = mlflow.pyfunc.load_model(r.local_dir)
    assert loaded.metadata.get_input_schema().input_names() == ["x"]  # signature kept
    out = loaded.predict(pd.DataFrame({"x": [1.0, 4.0]}))
    assert out["y"].tolist() == [2.0, 8.0]
    # a local MLflow model directory resolves to itself for task pyfunc
    local = resolve_model(str(src), task="pyfunc", cache_dir=cache)
    assert local.local_dir == str(src.resolve()) and local.flavor == "python_function"
    with pytest.raises(ModelError, match=r"has flavours \['python_function'\]; task 'embedding' needs a sentence_transformers or transformers model"):
        resolve_model(str(src), task="embedding", cache_dir=cache)
    # registration and resolution check flavours with the same rule (models/flavors.py)
    with pytest.raises(ModelError, match=r"has flavours \['python_function'\]; task 'embedding' needs a sentence_transformers or transformers model"):
        register_model(src, "doubler-emb", task="embedding", tracking_uri=store["uri"])
