"""Intervals (Wilson for proportions, percentile bootstrap for means) and the exact McNemar test
of paired outcomes, shared by the harness (sanity flags) and the reports."""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (Wilson 1927); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Exact ends where the estimate is 0 or 1 (rounding would otherwise exclude it).
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return low, high


def bootstrap_mean(values, n_boot: int = 2000, alpha: float = 0.05,
                   seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, vectorised; a point interval for n < 2."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    # Chunks bound memory at ~2000 x 4096 indices whatever the sample size.
    means = []
    chunk = max(1, 4_000_000 // v.size)
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        idx = rng.integers(0, v.size, size=(k, v.size))
        means.append(v[idx].mean(1))
    m = np.concatenate(means)
    return float(np.quantile(m, alpha / 2)), float(np.quantile(m, 1 - alpha / 2))


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: ``min(1, 2 P[X <= k])``,
    ``X ~ Binomial(lost + gained, 1/2)``, ``k = min(lost, gained)``; 1 without discordance."""
    m = lost + gained
    if m == 0:
        return 1.0
    k = min(lost, gained)
    tail, term = 0, 1  # term = C(m, i), updated in place: O(k) big-integer steps
    for i in range(k + 1):
        tail += term
        term = term * (m - i) // (i + 1)
    return min(1.0, 2 * tail / 2 ** m)  # exact integers, one correctly rounded division
