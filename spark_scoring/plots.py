"""The score distribution plot every publishing run logs to MLflow.

`distribution_values` collects what to plot from the scored rows (the score, or the L2
norm of an embedding), `render_distribution_png` draws it. matplotlib is imported only
when a plot is drawn, on its Agg canvas: no display, no pyplot global state.
"""

from __future__ import annotations

from typing import Any

from spark_scoring.contract import ERROR

#: How many values a plot collects at most (a sample is as telling as all of them).
MAX_VALUES = 20_000


def distribution_values(scored: Any, limit: int = MAX_VALUES) -> tuple[Any, str] | None:
    """(values, kind) to plot for the rows of `scored` that scored, or None when the task
    produces neither a `score` nor an `embedding` column.

    Args:
        scored: a Spark DataFrame of scored rows (with `error`).
        limit: at most this many values are collected to the driver.
    """
    import numpy as np
    from pyspark.sql import functions as F

    ok = scored.filter(F.col(ERROR).isNull())
    if "score" in scored.columns:
        values, kind = ok.select(F.col("score").cast("double").alias("v")), "score"
    elif "embedding" in scored.columns:
        norm = F.sqrt(F.aggregate("embedding", F.lit(0.0).cast("double"), lambda acc, x: acc + x * x))
        values, kind = ok.select(norm.alias("v")), "embedding_norm"
    else:
        return None
    arr = np.array([r["v"] for r in values.limit(limit).collect() if r["v"] is not None], dtype=float)
    return arr, kind


def render_distribution_png(values: Any, kind: str, title: str) -> bytes:
    """A labelled histogram as PNG bytes (Agg canvas; never touches pyplot's global state)."""
    import io

    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arr = np.asarray(values, dtype="float64")
    if kind == "embedding_norm" and arr.ndim == 2:
        arr = np.linalg.norm(arr, axis=1)
    arr = arr.ravel()
    arr = arr[np.isfinite(arr)]
    fig = Figure(figsize=(7, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xlabel = "score" if kind == "score" else "embedding L2 norm"
    if arr.size:
        bins = min(50, max(5, int(np.sqrt(arr.size))))
        ax.hist(arr, bins=bins, color="#3b75af", edgecolor="white")
        ax.axvline(float(np.median(arr)), color="#c44e52", linestyle="--", label=f"median {np.median(arr):.4g}")
        ax.legend(loc="upper left")
    else:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    ax.set_title(f"{title}  [n={arr.size:,}]", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
