"""Means and percentile bootstrap intervals over victims, seeded from the suite's name.

Every report figure is a mean over a handful of victims; its interval says how much the figure would move with
other victims. The resamples are drawn from a seed derived from the suite's name, so a report regenerated from the
same store is byte-identical.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from benchmarks.cells import seed_from

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


def bootstrap_interval(
    values: Sequence[float], seed: int, resamples: int = RESAMPLES, level: float = LEVEL
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaNs when fewer than 2 or any is not finite).

    ``resamples`` draws of ``len(values)`` indices with replacement from ``numpy.random.default_rng(seed)``; the
    bounds are the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles (numpy's linear) of the resampled means.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size < 2 or not np.all(np.isfinite(data)):
        return math.nan, math.nan
    indices = np.random.default_rng(seed).integers(0, data.size, size=(resamples, data.size))
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(data[indices].mean(axis=1), [tail, 100.0 - tail])
    return float(low), float(high)


def paired_interval(first: dict[int, float], second: dict[int, float], seed: int) -> tuple[float, float]:
    """Bootstrap interval of the mean per-victim difference ``second - first`` over the victims both have.

    Both settings' values of one victim enter every resample together (a paired bootstrap)."""
    common = sorted(set(first) & set(second))
    return bootstrap_interval([second[v] - first[v] for v in common], seed)
