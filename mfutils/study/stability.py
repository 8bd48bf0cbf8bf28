"""Stability of the knockout curves under less data (claim C12), from a stored sweep (no model run).

Public API
----------
FRACTIONS                       the data fractions of the stability analysis: (0.2, 0.4, 0.6, 0.8, 1.0)
stability(sweep, fractions=FRACTIONS, seed=0, n_draws=10, mask=None, edges=None, rom_draws=200)
        -> {"fractions": [F], "corr": {edge: [F]}, "n_draws": int, "n": {edge: int},
            "ratio_of_means": {"corr", "lo", "hi": {edge: [F]}, "n_draws": int}}

``corr``: the mean of ratios' curves (the original measure, 10 draws, unchanged); ``ratio_of_means``: the
verdict estimator of amendment A3, with the 2.5-97.5 percentiles of the correlations over its draws.

Example::

    st = stability(knockout_sweep(mm, samples, MAIN_EDGES, k=1), fractions=(0.5, 1.0))
    st["corr"]["instruction->last"]     # [r_0.5, 1.0]
    st["ratio_of_means"]["lo"]["instruction->last"]     # [2.5th percentile over draws at 0.5, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mfutils.study.knockout import SweepResult

__all__ = ["FRACTIONS", "stability"]

FRACTIONS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)


def _check(fractions: Sequence[float]) -> None:
    for frac in fractions:
        if not 0 < frac <= 1:
            raise ValueError(f"fractions must be in (0, 1], got {frac}")


def _rom_row(d: np.ndarray, a: np.ndarray, fractions: Sequence[float], rng: np.random.Generator,
             n_draws: int) -> tuple[list[float], list[float], list[float]]:
    """Per fraction: mean, 2.5th and 97.5th percentile over ``n_draws`` subsets (without replacement) of the
    Pearson r between the ratio-of-means curve mean(d) / mean(a) on the subset and on all samples; ``d``
    [W, n] margin changes, ``a`` [n] baseline |m|. Vectorised over draws."""
    n = a.size
    with np.errstate(divide="ignore", invalid="ignore"):
        full = d.mean(1) / a.mean() if n else np.full(d.shape[0], np.nan)
    mean, lo, hi = [], [], []
    for frac in fractions:
        n_sub = max(2, int(round(frac * n)))
        if n < 2 or d.shape[0] < 2 or not np.isfinite(full).all() or np.std(full) == 0:
            mean.append(math.nan), lo.append(math.nan), hi.append(math.nan)
            continue
        draws = n_draws if n_sub < n else 1
        picks = np.argsort(rng.random((draws, n)), axis=1)[:, :n_sub]                # [D, n_sub]
        with np.errstate(divide="ignore", invalid="ignore"):
            curves = d[:, picks].mean(-1) / a[picks].mean(-1)                           # [W, D]
            c = curves - curves.mean(0)
            f = full - full.mean()
            r = np.clip((c * f[:, None]).sum(0) / np.sqrt((c * c).sum(0) * (f * f).sum()), -1, 1)
        r = r[np.isfinite(r)]
        mean.append(float(r.mean()) if r.size else math.nan)
        lo.append(float(np.quantile(r, 0.025)) if r.size else math.nan)
        hi.append(float(np.quantile(r, 0.975)) if r.size else math.nan)
    return mean, lo, hi


def stability(sweep: SweepResult, fractions: Sequence[float] = FRACTIONS, seed: int = 0, n_draws: int = 10,
              mask: np.ndarray | None = None, edges: Sequence[str] | None = None,
              rom_draws: int = 200) -> dict[str, Any]:
    """Pearson correlation, per edge, of the INSSD curve over windows on a random ``fraction`` of the
    samples (without replacement) with the curve on all of them; from the stored per-sample results (no
    model run). NaN where a curve is constant or has fewer than 2 windows.

    ``corr``: the mean-of-ratios curves (the original measure), mean over ``n_draws`` draws (one draw at
    fraction 1). ``ratio_of_means``: the ratio-of-means curves (amendment A3, the verdict estimator), mean
    over ``rom_draws`` draws of their own (seeded from ``seed``, independent of the first) with the 2.5th and
    97.5th percentiles of the correlations over the draws (``lo``, ``hi``). ``n``: samples per edge.

    Returns ``{"fractions", "corr", "n_draws", "n", "ratio_of_means": {"corr", "lo", "hi", "n_draws"}}``.

    Example::

        stability(sweep, fractions=(0.5, 1.0))["corr"]["instruction->last"]     # [r_0.5, 1.0]
    """
    _check(fractions)
    rng = np.random.default_rng(seed)
    rom_rng = np.random.default_rng([seed, 12])
    x_all = sweep.inssd()
    corr: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    rom: dict[str, dict[str, list[float]]] = {"corr": {}, "lo": {}, "hi": {}}
    for edge in edges or sweep.edges:
        keep = np.flatnonzero(sweep.valid(edge, mask))
        e = sweep.edges.index(edge)
        x = x_all[e][:, keep]                                                      # [W, n]
        full = x.mean(1) if keep.size else np.full(x.shape[0], np.nan)
        row = []
        for frac in fractions:
            n_sub = max(2, int(round(frac * keep.size)))
            if keep.size < 2 or x.shape[0] < 2 or np.std(full) == 0:
                row.append(math.nan)
                continue
            rs = []
            for _ in range(n_draws if n_sub < keep.size else 1):
                pick = np.sort(rng.choice(keep.size, size=n_sub, replace=False))
                curve = x[:, pick].mean(1)
                rs.append(math.nan if np.std(curve) == 0 else float(np.clip(np.corrcoef(curve, full)[0, 1], -1, 1)))
            row.append(float(np.nanmean(rs)) if np.isfinite(rs).any() else math.nan)
        corr[edge] = row
        counts[edge] = int(keep.size)
        base = sweep.base[keep]
        mean, lo, hi = _rom_row(sweep.knocked[e][:, keep] - base[None], np.abs(base), fractions, rom_rng, rom_draws)
        rom["corr"][edge], rom["lo"][edge], rom["hi"][edge] = mean, lo, hi
    return {"fractions": [float(f) for f in fractions], "corr": corr, "n_draws": int(n_draws), "n": counts,
            "ratio_of_means": {**rom, "n_draws": int(rom_draws)}}
