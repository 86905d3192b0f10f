"""Entry point that registers a model version in MLflow (= `spark-scoring register-model`).

    python jobs/register_model.py --path ./my-model --name reviews-minilm \
        --task embedding [--alias champion] [--tracking-uri sqlite:///mlflow.db]

Needs no Spark: run it with plain Python (or as a Databricks `spark_python_task`). Only
forwards its arguments to the `spark-scoring` CLI and exits with its code: 0 ok, 1 failed,
2 usage error.
"""

from __future__ import annotations

import sys

from spark_scoring.cli import main

if __name__ == "__main__":
    sys.exit(main(["register-model", *sys.argv[1:]]))
