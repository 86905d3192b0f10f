"""Helpers for end-to-end pipeline tests: small real source tables and job configs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from spark_scoring.config import JobConfig, config_from_dict

SOURCE_SCHEMA = pa.schema([("id", pa.int64()), ("day", pa.string()), ("lang", pa.string()), ("text", pa.string())])


def source_rows(ids: Sequence[int], day: str, lang: str = "en", text: str | None = None) -> pd.DataFrame:
    """Rows with deterministic texts: `review number N about topic N % 7`."""
    return pd.DataFrame(
        {
            "id": list(ids),
            "day": [day] * len(ids),
            "lang": [lang] * len(ids),
            "text": [text if text is not None else f"review number {i} about topic {i % 7}" for i in ids],
        }
    )


def write_source(path: Path, df: pd.DataFrame, mode: str = "append") -> int:
    """Append (or overwrite) rows to the source table; returns the new version."""
    write_deltalake(str(path), pa.Table.from_pandas(df, schema=SOURCE_SCHEMA, preserve_index=False),
                    partition_by=["day"], mode=mode)
    return DeltaTable(str(path)).version()


def job_config(tmp_path: Path, model_dir: str, **overrides: Any) -> JobConfig:
    """A job config on tables under tmp_path with a tmp MLflow store."""
    raw: dict[str, Any] = {
        "name": "test_job",
        "source": {"table": str(tmp_path / "source"), "key": "id", "partition_by": ["day"], "passthrough": ["lang"]},
        "model": {"uri": model_dir, "task": "embedding", "input": "text"},
        "output": {"table": str(tmp_path / "output")},
        "errors": {"max_error_rate": 0.5},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "tests"},
        "run": {"progress": False},
        # The engine the pipeline tests run on unless a test says otherwise.
        "lakehouse": {"engine": os.environ.get("SPARK_SCORING_TEST_ENGINE", "delta-rs")},
    }
    for dotted, value in overrides.items():
        node = raw
        parts = dotted.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return config_from_dict(raw)


def read_output(path: Path) -> pd.DataFrame:
    """The output table through an independent reader (delta-rs), sorted by id."""
    return DeltaTable(str(path)).to_pandas().sort_values("id").reset_index(drop=True)


def full_refresh_of(tmp_path: Path, spark: Any, model_dir: str, name: str = "reference", **overrides: Any) -> pd.DataFrame:
    """What a full refresh at the current source version produces (into a separate table)."""
    from spark_scoring import pipeline

    cfg = job_config(tmp_path, model_dir, name=name, output__table=str(tmp_path / name), **overrides)
    pipeline.run(cfg, full_refresh=True, spark=spark)
    return read_output(tmp_path / name)


def assert_same_rows(a: pd.DataFrame, b: pd.DataFrame, passthrough: Sequence[str] = ("day", "lang")) -> None:
    """Same keys, partitions, passthrough, inputs hash and embeddings (within 1e-4)."""
    import numpy as np

    a, b = a.sort_values("id").reset_index(drop=True), b.sort_values("id").reset_index(drop=True)
    assert a["id"].tolist() == b["id"].tolist()
    for col in (*passthrough, "input_hash", "error"):
        assert a[col].tolist() == b[col].tolist(), col
    ok = a["error"].isna()
    np.testing.assert_allclose(np.stack(a.loc[ok, "embedding"]), np.stack(b.loc[ok, "embedding"]), atol=1e-4)
