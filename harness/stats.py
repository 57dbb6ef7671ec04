"""Statistics for result tables: mean ± std over seeds, IQM with stratified-bootstrap CIs, paired Student-t
intervals for gains, Wilson intervals.

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


def iqm(values: np.ndarray, axis: int | None = None) -> float | np.ndarray:
    """Interquartile mean: the mean of the middle 50 % (scipy.stats.trim_mean with 0.25 per side).

    ``axis=None`` pools every value; an axis gives one IQM per slice along the other axes.
    """
    from scipy.stats import trim_mean

    x = np.asarray(values, float)
    if axis is None:
        x = x.ravel()
        return float(trim_mean(x, 0.25)) if len(x) else float("nan")
    return trim_mean(x, 0.25, axis=axis)


def stratified_bootstrap_ci(scores: np.ndarray, statistic=iqm, reps: int = 2000, alpha: float = 0.05,
                            seed: int = 0) -> tuple[float, float, float]:
    """Point estimate and percentile CI of ``statistic`` over a (runs × tasks) matrix.

    Runs (seeds) are resampled with replacement independently within each task column, as in rliable's
    ``StratifiedBootstrap``; a fixed seed keeps tables reproducible. The IQM of all resamples is computed in
    one vectorised call (the same numbers as one call per resample); other statistics are called per
    resample.
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
    if statistic is iqm:
        stats = iqm(samples.reshape(reps, n * m), axis=1)
    else:
        stats = np.array([statistic(s) for s in samples])
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return point, float(lo), float(hi)


def t_interval(values: Sequence[float], alpha: float = 0.05) -> tuple[float, float]:
    """Student-t interval of the mean (n − 1 degrees of freedom); NaN bounds for fewer than 2 values."""
    from scipy.stats import t

    x = np.asarray(values, float)
    n = len(x)
    if n < 2:
        return float("nan"), float("nan")
    half = float(t.ppf(1 - alpha / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return float(x.mean()) - half, float(x.mean()) + half


def paired_t_ci(treated: dict[int, float], control: dict[int, float],
                alpha: float = 0.05) -> tuple[float, float, float, int]:
    """Mean of the paired differences treated − control over the replications both have, with a Student-t
    interval (n − 1 degrees of freedom), and n. With n = 1 there is no interval (NaN bounds)."""
    from scipy.stats import t

    keys = sorted(set(treated) & set(control))
    d = np.array([treated[k] - control[k] for k in keys], float)
    n = len(d)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(d.mean())
    if n == 1:
        return mean, float("nan"), float("nan"), 1
    half = float(t.ppf(1 - alpha / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a pooled proportion (episodes, not seeds)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
