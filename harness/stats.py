"""Statistics for result tables: mean ± std over seeds, IQM with stratified-bootstrap CIs, Wilson intervals.

Seeds are the replication unit: every function here takes per-seed values (episodes already averaged).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) and n."""
    x = np.asarray(values, float)
    n = len(x)
    if n == 0:
        return float("nan"), float("nan"), 0
    return float(x.mean()), float(x.std(ddof=1)) if n > 1 else 0.0, n


def iqm(values: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50 % (scipy.stats.trim_mean with 0.25 per side)."""
    from scipy.stats import trim_mean

    x = np.asarray(values, float).ravel()
    return float(trim_mean(x, 0.25)) if len(x) else float("nan")


def stratified_bootstrap_ci(scores: np.ndarray, statistic=iqm, reps: int = 2000, alpha: float = 0.05,
                            seed: int = 0) -> tuple[float, float, float]:
    """Point estimate and percentile CI of ``statistic`` over a (runs × tasks) matrix.

    Runs (seeds) are resampled with replacement independently within each task column, as in rliable's
    ``StratifiedBootstrap``; a fixed seed keeps tables reproducible.
    """
    x = np.asarray(scores, float)
    if x.ndim == 1:
        x = x[:, None]
    n, m = x.shape
    point = statistic(x)
    if n == 0:
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(reps, n, m))
    cols = np.arange(m)[None, None, :]
    samples = x[idx, cols]
    stats = np.array([statistic(s) for s in samples])
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return point, float(lo), float(hi)


def difference_ci(treated: Sequence[float], control: Sequence[float], reps: int = 2000, alpha: float = 0.05,
                  seed: int = 0) -> tuple[float, float, float]:
    """Mean difference treated − control with a bootstrap CI, each group resampled on its own."""
    a, b = np.asarray(treated, float), np.asarray(control, float)
    if len(a) == 0 or len(b) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    da = a[rng.integers(0, len(a), size=(reps, len(a)))].mean(axis=1)
    db = b[rng.integers(0, len(b), size=(reps, len(b)))].mean(axis=1)
    lo, hi = np.percentile(da - db, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(a.mean() - b.mean()), float(lo), float(hi)


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a pooled proportion (episodes, not seeds)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
