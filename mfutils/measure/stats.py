"""Intervals for every reported number.

Public API
----------
wilson(k, n, z=1.96) -> (lo, hi)                    95% Wilson interval of a proportion
bootstrap_ci(values, stat=np.mean, n_boot=1000, seed=0) -> (lo, hi)   percentile bootstrap 95% interval
summarize(values) -> dict                           {"mean", "lo", "hi", "n"} with a bootstrap interval
proportion(flags) -> dict                           {"rate", "lo", "hi", "k", "n"} with a Wilson interval
rate(flags) -> float                                k / n of flags [N] (NaN when n == 0), as ``proportion``
spread(values) -> {"mean", "sd"}                    over the finite values (sd with ddof = 1)
relative_change(base, x) -> ndarray                 (mean(base) - mean(x)) / mean(base) along the last axis
relative_drop(base, blocked, n_boot=1000, seed=0) -> {"mean", "lo", "hi", "n"}   paired bootstrap interval
paired_bootstrap(stat, arrays, n_boot=1000, seed=0) -> {"value", "lo", "hi", "n"}   any statistic of paired [N] arrays
empirical_p(observed, null) -> {"p", "count", "n", "resolution"}    share of null draws at least as strong (+1 rule)
null_summary(values, n_boot=1000, seed=0) -> dict   a control distribution: mean [interval], sd, 95th percentile, n
newcombe(k1, n1, k2, n2) -> {"diff", "lo", "hi", "n1", "n2"}   p1 - p2 with the Newcombe (Wilson score) 95% interval
diff_of_means(a, b, n_boot=1000, seed=0) -> {"value", "lo", "hi", "n1", "n2"}   mean(a) - mean(b), two independent
                                                    samples, each resampled on its own (percentile interval)

Example::

    proportion([True, False, True])   # {'rate': 0.667, 'lo': 0.208, 'hi': 0.939, 'k': 2, 'n': 3}
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

__all__ = ["wilson", "bootstrap_ci", "summarize", "proportion", "rate", "spread", "relative_change", "relative_drop",
           "paired_bootstrap", "empirical_p", "null_summary", "newcombe", "diff_of_means"]


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


def rate(flags: Sequence[bool] | np.ndarray) -> float:
    """k / n of ``flags`` [N] in float64, exactly as ``proportion`` computes it (NaN when n == 0).

    Example: ``rate(follows(mm, samples))``.
    """
    return float(proportion(np.asarray(flags))["rate"])


def spread(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """{"mean", "sd"} over the finite ``values`` (sd with ddof = 1; NaN with fewer than 2 values).

    Example: ``spread([0.5, 0.7])`` -> ``{"mean": 0.6, "sd": 0.141}``.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return {"mean": float(v.mean()) if v.size else math.nan, "sd": float(v.std(ddof=1)) if v.size > 1 else math.nan}


def relative_change(b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(mean(b) - mean(x)) / mean(b) along the last axis; NaN where mean(b) == 0 (or is not positive).

    Example: ``float(relative_change(np.array([1., 1.]), np.array([1., 0.])))`` -> 0.5.
    """
    bm, xm = b.mean(-1), x.mean(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(bm > 0, (bm - xm) / np.where(bm > 0, bm, 1.0), np.nan)


def relative_drop(base: Sequence[bool] | np.ndarray, blocked: Sequence[bool] | np.ndarray, n_boot: int = 1000,
                  seed: int = 0) -> dict[str, float]:
    """Relative MFR drop (MFR_base - MFR_blocked) / MFR_base with a paired bootstrap 95% interval.

    ``base``, ``blocked``: per-sample follow flags [N] of the same samples (arrays or tensors); the bootstrap
    resamples samples (pairs). NaN where MFR_base is 0 or N is 0.

    Example::

        relative_drop(follows(mm, data), follows(mm, data, heads=identified))   # {"mean": 0.6, "lo": .., "hi": .., "n": 400}
    """
    b = np.asarray(base, dtype=float)
    x = np.asarray(blocked, dtype=float)
    if b.shape != x.shape or b.ndim != 1:
        raise ValueError(f"base and blocked must be matching [N] flags, got {b.shape} and {x.shape}")
    n = b.size
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    point = float(relative_change(b, x))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boots = relative_change(b[idx], x[idx])
    boots = boots[np.isfinite(boots)]
    lo, hi = (float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))) if boots.size else (math.nan,) * 2
    return {"mean": point, "lo": lo, "hi": hi, "n": int(n)}


def paired_bootstrap(stat: Callable[..., float], arrays: Sequence[np.ndarray], n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """``stat(*arrays)`` with a percentile bootstrap interval that resamples the samples (rows) of every array
    together: ``arrays`` are [N] (or [N, ...]) arrays of the same samples.

    Non-finite bootstrap values (e.g. a ratio whose resampled denominator is 0) are dropped. Returns
    ``{"value", "lo", "hi", "n"}`` (NaN when N == 0).

    Example::

        paired_bootstrap(lambda d, m: d.mean() / m.mean(), [m_new - m, np.abs(m)])     # a ratio of means
    """
    xs = [np.asarray(a, dtype=float) for a in arrays]
    n = xs[0].shape[0] if xs and xs[0].ndim else 0
    if any(x.shape[:1] != (n,) for x in xs):
        raise ValueError(f"paired arrays must share their first axis, got {[x.shape for x in xs]}")
    if n == 0:
        return {"value": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(stat(*xs))
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        boots = np.array([stat(*(x[i] for x in xs)) for i in idx], dtype=float)
    boots = boots[np.isfinite(boots)]
    a = (1 - level) / 2
    lo, hi = (float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))) if boots.size else (math.nan,) * 2
    return {"value": value, "lo": lo, "hi": hi, "n": int(n)}


def empirical_p(observed: float, null: Sequence[float] | np.ndarray, larger: bool = True) -> dict[str, float]:
    """Empirical p-value of ``observed`` against control draws ``null``: (1 + #draws at least as strong) /
    (1 + #draws), "strong" meaning larger (``larger=True``) or smaller. The +1 counts the observed value as a
    draw, so p is never 0; ``resolution`` = 1 / (1 + #draws) is the smallest p the draws can give. Non-finite
    draws are dropped; with none left, p is NaN.

    Example: ``empirical_p(0.5, [0.1, 0.2, 0.6])`` -> ``{"p": 0.5, "count": 1, "n": 3, "resolution": 0.25}``.
    """
    v = np.asarray(null, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0 or not math.isfinite(observed):
        return {"p": math.nan, "count": 0, "n": int(v.size), "resolution": math.nan}
    count = int((v >= observed).sum() if larger else (v <= observed).sum())
    return {"p": (1 + count) / (1 + v.size), "count": count, "n": int(v.size), "resolution": 1 / (1 + v.size)}


def null_summary(values: Sequence[float] | np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """A control distribution (e.g. the relative drops of random head sets): its mean with a bootstrap 95%
    interval over draws, sd, 95th percentile and the number of finite draws.

    Example: ``null_summary(random_drops)["p95"]``.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    lo, hi = bootstrap_ci(v, n_boot=n_boot, seed=seed)
    return {"mean": float(v.mean()) if v.size else math.nan, "lo": lo, "hi": hi,
            "sd": float(v.std(ddof=1)) if v.size > 1 else math.nan,
            "p95": float(np.quantile(v, 0.95)) if v.size else math.nan, "n": int(v.size)}


def newcombe(k1: int, n1: int, k2: int, n2: int, z: float = 1.96) -> dict[str, float]:
    """p1 - p2 of two independent proportions with Newcombe's hybrid Wilson score 95% interval (his method 10).

    Example: ``newcombe(72, 100, 98, 100)["hi"] < 0`` (the first proportion is lower).
    """
    if n1 <= 0 or n2 <= 0:
        return {"diff": math.nan, "lo": math.nan, "hi": math.nan, "n1": int(n1), "n2": int(n2)}
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p1 - p2
    return {"diff": d, "lo": d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            "hi": d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2), "n1": int(n1), "n2": int(n2)}


def diff_of_means(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, n_boot: int = 1000,
                  seed: int = 0) -> dict[str, float]:
    """mean(a) - mean(b) of two independent samples with a percentile bootstrap 95% interval (each sample
    resampled on its own); NaN where either is empty.

    Example: ``diff_of_means([1.0, 2.0, 3.0], [0.0, 1.0])["value"]`` -> 1.5.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size == 0 or y.size == 0:
        return {"value": math.nan, "lo": math.nan, "hi": math.nan, "n1": int(x.size), "n2": int(y.size)}
    rng = np.random.default_rng(seed)
    boots = x[rng.integers(0, x.size, (n_boot, x.size))].mean(1) - y[rng.integers(0, y.size, (n_boot, y.size))].mean(1)
    return {"value": float(x.mean() - y.mean()), "lo": float(np.quantile(boots, 0.025)),
            "hi": float(np.quantile(boots, 0.975)), "n1": int(x.size), "n2": int(y.size)}
