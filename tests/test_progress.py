"""The console progress line."""

from __future__ import annotations

import io

from spark_scoring.progress import Progress, format_eta, progress_line


def test_format_eta():
    assert format_eta(None) == "?"
    assert format_eta(float("nan")) == "?"
    assert format_eta(42.4) == "42s"
    assert format_eta(65) == "1m05s"
    assert format_eta(3 * 3600 + 120) == "3h02m"


def test_progress_line_with_and_without_row_total():
    line = progress_line("scoring", 2, 8, 500, 2000, elapsed=10.0)
    assert line == "scoring: 2/8 partitions, 500/2,000 rows (25%), 50 rows/s, ETA 30s"
    line = progress_line("scoring", 2, 8, 500, None, elapsed=10.0)
    assert line == "scoring: 2/8 partitions, 500 rows, 50 rows/s, ETA 30s"  # 6 of 8 tasks left
    assert progress_line("scoring", 0, 8, 0, None, elapsed=1.0).endswith("ETA ?")


def test_progress_reports_a_running_spark_job(spark):
    stream = io.StringIO()
    rows = spark.sparkContext.accumulator(0)

    def slow(it):
        import time

        for x in it:
            time.sleep(0.01)
            rows.add(1)
            yield x

    with Progress(spark.sparkContext, "scoring", lambda: rows.value, enabled=True, interval=0.2, stream=stream):
        spark.sparkContext.parallelize(range(200), 4).mapPartitions(slow).count()
    lines = stream.getvalue().strip().splitlines()
    assert lines, "no progress printed"
    assert lines[-1].startswith("scoring: 4/4 partitions, 200 rows")
