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


def test_progress_line_while_running_and_at_the_end():
    assert progress_line("scoring", 2, 8, elapsed=10.0) == "scoring: 2/8 tasks (25%), 10s so far, ETA 30s"
    assert progress_line("scoring", 0, 8, elapsed=1.0) == "scoring: 0/8 tasks (0%), 1s so far, ETA ?"
    assert progress_line("scoring", 8, 8, elapsed=40.0, rows=2000) == "scoring: 8/8 tasks, 2,000 rows in 40s (50 rows/s)"
    # a job too short for the tracker to show a stage: no "0/0 tasks"
    assert progress_line("scoring", 0, 0, elapsed=2.0, rows=10) == "scoring: 10 rows in 2s (5 rows/s)"


def test_progress_reports_a_running_spark_job(spark):
    # (functions for the executors are defined inside the tests: pickled by value, so the
    # workers need not import this module)
    def _slow(it):
        import time

        for pdf in it:
            time.sleep(0.5)
            yield pdf

    stream = io.StringIO()
    with Progress(spark, "scoring", enabled=True, interval=0.2, stream=stream) as progress:
        rows = spark.range(200).repartition(4).mapInPandas(_slow, "id long").count()
        progress.rows_done(rows)
    lines = stream.getvalue().strip().splitlines()
    assert len(lines) >= 2, lines  # a line while running, then the final one
    assert any(" tasks (" in line and "ETA" in line for line in lines[:-1]), lines
    assert lines[-1].startswith("scoring: ") and ", 200 rows in " in lines[-1], lines


def test_a_failed_job_prints_no_final_line(spark):
    stream = io.StringIO()

    def boom(it):
        for _ in it:
            raise ValueError("boom")
        yield  # pragma: no cover

    try:
        with Progress(spark, "scoring", enabled=True, interval=0.2, stream=stream):
            spark.range(4).mapInPandas(boom, "id long").count()
    except Exception:  # noqa: BLE001 - the job's own error
        pass
    else:  # pragma: no cover
        raise AssertionError("the job did not fail")
    assert " rows in " not in stream.getvalue()


def test_disabled_progress_prints_nothing(spark):
    stream = io.StringIO()
    with Progress(spark, "scoring", enabled=False, stream=stream) as progress:
        progress.rows_done(spark.range(3).count())
    assert stream.getvalue() == ""
