"""spark-submit entry point for the nightly scoring run (= `spark-scoring run`).

    spark-submit --master spark://host:7077 jobs/nightly_score.py conf/demo_embedding.yaml \
        [--set key=value ...] [--full-refresh] [--dry-run] [--json] [-v]

Only forwards its arguments to the `spark-scoring` CLI and exits with its code: 0 ok,
1 run failed (nothing published), 2 usage or config error. The master, deploy mode and
every `--conf` come from spark-submit; the job never overrides them.
"""

from __future__ import annotations

import sys

from spark_scoring.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
