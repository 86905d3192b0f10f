"""`python -m bench.images`: images/s of the image-classification task against a plain process.

The same deterministic JPEG photos (mixed sizes, 320 x 240 to 1024 x 768) are classified
with the same ViT by
  plain process      one process, torch threads = cores: Pillow decode (transformers'
                     `load_image`), the model's image processor and the model, 32 images a call
  cold CLI run       `spark-scoring run CONFIG` in a fresh process on a Delta table of the
                     images (binary column): JVM start, planning, model load in every
                     Python worker, scoring, the commit and MLflow, all in the wall time
  warm marginal      `pipeline.run(cfg, full_refresh=True)` in this process after a warm-up
                     run (workers hold the model): rows_scored / seconds["score"]
The plain process runs first and again last; "x plain" divides by the mean of the two.

No pretrained vision model is reachable here, so the model is a ViT-Tiny-shaped ViT
(224 x 224, patch 16, hidden 192, 12 layers, 3 heads: 5.5 M parameters, about 1.3 GFLOPs
an image) with seeded random weights: compute per image is that of a real ViT-Tiny,
its labels mean nothing. Keep runs small on a shared machine: the default is 480 images.

Results: bench/results/<YYYY-MM-DD>-<machine>-images.json (raw figures, machine) and the
table printed at the end.

Example:
    python -m bench.images --images 480 --cores 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
#: (width, height) of the photos, drawn in turn: what a product-photo table holds.
SIZES = ((320, 240), (640, 480), (800, 600), (1024, 768), (500, 500), (480, 640))
PLAIN_BATCH = 32


def _log(msg: str) -> None:
    print(f"[bench.images {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.images", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=480, help="photos scored by every peer (default 480)")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                   help="local[N] and the plain process's torch threads (default: all cores)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary tables for inspection")
    args = p.parse_args(argv)
    if args.images < 8 or args.cores < 1:
        p.error("need --images >= 8 and --cores >= 1")
    return args


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def photos(n: int, seed: int = 20260101) -> list[bytes]:
    """`n` JPEGs (quality 85) of the `SIZES` in turn: smooth colour fields plus noise, so
    that they decode like photos (not like flat colour); deterministic in `seed`."""
    import numpy as np
    from PIL import Image

    out = []
    for i in range(n):
        width, height = SIZES[i % len(SIZES)]
        rng = np.random.default_rng(seed + i)
        small = rng.uniform(0, 255, (height // 32 + 2, width // 32 + 2, 3)).astype(np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
        noisy = np.asarray(image, dtype=np.int16) + rng.integers(-12, 12, (height, width, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def build_source(path: Path, blobs: Sequence[bytes], days: int = 2) -> None:
    """A Delta table `id, day, image` of `blobs`, spread evenly over `days` partitions."""
    import pyarrow as pa
    from deltalake import write_deltalake

    shutil.rmtree(path, ignore_errors=True)
    names = [(dt.date(2026, 1, 1) + dt.timedelta(days=d)).isoformat() for d in range(days)]
    table = pa.table({
        "id": pa.array(range(1, len(blobs) + 1), pa.int64()),
        "day": [names[i * days // len(blobs)] for i in range(len(blobs))],
        "image": pa.array(list(blobs), pa.binary()),
    })
    write_deltalake(str(path), table, partition_by=["day"], mode="overwrite")


def vit_tiny(dest: Path) -> str:
    """The ViT-Tiny-shaped classifier (seeded random weights) and its image processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    labels = {i: f"class_{i}" for i in range(10)}
    cfg = ViTConfig(image_size=224, patch_size=16, hidden_size=192, num_hidden_layers=12,
                    num_attention_heads=3, intermediate_size=768, num_labels=10,
                    id2label=labels, label2id={v: k for k, v in labels.items()})
    ViTForImageClassification(cfg).eval().save_pretrained(dest)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(dest)
    return str(dest)


def job_config(work: Path, name: str, source: Path, model_dir: str, cores: int) -> dict[str, Any]:
    """The job config (plain data) of our runs: conf/image_classification.yaml's settings."""
    return {
        "name": name,
        "source": {"table": str(source), "key": "id", "partition_by": ["day"]},
        "model": {"uri": model_dir, "task": "image-classification", "input": "image",
                  "batch": {"max_rows": 64, "max_pixels": 2**25}},
        "output": {"table": str(work / f"{name}_out")},
        "mlflow": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "experiment": "bench-images"},
        "spark": {"master": f"local[{cores}]", "conf": {
            "spark.ui.enabled": "false",
            "spark.executorEnv.OMP_NUM_THREADS": "1",
            "spark.sql.execution.arrow.maxBytesPerBatch": str(64 * 2**20),
        }},
        "run": {"progress": False},
    }


# --------------------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------------------


def plain_process(model_dir: str, blobs: Sequence[bytes], threads: int) -> dict[str, Any]:
    """Decode, process and classify in this process, `PLAIN_BATCH` images a call."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification
    from transformers.image_utils import load_image

    torch.set_num_threads(threads)
    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()

    def run(batch: Sequence[bytes]) -> None:
        images = [load_image(Image.open(io.BytesIO(b))) for b in batch]
        with torch.inference_mode():
            model(**processor(images=images, return_tensors="pt")).logits.argmax(-1)

    run(blobs[:PLAIN_BATCH])  # warm-up
    t = time.perf_counter()
    for start in range(0, len(blobs), PLAIN_BATCH):
        run(blobs[start : start + PLAIN_BATCH])
    seconds = time.perf_counter() - t
    return {"name": "plain process", "images": len(blobs), "seconds": round(seconds, 2),
            "images_per_s": round(len(blobs) / seconds, 1),
            "config": f"torch threads {threads}, batch {PLAIN_BATCH}, load_image + AutoImageProcessor"}


def cold_cli_run(work: Path, source: Path, model_dir: str, cores: int, n: int) -> dict[str, Any]:
    """`spark-scoring run CONFIG` in a fresh Python process (a JVM of its own)."""
    import yaml

    config = work / "cold.yaml"
    config.write_text(yaml.safe_dump(job_config(work, "bench_images_cold", source, model_dir, cores)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "spark_scoring.cli", "run", str(config), "--json"],
                          env=env, capture_output=True, text=True, cwd=work, check=False)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"spark-scoring run failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    return {"name": "cold CLI run", "images": result["rows_scored"], "seconds": round(wall, 2),
            "images_per_s": round(n / wall, 1), "phases_s": result.get("seconds"),
            "config": f"spark-scoring run, local[{cores}], 1 torch thread per task, whole wall time"}


def warm_marginal(work: Path, source: Path, warm_source: Path, model_dir: str, cores: int) -> dict[str, Any]:
    """A warm-up run, then a full run in this process: rows_scored / seconds["score"]."""
    from spark_scoring import pipeline
    from spark_scoring.config import config_from_dict
    from spark_scoring.session import get_spark

    raw = job_config(work, "bench_images_warm", source, model_dir, cores)
    cfg = config_from_dict(raw)
    spark = get_spark(cfg.spark, app_name="spark-scoring-bench-images")
    try:
        warm_raw = {**raw, "name": "bench_images_warmup", "source": {**raw["source"], "table": str(warm_source)},
                    "output": {"table": str(work / "warmup_out")}}
        pipeline.run(config_from_dict(warm_raw), spark=spark)
        t = time.perf_counter()
        result = pipeline.run(cfg, full_refresh=True, spark=spark)
        wall = time.perf_counter() - t
    finally:
        spark.stop()
    score_s = result.seconds["score"]
    return {"name": "warm marginal", "images": result.rows_scored, "seconds": round(score_s, 2),
            "images_per_s": round(result.rows_scored / score_s, 1), "run_wall_s": round(wall, 2),
            "phases_s": dict(result.seconds),
            "config": f"pipeline.run after a warm-up run, local[{cores}], 1 torch thread per task"}


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def markdown(out: dict[str, Any]) -> str:
    """The figures as a table: images/s and the ratio to the plain process."""
    peers = out["results"]
    plains = [p["images_per_s"] for p in peers if p["name"] == "plain process"]
    plain = sum(plains) / len(plains) if plains else None  # x plain: against their mean
    lines = [
        f"image-classification, {out['images']} JPEGs {out['sizes']}, {out['model']}, "
        f"{out['machine']['cores_used']} cores ({out['machine']['cpu_model']}), load {out['machine']['load_avg_at_start']}",
        "",
        "| peer | images/s | x plain | seconds | set-up |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for p in peers:
        ratio = f"{p['images_per_s'] / plain:.2f}" if plain else "-"
        lines.append(f"| {p['name']} | {p['images_per_s']:.1f} | {ratio} | {p['seconds']:.1f} | {p['config']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the three peers and write the results file; returns an exit code."""
    args = _parse(argv)
    for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                       "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}.items():
        os.environ.setdefault(key, value)
    from bench import report

    started = dt.datetime.now()
    work = Path(tempfile.mkdtemp(prefix="spark-scoring-bench-images-"))
    out: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.images", *(argv if argv is not None else sys.argv[1:])]),
        "images": args.images, "sizes": [f"{w}x{h}" for w, h in SIZES],
        "model": "ViT-Tiny-shaped ViTForImageClassification (224/16, 192 x 12, random weights)",
        "machine": report.machine_info(args.cores), "results": [],
    }
    try:
        _log(f"work dir {work}; {args.images} photos, {args.cores} cores")
        blobs = photos(args.images)
        out["mean_kib"] = round(sum(map(len, blobs)) / len(blobs) / 1024, 1)
        model_dir = vit_tiny(work / "vit_tiny")
        build_source(work / "src", blobs)
        build_source(work / "warm_src", photos(4 * args.cores, seed=7), days=2)
        for label, peer in (
            ("plain process", lambda: plain_process(model_dir, blobs, args.cores)),
            ("cold CLI run", lambda: cold_cli_run(work, work / "src", model_dir, args.cores, args.images)),
            ("warm marginal", lambda: warm_marginal(work, work / "src", work / "warm_src", model_dir, args.cores)),
            # again at the end: on a shared machine the first figure alone can be far off
            ("plain process", lambda: plain_process(model_dir, blobs, args.cores)),
        ):
            _log(label)
            out["results"].append(peer())
            _log(f"  {out['results'][-1]['images_per_s']:.1f} images/s")
    finally:
        if not args.keep_tmp:
            shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{started.date().isoformat()}-{report.machine_name(out['machine'])}-images.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
    print(markdown(out))
    _log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
