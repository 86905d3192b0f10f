"""spark-submit entry point for a backfill (= `spark-scoring backfill`).

    spark-submit --master spark://host:7077 jobs/backfill.py conf/demo_embedding.yaml \
        (--partition event_date=2024-05-01 ... | --from 2024-05-01 --to 2024-05-07) [--dry-run]

Rescores chosen partitions without moving the nightly watermark. Only forwards its
arguments to the `spark-scoring` CLI and exits with its code: 0 ok, 1 run failed (nothing
published), 2 usage or config error.
"""

from __future__ import annotations

import sys

from spark_scoring.cli import main

if __name__ == "__main__":
    sys.exit(main(["backfill", *sys.argv[1:]]))
