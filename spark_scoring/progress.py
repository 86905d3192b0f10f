"""Console progress for a running job: a line a person can read, refreshed in place.

It polls Spark's status tracker from a daemon thread on the driver, so it costs the
executors nothing. Rows done come from the scoring accumulators, which Spark updates
as tasks finish.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from pyspark import SparkContext


def format_eta(seconds: float | None) -> str:
    """`1m05s`-style ETA, or `?` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def progress_line(label: str, tasks_done: int, tasks_total: int, rows_done: int, rows_total: int | None, elapsed: float) -> str:
    """One progress line: tasks (Spark partitions) and rows done, rows/s, ETA."""
    rate = rows_done / elapsed if elapsed > 0 else 0.0
    if rows_total:
        pct = min(100.0, 100.0 * rows_done / rows_total)
        eta = (rows_total - rows_done) / rate if rate > 0 else None
        rows = f"{rows_done:,}/{rows_total:,} rows ({pct:.0f}%)"
    else:
        # Without a row total, extrapolate from the partitions (Spark tasks) finished so far.
        eta = elapsed * (tasks_total - tasks_done) / tasks_done if tasks_done else None
        rows = f"{rows_done:,} rows"
    return f"{label}: {tasks_done}/{tasks_total} partitions, {rows}, {rate:,.0f} rows/s, ETA {format_eta(eta)}"


class Progress:
    """Context manager printing a progress line every `interval` seconds to `stream`.

    Example:
        >>> with Progress(spark.sparkContext, "scoring", rows_done=lambda: stats.rows.value):
        ...     df.write...
    """

    def __init__(
        self,
        sc: SparkContext,
        label: str,
        rows_done: Callable[[], int],
        rows_total: int | None = None,
        *,
        enabled: bool = True,
        interval: float = 1.0,
        stream: TextIO | None = None,
    ):
        self._sc = sc
        self._label = label
        self._rows_done = rows_done
        self._rows_total = rows_total
        self._enabled = enabled
        self._interval = interval
        self._stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0
        self._printed = False
        self._last_total = 0
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())

    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        if self._enabled:
            self._thread = threading.Thread(target=self._loop, name="spark-scoring-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._emit(final=True)

    def _tasks(self) -> tuple[int, int]:
        tracker = self._sc.statusTracker()
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
            rows = int(self._rows_done())
        except Exception:  # noqa: BLE001 - progress must never break a run
            return
        if total:
            self._last_total = total
        elif final:  # the stage is over: report it complete rather than "0/0"
            if not self._printed:
                return
            done = total = self._last_total
        line = progress_line(self._label, done, total, rows, self._rows_total, time.monotonic() - self._start)
        if self._tty:
            self._stream.write("\r\033[K" + line + ("\n" if final else ""))
        elif final or not self._printed or int(time.monotonic() - self._start) % 10 == 0:
            self._stream.write(line + "\n")
        self._stream.flush()
        self._printed = True

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._emit()
