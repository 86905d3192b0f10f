"""Image tasks: tiny real ViT, CLIP and DINOv2 models against transformers run directly.

The first part needs no Spark: each task is loaded for real and run through
`batching.score_rows` (packing by pixels, per-row errors, OOM back-off). The second part
registers a ViT through the CLI, scores a Delta table of PNG and JPEG bytes on two
nights, and explores the scored table; and scores images read by path.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
import yaml
from deltalake import DeltaTable, write_deltalake
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    CLIPModel,
    Dinov2Model,
    ViTModel,
)
from transformers.image_utils import load_image

from spark_scoring import explore, pipeline
from spark_scoring.batching import BackoffState, score_rows
from spark_scoring.cli import main
from spark_scoring.config import config_from_dict
from spark_scoring.errors import ConfigError, ModelError, SchemaDriftError
from spark_scoring.models.register import register_model
from spark_scoring.models.resolve import resolve_model
from spark_scoring.models.tasks import get_task
from spark_scoring.models.tasks.vision import DEFAULT_MAX_IMAGE_PIXELS
from tests.tiny_models import IMAGE_LABELS, TinyImageModels, build_classifier, build_image_models

REPO = Path(__file__).resolve().parents[1]
ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny_image_models(tmp_path_factory) -> TinyImageModels:
    """The tiny ViT classifier, CLIP (two processor layouts) and DINOv2, built once here."""
    return build_image_models(tmp_path_factory.mktemp("tiny_image_models"))


# --------------------------------------------------------------------------------------
# Images and the direct references
# --------------------------------------------------------------------------------------


def encoded(width: int, height: int, fmt: str = "PNG", seed: int = 0, mode: str = "RGB", **save) -> bytes:
    """A gradient in a colour and direction of its own, plus noise: each seed is an image
    the tiny models tell apart."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    colour = rng.uniform(0, 255, 3)
    base = colour * (1 - ramp[..., None]) + rng.uniform(0, 255, 3) * ramp[..., None]
    pixels = np.clip(base + rng.randint(-30, 30, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def exif_rotated_jpeg(width: int, height: int, seed: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    return encoded(width, height, "JPEG", seed, exif=exif.tobytes())


def mixed_images() -> list[bytes]:
    """Formats, modes and sizes a real table holds (each image a different size)."""
    return [
        encoded(40, 30, "PNG", 1),
        encoded(64, 48, "JPEG", 2, quality=90),
        encoded(20, 90, "WEBP", 3),
        encoded(33, 33, "PNG", 4, mode="RGBA"),
        encoded(50, 20, "PNG", 5, mode="L"),
        encoded(24, 24, "GIF", 6, mode="P"),
        exif_rotated_jpeg(30, 60, 7),
        encoded(10, 12, "BMP", 8),
    ]


def truncated_png() -> bytes:
    return encoded(50, 50, "PNG", 9)[:200]


def _decoded(blob: bytes):
    return load_image(Image.open(io.BytesIO(blob)))  # what transformers' pipelines do


def direct_classes(model_dir: str, blobs: list[bytes]) -> tuple[list[str], np.ndarray]:
    """(labels, probabilities) with transformers alone, one image at a time."""
    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    labels, probs = [], []
    with torch.inference_mode():
        for blob in blobs:
            p = model(**processor(images=_decoded(blob), return_tensors="pt")).logits.softmax(-1)[0]
            labels.append(model.config.id2label[int(p.argmax())])
            probs.append(p.numpy().astype(np.float64))
    return labels, np.array(probs)


def direct_embeddings(model_dir: str, blobs: list[bytes], how: str) -> np.ndarray:
    """Embeddings with transformers alone, one image at a time: 'clip' (image features),
    'dinov2' (pooler_output) or 'vit-mean' (mean of ViTModel's last hidden state)."""
    processor = AutoImageProcessor.from_pretrained(model_dir)
    cls = {"clip": CLIPModel, "dinov2": Dinov2Model, "vit-mean": ViTModel}[how]
    model = cls.from_pretrained(model_dir).eval()
    out = []
    with torch.inference_mode():
        for blob in blobs:
            inputs = processor(images=_decoded(blob), return_tensors="pt")
            if how == "clip":
                emb = model.get_image_features(**inputs).pooler_output
            elif how == "dinov2":
                emb = model(**inputs).pooler_output
            else:
                emb = model(**inputs).last_hidden_state.mean(dim=1)
            out.append(emb[0].numpy())
    return np.array(out)


def score(task: str, model_dir: str, values: list, options: dict | None = None, **packing):
    model = get_task(task).load(model_dir, options or {}, "cpu", "auto")
    packing.setdefault("max_rows", 64)
    packing.setdefault("max_tokens", 2**25)
    result = score_rows(
        pd.DataFrame({"image": values}),
        packing.pop("predict", model.predict),
        kinds=model.outputs,
        lengths=model.lengths,
        invalid_rows=model.invalid_rows,
        length_unit=model.length_unit,
        **packing,
    )
    return model, result


# --------------------------------------------------------------------------------------
# Exactness against transformers
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_rows,max_pixels", [(1, 2**25), (3, 2**25), (64, 2**25), (64, 3000)])
def test_image_classification_matches_transformers(tiny_image_models, max_rows, max_pixels):
    blobs = mixed_images()
    model, result = score(
        "image-classification", tiny_image_models.vit_classifier, blobs,
        {"return_all_scores": True}, max_rows=max_rows, max_tokens=max_pixels,
    )
    assert result.errors == [None] * len(blobs)
    labels, probs = direct_classes(tiny_image_models.vit_classifier, blobs)
    assert result.outputs["label"] == labels
    np.testing.assert_allclose(result.outputs["score"], probs.max(axis=1), atol=ATOL)
    names = [IMAGE_LABELS[i] for i in range(3)]
    got = np.array([[row[n] for n in names] for row in result.outputs["scores"]])
    np.testing.assert_allclose(got, probs, atol=ATOL)
    assert len(set(labels)) > 1, "the tiny classifier should not give every image one label"
    assert result.stats.real_tokens == 0 and result.stats.padded_tokens == 0  # pixels are not tokens


def test_image_embedding_per_architecture_matches_transformers(tiny_image_models):
    blobs = mixed_images()
    cases = [
        (tiny_image_models.clip, "clip", "image_features", 12),
        (tiny_image_models.clip_processor, "clip", "image_features", 12),  # processor_config.json
        (tiny_image_models.dinov2, "dinov2", "pooler", 16),
        # a ViT classifier's checkpoint has no pooler weights: mean pooling, never a random pooler
        (tiny_image_models.vit_classifier, "vit-mean", "mean", 16),
    ]
    for model_dir, how, pooling, dims in cases:
        model, result = score("image-embedding", model_dir, blobs, max_rows=3)
        assert model.pooling == pooling, model_dir
        assert result.errors == [None] * len(blobs)
        got = np.array(result.outputs["embedding"])
        assert got.shape == (len(blobs), dims) and got.dtype == np.float32
        np.testing.assert_allclose(got, direct_embeddings(model_dir, blobs, how), atol=ATOL)


def test_image_embedding_normalize_gives_unit_vectors_in_the_same_direction(tiny_image_models):
    blobs = mixed_images()[:4]
    _, raw = score("image-embedding", tiny_image_models.clip, blobs)
    _, unit = score("image-embedding", tiny_image_models.clip, blobs, {"normalize": True})
    raw_v, unit_v = np.array(raw.outputs["embedding"]), np.array(unit.outputs["embedding"])
    np.testing.assert_allclose(np.linalg.norm(unit_v, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(unit_v, raw_v / np.linalg.norm(raw_v, axis=1, keepdims=True), atol=1e-6)


def test_images_read_by_path_score_like_their_bytes(tiny_image_models, tmp_path):
    blobs = mixed_images()[:3]
    paths = []
    for i, blob in enumerate(blobs):
        (tmp_path / f"img {i}.bin").write_bytes(blob)  # a space: file:// URIs are unquoted
    paths = [str(tmp_path / "img 0.bin"), (tmp_path / "img 1.bin").as_uri(), str(tmp_path / "img 2.bin")]
    _, by_bytes = score("image-embedding", tiny_image_models.dinov2, blobs)
    _, by_path = score("image-embedding", tiny_image_models.dinov2, paths)
    assert by_path.errors == [None] * 3
    np.testing.assert_allclose(np.array(by_path.outputs["embedding"]), np.array(by_bytes.outputs["embedding"]))


# --------------------------------------------------------------------------------------
# Per-row errors, packing, OOM back-off
# --------------------------------------------------------------------------------------


def test_bad_images_are_per_row_errors_and_never_fail_their_batch(tiny_image_models, tmp_path):
    good = mixed_images()[:3]
    (tmp_path / "text.png").write_bytes(b"hello, not an image")
    values = [
        good[0],
        b"not an image",  # (row 15 is other bytes that are no image either)
        truncated_png(),
        encoded(50, 50, "JPEG", 10)[:300],  # cut inside the header
        b"",
        None,
        good[1],
        12345,
        "relative/cat.png",
        str(tmp_path / "missing.png"),
        "https://example.com/cat.png",
        str(tmp_path / "text.png"),
        "file://otherhost/cat.png",
        "",
        good[2],
        b"GIF89a, or so it says",
    ]
    _, result = score("image-classification", tiny_image_models.vit_classifier, values, max_rows=64)
    e = result.errors
    supported = "an absolute local path, file://, s3://, gs://, gcs://, hdfs://, viewfs://, abfs://, abfss://"
    assert e[1] == (
        "input column 'image': the value is not an image Pillow can read (UnidentifiedImageError: cannot "
        "identify image file); expected an encoded image such as PNG, JPEG or WebP"
    )
    assert e[2].startswith(
        "ImageDecodeError: input column 'image': the image is truncated or corrupt (OSError: image file is truncated"
    )
    assert e[3] == "input column 'image': the image is truncated or corrupt (OSError: Truncated File Read)"
    assert e[4] == "input column 'image' is empty (0 bytes); expected an encoded image (PNG, JPEG, WebP, ...)"
    assert e[5] == "input column 'image' is null"
    assert e[7] == (
        "input column 'image' holds a value of type int; expected encoded image bytes (a binary column) "
        "or an image path (a string column)"
    )
    assert e[8] == (
        f"input column 'image': 'relative/cat.png' is a relative path, which executors cannot resolve; give {supported}"
    )
    assert e[9].startswith(f"input column 'image': cannot read '{tmp_path / 'missing.png'}': FileNotFoundError:")
    assert e[10] == (
        "input column 'image': 'https://example.com/cat.png' has an unsupported scheme 'https'; "
        f"supported: {supported}"
    )
    assert e[11].startswith(f"input column 'image': '{tmp_path / 'text.png'}' is not an image Pillow can read")
    assert e[12].startswith("input column 'image': 'file://otherhost/cat.png' names host 'otherhost'")
    assert e[13] == f"input column 'image' is an empty path; expected {supported}"
    # one reason, one wording (no object addresses): explore.failures counts them together
    assert e[15] == e[1]
    # the good rows of the same batch scored, exactly as alone
    ok = [0, 6, 14]
    assert [i for i, err in enumerate(e) if err is None] == ok
    labels, probs = direct_classes(tiny_image_models.vit_classifier, good)
    assert [result.outputs["label"][i] for i in ok] == labels
    np.testing.assert_allclose([result.outputs["score"][i] for i in ok], probs.max(axis=1), atol=ATOL)
    assert all(result.outputs["label"][i] is None for i in range(len(values)) if i not in ok)
    assert result.stats.rows_failed == len(values) - 3
    assert result.stats.batches >= 2  # the truncated PNG was split off; the rest still scored


def test_decompression_bombs_are_refused_by_their_header(tiny_image_models):
    # 12,000 x 12,000 one-bit pixels: 144 M pixels in ~20 KB of PNG, over Pillow's default limit
    buf = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buf, format="PNG")
    bomb = buf.getvalue()
    assert len(bomb) < 100_000
    small = encoded(40, 30, "PNG", 1)  # 1,200 pixels
    _, result = score("image-classification", tiny_image_models.vit_classifier, [bomb, small])
    assert result.errors[0] == (
        "input column 'image': the image has 144,000,000 pixels, over the decompression-bomb limit of "
        f"{DEFAULT_MAX_IMAGE_PIXELS:,} (model.options.max_image_pixels); raise the option if such images "
        "are expected"
    )
    assert result.errors[1] is None
    _, strict = score("image-classification", tiny_image_models.vit_classifier, [small, encoded(30, 30)],
                      {"max_image_pixels": 1000})
    assert "has 1,200 pixels, over the decompression-bomb limit of 1,000" in strict.errors[0]
    assert strict.errors[1] is None  # 900 pixels


def test_batches_are_packed_by_decoded_pixels(tiny_image_models):
    model = get_task("image-classification").load(tiny_image_models.vit_classifier, {}, "cpu", "auto")
    values = [encoded(40, 30, seed=i) for i in range(5)] + [encoded(100, 50, seed=9)]
    frame = pd.DataFrame({"image": values})
    assert model.invalid_rows(frame) == {}
    assert model.lengths(frame).tolist() == [1200] * 5 + [5000]
    seen: list[int] = []

    def predict(inputs):
        seen.append(len(inputs))
        return model.predict(inputs)

    # budget 5,000: the big image alone first (longest first), then 4 x 1,200, then 1
    _, result = score("image-classification", tiny_image_models.vit_classifier, values,
                      predict=predict, max_tokens=5000)
    assert seen == [1, 4, 1] and result.stats.batches == 3
    assert result.errors == [None] * 6


def test_cuda_out_of_memory_halves_image_batches_and_remembers_pixels(tiny_image_models):
    values = [encoded(40, 30, seed=i) for i in range(6)]
    model = get_task("image-classification").load(tiny_image_models.vit_classifier, {}, "cpu", "auto")
    state = BackoffState()

    def predict(inputs):
        if len(inputs) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return model.predict(inputs)

    _, result = score("image-classification", tiny_image_models.vit_classifier, values,
                      predict=predict, state=state)
    assert result.errors == [None] * 6 and result.stats.oom_backoffs >= 1
    assert state.max_tokens == 2 * 1200  # the limit is learned in the rows' unit: pixels
    labels, _ = direct_classes(tiny_image_models.vit_classifier, values)
    assert result.outputs["label"] == labels


# --------------------------------------------------------------------------------------
# Config, options, registration checks
# --------------------------------------------------------------------------------------


def _image_config(**model):
    return config_from_dict({
        "name": "photos",
        "source": {"table": "/lake/photos", "key": "id"},
        "model": {"uri": "/models/vit", "task": "image-classification", "input": "image", **model},
        "output": {"table": "/lake/photos_scored"},
    })


def test_config_takes_a_pixel_budget_and_image_options():
    cfg = _image_config(batch={"max_pixels": 1_000_000}, options={"max_image_pixels": 5_000_000})
    assert cfg.model.batch.max_pixels == 1_000_000 and cfg.model.batch.budget("pixels") == 1_000_000
    assert cfg.model.batch.budget("tokens") == cfg.model.batch.max_tokens == 16384
    assert _image_config().model.batch.max_pixels == 2**25
    with pytest.raises(ConfigError) as err:
        _image_config(batch={"max_pixels": 0}, options={"max_image_pixels": "big", "normalize": True})
    text = str(err.value)
    assert "model.batch.max_pixels: must be >= 1, got 0" in text
    assert "model.options.max_image_pixels: expected an integer" in text
    assert ("model.options.normalize: unknown option for task 'image-classification'; allowed options: "
            "max_image_pixels, return_all_scores") in text
    with pytest.raises(ConfigError, match="model.input: task 'image-embedding' takes exactly one image column"):
        _image_config(task="image-embedding", input=["a", "b"])


def test_register_refuses_directories_that_cannot_serve_image_tasks(tiny_image_models, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    no_processor = tmp_path / "vit_without_processor"
    shutil.copytree(tiny_image_models.vit_classifier, no_processor)
    (no_processor / "preprocessor_config.json").unlink()
    with pytest.raises(ModelError, match=r"has no preprocessor_config.json or processor_config.json: save the "
                                         r"model's processor next to it"):
        register_model(no_processor, "vit", task="image-classification", tracking_uri=uri)
    text_clf = build_classifier(tmp_path / "bert_clf")
    shutil.copy(Path(tiny_image_models.vit_classifier) / "preprocessor_config.json", text_clf)
    with pytest.raises(ModelError, match=r"task 'image-classification' needs an image-classification model .* "
                                         r"has architectures \['BertForSequenceClassification'\]"):
        register_model(text_clf, "bert", task="image-classification", tracking_uri=uri)


def test_clip_registered_for_image_embedding_resolves_through_its_alias(tiny_image_models, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert register_model(tiny_image_models.clip_processor, "clip", task="image-embedding", alias="champion",
                          tracking_uri=uri) == "models:/clip/1"
    resolved = resolve_model("models:/clip@champion", task="image-embedding", tracking_uri=uri,
                             cache_dir=tmp_path / "cache")
    assert (resolved.resolved_uri, resolved.flavor) == ("models:/clip/1", "transformers")
    blobs = mixed_images()[:3]
    _, result = score("image-embedding", resolved.local_dir, blobs)
    np.testing.assert_allclose(np.array(result.outputs["embedding"]),
                               direct_embeddings(tiny_image_models.clip, blobs, "clip"), atol=ATOL)
    with pytest.raises(ModelError, match="registered for task 'image-embedding'"):
        resolve_model("models:/clip@champion", task="image-classification", tracking_uri=uri,
                      cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------------------
# Spark: the end-to-end contract, paths, and the explore helpers
# --------------------------------------------------------------------------------------

PHOTO_SCHEMA = pa.schema([
    ("photo_id", pa.int64()), ("upload_date", pa.string()), ("sku", pa.string()), ("image", pa.binary()),
])


def _write_photos(path: Path, ids: list[int], day: str, images: list[bytes | None]) -> None:
    frame = pd.DataFrame({"photo_id": ids, "upload_date": day, "sku": [f"sku-{i % 3}" for i in ids],
                          "image": images})
    write_deltalake(str(path), pa.Table.from_pandas(frame, schema=PHOTO_SCHEMA, preserve_index=False),
                    partition_by=["upload_date"], mode="append")


def _readme_config(tmp_path: Path, uri: str) -> Path:
    """conf/image_classification.yaml on tables under tmp_path and a local MLflow store."""
    raw = yaml.safe_load((REPO / "conf" / "image_classification.yaml").read_text())
    assert raw["model"]["input"] == "image" and raw["model"]["task"] == "image-classification"
    raw["source"]["table"] = str(tmp_path / "photos")
    raw["output"]["table"] = str(tmp_path / "photos_scored")
    raw["errors"] = {"max_error_rate": 0.5}  # a third of this table is bad on purpose
    raw["mlflow"] = {"tracking_uri": uri, "experiment": "images"}
    raw["run"] = {"num_partitions": 2, "progress": False}
    path = tmp_path / "image_classification.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_vit_registered_with_an_alias_scores_a_delta_table_of_images_on_two_nights(
    spark, tmp_path, tiny_image_models, capsys
):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["register-model", "--path", tiny_image_models.vit_classifier, "--name", "product-photos",
                 "--task", "image-classification", "--alias", "champion", "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "models:/product-photos/1"

    good = [encoded(40, 30, "PNG", 1), encoded(64, 48, "JPEG", 2), encoded(120, 80, "PNG", 3),
            encoded(16, 16, "JPEG", 4), encoded(90, 45, "PNG", 5), encoded(200, 150, "JPEG", 6),
            encoded(31, 77, "PNG", 7), encoded(55, 55, "JPEG", 8)]
    bad = {9: b"<html>not an image</html>", 10: truncated_png(), 11: b"", 12: None}
    first = {**dict(zip(range(1, 9), good, strict=True)), **bad}
    _write_photos(tmp_path / "photos", list(first), "2026-01-01", list(first.values()))
    config = _readme_config(tmp_path, uri)

    assert main(["run", str(config), "--json"]) == 0
    night1 = json.loads(capsys.readouterr().out)
    assert (night1["rows_scored"], night1["rows_failed"]) == (12, 4)
    out = DeltaTable(str(tmp_path / "photos_scored")).to_pandas().sort_values("photo_id").reset_index(drop=True)
    assert out["photo_id"].tolist() == list(range(1, 13))
    assert "image" not in out.columns  # not passed through: the output stays small
    labels, probs = direct_classes(tiny_image_models.vit_classifier, good)
    scored = out[out["photo_id"] <= 8]
    assert scored["label"].tolist() == labels and scored["error"].isna().all()
    np.testing.assert_allclose(scored["score"].to_numpy(), probs.max(axis=1), atol=ATOL)
    errors = dict(zip(out["photo_id"], out["error"], strict=True))
    assert errors[9].startswith("input column 'image': the value is not an image Pillow can read")
    assert errors[10].startswith("ImageDecodeError: input column 'image': the image is truncated or corrupt")
    assert errors[11] == "input column 'image' is empty (0 bytes); expected an encoded image (PNG, JPEG, WebP, ...)"
    assert errors[12] == "input column 'image' is null"
    assert out.loc[out["photo_id"] > 8, ["label", "score"]].isna().all().all()
    assert set(out["model_uri"]) == {"models:/product-photos/1"} and set(out["model_version"]) == {"1"}
    assert out["run_id"].nunique() == 1 and out["sku"].tolist() == [f"sku-{i % 3}" for i in range(1, 13)]
    assert out["input_hash"].nunique() == 12  # every image, the empty one and the null one differ

    # night 2: new photos in a new partition and a late one in night 1's partition: only
    # they are scored; night 1's rows stay as they were (predictions, errors, lineage)
    second = {13: encoded(70, 20, "JPEG", 13), 14: encoded(25, 100, "PNG", 14),
              15: encoded(50, 50, "JPEG", 15)[:300]}
    _write_photos(tmp_path / "photos", list(second), "2026-01-02", list(second.values()))
    late = encoded(45, 60, "PNG", 16)
    _write_photos(tmp_path / "photos", [16], "2026-01-01", [late])
    assert main(["run", str(config), "--json"]) == 0
    night2 = json.loads(capsys.readouterr().out)
    assert (night2["rows_scored"], night2["rows_failed"]) == (4, 1)
    out2 = DeltaTable(str(tmp_path / "photos_scored")).to_pandas().sort_values("photo_id").reset_index(drop=True)
    assert out2["photo_id"].tolist() == list(range(1, 17))
    old = out2[out2["photo_id"] <= 12].reset_index(drop=True)
    columns = ["label", "score", "error", "input_hash", "run_id", "scored_at"]
    pd.testing.assert_frame_equal(old[columns], out[columns])
    new = out2[out2["photo_id"] > 12].reset_index(drop=True)
    assert new["run_id"].nunique() == 1 and new["run_id"][0] != out["run_id"][0]
    labels, probs = direct_classes(tiny_image_models.vit_classifier, [second[13], second[14], late])
    assert new["label"][[0, 1, 3]].tolist() == labels
    np.testing.assert_allclose(new["score"][[0, 1, 3]].to_numpy(), probs.max(axis=1), atol=ATOL)
    assert new["error"][2] == "input column 'image': the image is truncated or corrupt (OSError: Truncated File Read)"

    # the explore helpers on the scored image table
    table = str(tmp_path / "photos_scored")
    fails = explore.failures(table, spark=spark)
    assert fails["count"].sum() == 5 and fails["count"].max() == 1 and len(fails) == 5
    assert set(fails["error"]) == {*[errors[i] for i in (9, 10, 11, 12)], new["error"][2]}
    assert {tuple(k) for k in fails["sample_keys"]} == {(9,), (10,), (11,), (12,), (15,)}
    cmp = explore.compare_versions(table, 0, 1, spark=spark)
    summary = cmp.summary()
    assert (summary["rows_added"], summary["rows_removed"], summary["rows_unchanged"]) == (4, 0, 12)
    assert summary["rows_rescored"] == 0
    assert (summary["failed_old"], summary["failed_new"]) == (4, 5)
    mix = cmp.label_mix.set_index("label")
    assert set(mix.index) <= set(IMAGE_LABELS.values())
    assert mix["count_old"].sum() == 8 and mix["count_new"].sum() == 11
    figure = explore.plot_score_histogram(table, spark=spark)
    assert figure.axes[0].get_xlabel() and len(figure.axes[0].get_legend().get_texts()) == 2


def _path_config(tmp_path: Path, model_dir: str):
    return config_from_dict({
        "name": "photo_paths",
        "source": {"table": str(tmp_path / "paths"), "key": "id"},
        "model": {"uri": model_dir, "task": "image-embedding", "input": "path",
                  "batch": {"max_rows": 2, "max_pixels": 4000}},
        "output": {"table": str(tmp_path / "paths_scored")},
        "errors": {"max_error_rate": 0.5},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "paths"},
        "run": {"progress": False},
    })


def test_image_paths_score_with_a_vision_encoder(spark, tmp_path, tiny_image_models):
    blobs = [encoded(40, 30, "PNG", 1), encoded(64, 48, "JPEG", 2), encoded(20, 90, "WEBP", 3)]
    images = tmp_path / "images"
    images.mkdir()
    for i, blob in enumerate(blobs):
        (images / f"{i}.img").write_bytes(blob)
    paths = [str(images / "0.img"), (images / "1.img").as_uri(), str(images / "2.img"),
             str(images / "gone.png"), "cat.png"]
    frame = pd.DataFrame({"id": range(1, 6), "path": paths})
    write_deltalake(str(tmp_path / "paths"), pa.Table.from_pandas(frame, preserve_index=False))
    result = pipeline.run(_path_config(tmp_path, tiny_image_models.dinov2), spark=spark)
    assert (result.rows_scored, result.rows_failed) == (5, 2)
    out = DeltaTable(str(tmp_path / "paths_scored")).to_pandas().sort_values("id").reset_index(drop=True)
    got = np.array(out["embedding"][:3].tolist())
    np.testing.assert_allclose(got, direct_embeddings(tiny_image_models.dinov2, blobs, "dinov2"), atol=ATOL)
    assert out["error"][3].startswith(f"input column 'path': cannot read '{images / 'gone.png'}': FileNotFoundError")
    assert out["error"][4].startswith("input column 'path': 'cat.png' is a relative path")
    assert out["embedding"][3] is None and out["embedding"][4] is None


def test_score_refuses_a_column_that_holds_no_images(spark, tiny_image_models):
    from spark_scoring import udf

    cfg = _image_config(uri=tiny_image_models.vit_classifier)
    spec = udf.prepare_model(spark, model_dir=tiny_image_models.vit_classifier,
                             model_uri=tiny_image_models.vit_classifier, model_cfg=cfg.model, identity="vit")
    df = spark.createDataFrame([(1, 7)], "id long, image int")
    with pytest.raises(SchemaDriftError, match=r"input column 'image' is int, but task 'image-classification' "
                                               r"scores images: choose a binary column"):
        udf.score(df, spec)
