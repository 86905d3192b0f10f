"""spark-scoring: nightly batch scoring of Delta tables with Spark and MLflow models.

The public API, importable from the package (loaded on first use, so `import
spark_scoring` stays cheap and starts no JVM):

    >>> from spark_scoring import load_config, run
    >>> result = run(load_config("conf/demo_embedding.yaml"))
    >>> result.status, result.rows_scored, result.output_version
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "JobConfig": "spark_scoring.config",
    "load_config": "spark_scoring.config",
    "config_from_dict": "spark_scoring.config",
    "run": "spark_scoring.pipeline",
    "backfill": "spark_scoring.pipeline",
    "status": "spark_scoring.pipeline",
    "RunResult": "spark_scoring.report",
    "register_model": "spark_scoring.models.register",
    "resolve_model": "spark_scoring.models.resolve",
    "open_lakehouse": "spark_scoring.lakehouse",
    "get_spark": "spark_scoring.session",
    "ScoringError": "spark_scoring.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'spark_scoring' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
