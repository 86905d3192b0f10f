"""Plots of a scored table: score histograms per version, drift over versions, throughput.

Built with matplotlib and returned as `Figure` objects (never shown), so they render as a
cell's result in Jupyter and Databricks and can be saved with `savefig`.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from spark_scoring.contract import RUN_ID
from spark_scoring.errors import UsageError
from spark_scoring.explore._common import (
    DEFAULT_MAX_VALUES,
    _commit_records,
    _lakehouse,
    _resolve_version,
)
from spark_scoring.explore._measure import _measured_values
from spark_scoring.explore.drift import drift_history
from spark_scoring.explore.stats import PSI_MAJOR, PSI_MODERATE

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from pyspark.sql import SparkSession

#: Mid-luminance colors that keep their contrast on white and, as lines, next to dark UIs.
PALETTE = ("#2f6db5", "#d9822b", "#3a9d5d", "#c0392b", "#7d5ba6", "#8c6d31")
_STYLE: Mapping[str, Any] = {
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "savefig.facecolor": "white",
    "savefig.transparent": False,
    "axes.edgecolor": "#555555",
    "axes.labelcolor": "#222222",
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.grid": True,
    "grid.color": "#cccccc",
    "grid.alpha": 0.6,
    "grid.linewidth": 0.6,
    "xtick.color": "#333333",
    "ytick.color": "#333333",
    "text.color": "#222222",
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_MEASURE_LABELS = {"score": "score", "embedding_norm": "embedding L2 norm"}


def _new_figure(figsize: tuple[float, float] = (8.0, 4.2)) -> tuple[Figure, Any]:
    """A figure detached from pyplot's registry: it renders once, as the cell's result, and
    never again through pyplot's auto-show, and it does not leak between calls."""
    import matplotlib.pyplot as plt

    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    plt.close(fig)
    return fig, ax


def _styled(ax: Any, grid: str = "both") -> None:
    import matplotlib.pyplot as plt

    with plt.rc_context(_STYLE):
        ax.set_axisbelow(True)
        ax.grid(False)
        ax.grid(
            True,
            axis=grid,
            color=_STYLE["grid.color"],
            alpha=_STYLE["grid.alpha"],
            linewidth=_STYLE["grid.linewidth"],
        )


def _note(ax: Any, text: str) -> None:
    """A centred message in place of a plot that has nothing to draw."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _table_label(table: str) -> str:
    """A short table name for titles: the last path component of a path, catalog names as is."""
    if "/" in table or "\\" in table:
        return posixpath.basename(table.replace("\\", "/").rstrip("/")) or table
    return table


def plot_score_histogram(
    table: str,
    versions: Sequence[int] | None = None,
    *,
    measure: str = "auto",
    bins: int = 30,
    max_values: int | None = DEFAULT_MAX_VALUES,
    spark: SparkSession | None = None,
    engine: str = "auto",
) -> Figure:
    """Histogram of the score (or embedding norm) of each version, overlaid on shared bins.

    Args:
        table: path or catalog name of the scored output table.
        versions: versions to draw (negative: count back from the latest); None: the last
            three. The legend names each version's run.
        measure: as in `compare_versions`.
        bins: number of shared histogram bins.
        max_values: draw a seeded sample of about this many rows per version when it has
            more (None: every row).

    Returns:
        The matplotlib Figure (not shown; a notebook renders it as the cell's result).
    """
    lh = _lakehouse(spark, engine)
    latest = lh.latest_version(table)
    chosen = (
        list(range(max(0, latest - 2), latest + 1))
        if versions is None
        else [_resolve_version(lh, table, v) for v in versions]
    )
    if not chosen:
        raise UsageError(
            "versions is empty; pass at least one version (or None for the last three)"
        )
    records = _commit_records(lh, table)
    series: list[tuple[int, np.ndarray]] = []
    name = measure
    for v in chosen:
        name, vals = _measured_values(lh, table, v, measure, max_values)
        series.append((v, vals))
    values = np.concatenate([s for _, s in series]) if series else np.array([])
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if lo == hi:  # a constant measure (e.g. unit-norm embeddings) still gets a visible bar
        pad = max(abs(lo) * 1e-3, 1e-6)
        lo, hi = lo - pad, hi + pad
    edges = np.linspace(lo, hi, bins + 1)

    fig, ax = _new_figure()
    for i, (v, vals) in enumerate(series):
        run = records[v].run_id if v in records else None
        label = f"v{v}" + (f" (run {run[:8]})" if run else "") + f", n={vals.size}"
        weights = np.full(vals.size, 1.0 / vals.size) if vals.size else None
        shared = {"bins": edges, "weights": weights, "color": PALETTE[i % len(PALETTE)]}
        # A light fill shows the area; the outline on top keeps overlaps readable and carries
        # the legend entry.
        ax.hist(vals, histtype="stepfilled", alpha=0.25, **shared)
        ax.hist(vals, histtype="step", linewidth=1.6, label=label, **shared)
    measure_label = _MEASURE_LABELS.get(name, name)
    ax.set_xlabel(measure_label)
    ax.set_ylabel("share of scored rows")
    ax.set_title(
        f"{measure_label} distribution of {_table_label(table)}: "
        + ", ".join(f"v{v}" for v in chosen)
    )
    ax.legend(loc="best", fontsize=9)
    _styled(ax)
    return fig


def plot_drift(
    table: str,
    *,
    max_versions: int = 30,
    measure: str = "auto",
    bins: int = 10,
    max_values: int | None = DEFAULT_MAX_VALUES,
    history: pd.DataFrame | None = None,
    spark: SparkSession | None = None,
    engine: str = "auto",
) -> Figure:
    """PSI of each version against the one before it, over the table's history (nights).

    Dashed lines mark the usual thresholds: 0.1 (moderate shift) and 0.25 (major shift).

    Args:
        table: path or catalog name of the scored output table (named in the title).
        max_versions, measure, bins, max_values: as in `drift_history`.
        history: a `drift_history(table)` result to draw instead of reading the table again.
    """
    hist = history
    if hist is None:
        hist = drift_history(
            table,
            max_versions=max_versions,
            measure=measure,
            bins=bins,
            max_values=max_values,
            spark=spark,
            engine=engine,
        )
    if hist.empty or not {"version", "psi", "timestamp"} <= set(hist.columns):
        raise UsageError("history must be the DataFrame returned by drift_history(table)")
    data = hist.dropna(subset=["psi"])
    fig, ax = _new_figure()
    if data.empty:
        _note(ax, "only one version: nothing to compare yet")
    else:
        ax.plot(
            data["version"],
            data["psi"],
            marker="o",
            color=PALETTE[0],
            linewidth=1.8,
            label="PSI vs previous version",
        )
        for level, color, shift in ((PSI_MODERATE, 1, "moderate"), (PSI_MAJOR, 3, "major")):
            ax.axhline(
                level,
                color=PALETTE[color],
                linestyle="--",
                linewidth=1,
                label=f"{shift} shift ({level})",
            )
        ax.set_xticks(list(data["version"]))
        ax.set_xticklabels(
            [_version_tick(v, t) for v, t in zip(data["version"], data["timestamp"], strict=True)],
            fontsize=8,
        )
        ax.set_ylim(bottom=0, top=max(PSI_MAJOR * 1.2, float(data["psi"].max()) * 1.15))
        ax.legend(loc="upper left", fontsize=9)
    measure_label = _MEASURE_LABELS.get(
        hist.attrs.get("measure", measure), hist.attrs.get("measure", measure)
    )
    first, last = int(hist["version"].min()), int(hist["version"].max())
    ax.set_title(
        f"{measure_label} drift of {_table_label(table)} between consecutive versions (v{first}-v{last})"
    )
    ax.set_xlabel("table version (commit date)")
    ax.set_ylabel("PSI vs previous version")
    _styled(ax)
    return fig


def _version_tick(version: int, timestamp: Any) -> str:
    if timestamp is None or pd.isna(timestamp):
        return f"v{version}"
    return f"v{version}\n{pd.Timestamp(timestamp):%m-%d %H:%M}"


def plot_throughput(runs_df: pd.DataFrame) -> Figure:
    """Rows per second of each run, as bars by table version (input: `list_runs(...)`).

    Runs without `rows_per_second` in MLflow fall back to `rows_scored / seconds_total`;
    commits without either are left out.
    """
    if "version" not in runs_df.columns:
        raise UsageError(
            "plot_throughput needs the DataFrame returned by list_runs(table) (no `version` column)"
        )
    df = runs_df.copy()
    rate = (
        pd.to_numeric(df["rows_per_second"], errors="coerce")
        if "rows_per_second" in df.columns
        else pd.Series(math.nan, index=df.index)
    )
    if {"rows_scored", "seconds_total"} <= set(df.columns):
        seconds = pd.to_numeric(df["seconds_total"], errors="coerce").astype(float)
        derived = pd.to_numeric(df["rows_scored"], errors="coerce").astype(float) / seconds.where(
            seconds > 0
        )
        rate = rate.astype(float).fillna(derived)
    df["__rate"] = rate.astype(float)
    df = df[df["__rate"].notna()].sort_values("version")
    table = runs_df.attrs.get("table")

    fig, ax = _new_figure()
    if df.empty:
        _note(ax, "no run with a recorded throughput")
    else:
        labels = [
            f"v{v}" + (f"\n{str(r)[:8]}" if isinstance(r, str) and r else "")
            for v, r in zip(df["version"], df.get(RUN_ID, [None] * len(df)), strict=True)
        ]
        x = np.arange(len(df))
        bars = ax.bar(x, df["__rate"], color=PALETTE[0], width=0.6)
        ax.bar_label(bars, labels=[f"{r:,.0f}" for r in df["__rate"]], fontsize=8, padding=2)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=8)
        ax.margins(y=0.15)
    ax.set_xlabel("table version (run)")
    ax.set_ylabel("rows / second")
    ax.set_title("Scoring throughput per run" + (f" of {_table_label(table)}" if table else ""))
    _styled(ax, grid="y")  # bars need horizontal guide lines only
    return fig
