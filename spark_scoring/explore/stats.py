"""Distribution statistics of two samples, in numpy alone: PSI and the KS statistic.

Pure functions (no Spark): `compare_versions`, `drift_history` and the plots feed them the
per-row measure of two table versions.

Example:
    >>> psi([1, 2, 3, 4], [1, 2, 3, 4])
    0.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from spark_scoring.errors import UsageError

#: Conventional PSI thresholds: below 0.1 stable, 0.1-0.25 moderate shift, above 0.25 major.
PSI_MODERATE = 0.1
PSI_MAJOR = 0.25


def psi(
    expected: Sequence[float] | np.ndarray,
    actual: Sequence[float] | np.ndarray,
    *,
    bins: int = 10,
    eps: float = 1e-4,
) -> float:
    """Population stability index of `actual` against `expected`.

    Bins are cut at the quantiles of `expected` (each holds about 1/`bins` of it; ties
    merge bins), the lowest bin is open below and one more bin holds the values above the
    old maximum, so values outside the old range still count. Shares are clipped at `eps`
    so that an empty bin does not make the index infinite.

    Returns:
        sum((a - e) * ln(a / e)) over the bins; 0 for identical samples, NaN when either
        sample is empty. Rule of thumb: < 0.1 stable, 0.1-0.25 moderate, > 0.25 major shift.

    Example:
        >>> psi([1, 2, 3, 4], [1, 2, 3, 4])
        0.0
    """
    if bins < 2:
        raise UsageError(f"psi bins={bins} is too small; use bins >= 2 (10 is usual)")
    e = _finite(expected)
    a = _finite(actual)
    if e.size == 0 or a.size == 0:
        return math.nan
    # Right-closed bins (-inf, q1], ..., (q9, max], (max, inf): the last one catches values
    # above the old range, and a constant old sample still gets two bins.
    cuts = np.unique(np.append(np.quantile(e, np.linspace(0.0, 1.0, bins + 1)[1:-1]), e.max()))
    e_share = np.bincount(np.searchsorted(cuts, e, side="left"), minlength=cuts.size + 1) / e.size
    a_share = np.bincount(np.searchsorted(cuts, a, side="left"), minlength=cuts.size + 1) / a.size
    e_share = np.clip(e_share, eps, None)
    a_share = np.clip(a_share, eps, None)
    return float(np.sum((a_share - e_share) * np.log(a_share / e_share)))


def ks_statistic(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs.

    Same value as `scipy.stats.ks_2samp(a, b).statistic`, computed with numpy alone.
    NaN when either sample is empty.
    """
    x = np.sort(_finite(a))
    y = np.sort(_finite(b))
    if x.size == 0 or y.size == 0:
        return math.nan
    grid = np.concatenate([x, y])
    cdf_x = np.searchsorted(x, grid, side="right") / x.size
    cdf_y = np.searchsorted(y, grid, side="right") / y.size
    return float(np.max(np.abs(cdf_x - cdf_y)))


def _ks_pvalue(a: np.ndarray, b: np.ndarray, stat: float) -> float:
    """Two-sided p-value of the KS statistic: scipy's (exact for small samples) when scipy is
    installed, else the asymptotic Kolmogorov series with Numerical Recipes' small-sample fix."""
    x, y = _finite(a), _finite(b)
    if math.isnan(stat) or x.size == 0 or y.size == 0:
        return math.nan
    try:
        from scipy.stats import ks_2samp
    except ImportError:
        en = math.sqrt(x.size * y.size / (x.size + y.size))
        lam = (en + 0.12 + 0.11 / en) * stat
        if lam < 1e-3:
            return 1.0
        total = sum(2 * (-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
        return float(min(1.0, max(0.0, total)))
    return float(ks_2samp(x, y).pvalue)


def _finite(values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    return arr[np.isfinite(arr)]
