"""Benchmark inputs: deterministic review texts, Delta source tables, a cheap stand-in model.

Every peer in `bench.run` scores the SAME texts: `review_texts(n, seed)` is a pure
function of its arguments (no global random state), so two runs on two machines score the
same strings in the same order.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa

from spark_scoring.demo import review

#: Word counts of the generated texts (inclusive bounds).
MIN_WORDS, MAX_WORDS = 5, 60

SOURCE_SCHEMA = pa.schema(
    [("id", pa.int64()), ("day", pa.string()), ("lang", pa.string()), ("text", pa.string())]
)

FIRST_DAY = date(2026, 1, 1)


def review_texts(n: int, seed: int = 20260101) -> list[str]:
    """`n` short review-like texts of MIN_WORDS..MAX_WORDS words, deterministic in `seed`.

    Lengths are skewed towards short reviews (most 10-30 words, a tail up to 60), which
    is what makes padding matter: a batch padded to its longest row wastes most of its
    compute when lengths vary this much.
    """
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        target = MIN_WORDS + int((MAX_WORDS - MIN_WORDS) * rng.betavariate(1.6, 3.2) + 0.5)
        words: list[str] = []
        while len(words) < target:
            words.extend(review(rng)[1].split())
        texts.append(" ".join(words[:target]))
    return texts


def source_frame(texts: Sequence[str], days: Sequence[str], first_id: int = 1) -> pd.DataFrame:
    """Rows `id, day, lang, text` with the texts spread evenly (in order) over `days`."""
    n = len(texts)
    per_day = -(-n // max(1, len(days)))
    return pd.DataFrame(
        {
            "id": range(first_id, first_id + n),
            "day": [days[min(i // per_day, len(days) - 1)] for i in range(n)],
            "lang": ["en"] * n,
            "text": list(texts),
        }
    )


def day_names(count: int, start: date = FIRST_DAY) -> list[str]:
    """`count` consecutive ISO dates as strings (the partition values)."""
    return [(start + timedelta(days=i)).isoformat() for i in range(count)]


def write_source(path: Path, df: pd.DataFrame, mode: str = "append") -> int:
    """Write rows to the Delta source table (partitioned by `day`) with delta-rs; returns
    the new table version."""
    from deltalake import DeltaTable, write_deltalake

    table = pa.Table.from_pandas(df, schema=SOURCE_SCHEMA, preserve_index=False)
    write_deltalake(str(path), table, partition_by=["day"], mode=mode)
    return DeltaTable(str(path)).version()


def build_source(path: Path, texts: Sequence[str], days: int) -> int:
    """A fresh Delta source table of `texts` over `days` date partitions; returns its version."""
    shutil.rmtree(path, ignore_errors=True)
    return write_source(path, source_frame(texts, day_names(days)), mode="overwrite")


def write_parquet(path: Path, texts: Sequence[str]) -> str:
    """The same texts as one Parquet file (`id`, `text`) for the plain-Spark peers, which a
    user without a Delta connector would read this way."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": pa.array(range(1, len(texts) + 1), pa.int64()), "text": list(texts)}), path)
    return str(path)


def tiny_bert(target: Path, tokenizer_from: str, seed: int = 0) -> str:
    """A tiny random BERT encoder (hidden 32, 2 layers) with MiniLM's tokenizer files.

    It is the stand-in model of the cost-growth runs: those measure IO, planning and
    commit costs, which a real model's compute would drown. No `modules.json`, so the
    embedding task mean-pools it (`AutoModel` + `AutoTokenizer`).
    """
    import torch
    from transformers import BertConfig, BertModel

    if (target / "config.json").is_file():
        return str(target)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        src = Path(tokenizer_from) / name
        if src.is_file():
            shutil.copy(src, target / name)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).eval().save_pretrained(str(target))
    return str(target)
