"""Means and percentile bootstrap intervals over victims, seeded from the suite's name.

Every report figure is a mean over a handful of victims; its interval says how much the figure would move with
other victims. The plain percentile bootstrap is too narrow for so few (with 8 victims its nominal 95% interval
is about as wide as a 92% t interval), so the percentiles are widened for the sample size: Hesterberg's expanded
percentile interval ("What Teachers Should Know About the Bootstrap", The American Statistician 69, 2015) takes
the percentiles ``Phi(-/+ sqrt(n / (n - 1)) * t(n - 1, (1 + level) / 2))`` of the resampled means instead of
``(1 -/+ level) / 2``. The resamples are drawn from a seed derived from the suite's name, so a report regenerated
from the same store is byte-identical.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy.stats import norm, t

from ..cells import seed_from

RESAMPLES = 2000
LEVEL = 0.95


def mean(values: Iterable[float]) -> float:
    """Exact mean; NaN when empty; an infinity when every infinite value has the same sign, else NaN."""
    items = list(values)
    if not items:
        return math.nan
    infinite = {v for v in items if math.isinf(v)}
    if infinite:
        return infinite.pop() if len(infinite) == 1 else math.nan
    return math.fsum(items) / len(items)


def bootstrap_seed(suite: str) -> int:
    """The bootstrap's seed: fixed by the suite's name, so the same store always gives the same intervals."""
    return seed_from("report-bootstrap", suite)


def expanded_tail(count: int, level: float = LEVEL) -> float:
    """The lower percentile (in %) of the expanded percentile interval of ``count`` values (module docstring)."""
    return 100.0 * float(norm.cdf(-math.sqrt(count / (count - 1)) * t.ppf((1.0 + level) / 2.0, count - 1)))


def bootstrap_interval(
    values: Sequence[float], seed: int, resamples: int = RESAMPLES, level: float = LEVEL
) -> tuple[float, float]:
    """Expanded percentile bootstrap interval of the mean of ``values`` (NaNs when fewer than 2 or not all finite).

    ``resamples`` draws of ``len(values)`` indices with replacement from ``numpy.random.default_rng(seed)``; the
    bounds are the ``expanded_tail`` and ``100 - expanded_tail`` percentiles (numpy's linear) of the resampled means.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size < 2 or not np.all(np.isfinite(data)):
        return math.nan, math.nan
    indices = np.random.default_rng(seed).integers(0, data.size, size=(resamples, data.size))
    tail = expanded_tail(data.size, level)
    low, high = np.percentile(data[indices].mean(axis=1), [tail, 100.0 - tail])
    return float(low), float(high)


def paired_interval(first: dict[int, float], second: dict[int, float], seed: int) -> tuple[float, float]:
    """Bootstrap interval of the mean per-victim difference ``second - first`` over the victims both have.

    Both settings' values of one victim enter every resample together (a paired bootstrap)."""
    common = sorted(set(first) & set(second))
    return bootstrap_interval([second[v] - first[v] for v in common], seed)
