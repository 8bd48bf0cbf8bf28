"""Intervals for every reported number.

Public API
----------
wilson(k, n, z=1.96) -> (lo, hi)                    95% Wilson interval of a proportion
bootstrap_ci(values, stat=np.mean, n_boot=1000, seed=0) -> (lo, hi)   percentile bootstrap 95% interval
summarize(values) -> dict                           {"mean", "lo", "hi", "n"} with a bootstrap interval
proportion(flags) -> dict                           {"rate", "lo", "hi", "k", "n"} with a Wilson interval

Example::

    proportion([True, False, True])   # {'rate': 0.667, 'lo': 0.208, 'hi': 0.939, 'k': 2, 'n': 3}
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

__all__ = ["wilson", "bootstrap_ci", "summarize", "proportion"]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (``(nan, nan)`` when n == 0)."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the interval always contains p (rounding could put an end a hair inside it at p = 0 or 1)
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def bootstrap_ci(values: Sequence[float] | np.ndarray, stat: Callable[[np.ndarray], float] = np.mean,
                 n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over ``values`` (resampling samples with replacement)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    stats = np.array([stat(x[i]) for i in idx]) if stat is not np.mean else x[idx].mean(axis=1)
    a = (1 - level) / 2
    return (float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a)))


def summarize(values: Sequence[float] | np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean with a bootstrap 95% interval and the sample count."""
    x = np.asarray(values, dtype=float)
    lo, hi = bootstrap_ci(x, n_boot=n_boot, seed=seed)
    return {"mean": float(x.mean()) if x.size else math.nan, "lo": lo, "hi": hi, "n": int(x.size)}


def proportion(flags: Sequence[bool] | np.ndarray) -> dict[str, float]:
    """Rate of True with a Wilson 95% interval, the count and the sample count."""
    x = np.asarray(flags, dtype=bool)
    k, n = int(x.sum()), int(x.size)
    lo, hi = wilson(k, n)
    return {"rate": k / n if n else math.nan, "lo": lo, "hi": hi, "k": k, "n": n}
