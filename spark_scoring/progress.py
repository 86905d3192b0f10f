"""Console progress for a running job: a line a person can read, refreshed in place.

Where the task counts come from depends on the session, never from the executors:

* classic: Spark's status tracker, polled from a daemon thread on the driver;
* Spark Connect (no SparkContext): the server's progress messages, through a handler
  registered with `SparkSession.registerProgressHandler` for the block's duration.

Rows are not counted while the job runs (Spark Connect has no accumulators, and the
scoring counters come back with the action's result); the caller gives the row count for
the final line with `Progress.rows_done`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, TextIO

from pyspark.sql import SparkSession

from spark_scoring.session import is_connect


def format_eta(seconds: float | None) -> str:
    """`1m05s`-style duration, or `?` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def progress_line(label: str, tasks_done: int, tasks_total: int, elapsed: float, rows: int | None = None) -> str:
    """One progress line.

    While running (`rows` None): tasks done of the stages running now, the share done and
    an ETA extrapolated from the tasks finished so far. At the end (`rows` given): the
    tasks (left out when none were seen), the rows, the time taken and the rows
    per second.
    """
    if rows is not None:
        rate = rows / elapsed if elapsed > 0 else 0.0
        tasks = f"{tasks_done}/{tasks_total} tasks, " if tasks_total else ""
        return f"{label}: {tasks}{rows:,} rows in {format_eta(elapsed)} ({rate:,.0f} rows/s)"
    pct = 100.0 * tasks_done / tasks_total if tasks_total else 0.0
    eta = elapsed * (tasks_total - tasks_done) / tasks_done if tasks_done else None
    return f"{label}: {tasks_done}/{tasks_total} tasks ({pct:.0f}%), {format_eta(elapsed)} so far, ETA {format_eta(eta)}"


class Progress:
    """Context manager printing a progress line every `interval` seconds to `stream`.

    Example:
        >>> with Progress(spark, "scoring") as progress:
        ...     stats = collect_stats(scored)
        ...     progress.rows_done(stats.rows)
    """

    def __init__(
        self,
        spark: SparkSession,
        label: str,
        *,
        enabled: bool = True,
        interval: float = 1.0,
        stream: TextIO | None = None,
    ):
        self._spark = spark
        self._label = label
        self._enabled = enabled
        self._interval = interval
        self._stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0
        self._printed = False
        self._last_total = 0
        self._rows: int | None = None
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._connect = is_connect(spark)
        # Connect: the latest (done, total) the server reported, written by the client's thread.
        self._reported: tuple[int, int] = (0, 0)

    def rows_done(self, rows: int) -> None:
        """The rows the job processed, shown in the final line."""
        self._rows = int(rows)

    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        if self._enabled:
            if self._connect:
                self._spark.registerProgressHandler(self._on_progress)
            self._thread = threading.Thread(target=self._loop, name="spark-scoring-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._connect:
                self._spark.removeProgressHandler(self._on_progress)
            if exc[0] is None:
                self._emit(final=True)
            elif self._printed and self._tty:  # a failed job: end the line, say no more
                self._stream.write("\n")
                self._stream.flush()

    def _on_progress(self, stages: Iterable[Any] | None, inflight_tasks: int, operation_id: str | None, done: bool) -> None:
        # Connect's ProgressHandler: every stage of the running operation, finished ones
        # included. The last message (done=True) can lag behind the stages' counts.
        stages = list(stages or [])
        total = sum(s.num_tasks for s in stages)
        if total:
            self._reported = (total if done else sum(s.num_completed_tasks for s in stages), total)

    def _tasks(self) -> tuple[int, int]:
        if self._connect:
            return self._reported
        tracker = self._spark.sparkContext.statusTracker()
        done = total = 0
        for stage_id in tracker.getActiveStageIds():
            info = tracker.getStageInfo(stage_id)
            if info is not None:
                done += info.numCompletedTasks
                total += info.numTasks
        return done, total

    def _emit(self, final: bool = False) -> None:
        try:
            done, total = self._tasks()
        except Exception:  # noqa: BLE001 - progress must never break a run
            return
        if total:
            self._last_total = total
        if final:  # the job is over: its tasks are complete (the tracker may show none now)
            if not (self._printed or self._last_total or self._rows is not None):
                return
            done = total = self._last_total
        elif not total:
            return
        rows = self._rows if final else None
        line = progress_line(self._label, done, total, time.monotonic() - self._start, rows)
        if self._tty:
            self._stream.write("\r\033[K" + line + ("\n" if final else ""))
        elif final or not self._printed or int(time.monotonic() - self._start) % 10 == 0:
            self._stream.write(line + "\n")
        self._stream.flush()
        self._printed = True

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._emit()
