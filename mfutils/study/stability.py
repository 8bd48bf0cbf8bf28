"""Stability of the knockout curves under less data (claim C12), from a stored sweep (no model run).

Public API
----------
FRACTIONS                       the data fractions of the stability analysis: (0.2, 0.4, 0.6, 0.8, 1.0)
stability(sweep, fractions=FRACTIONS, seed=0, n_draws=10, mask=None, edges=None)
        -> {"fractions": [F], "corr": {edge: [F]}}      Pearson r of subset curves with the full curve

Example::

    st = stability(knockout_sweep(mm, samples, MAIN_EDGES, k=1), fractions=(0.5, 1.0))
    st["corr"]["instruction->last"]     # [r_0.5, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mfutils.study.knockout import SweepResult

__all__ = ["FRACTIONS", "stability"]

FRACTIONS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)


def stability(sweep: SweepResult, fractions: Sequence[float] = FRACTIONS, seed: int = 0, n_draws: int = 10,
              mask: np.ndarray | None = None, edges: Sequence[str] | None = None) -> dict[str, Any]:
    """Pearson correlation, per edge, of the INSSD curve over windows on a random ``fraction`` of the
    samples (without replacement) with the curve on all of them; mean over ``n_draws`` draws; from the
    stored per-sample results (no model run). NaN where a curve is constant or has fewer than 2 windows.

    Returns ``{"fractions": [...], "corr": {edge: [per fraction]}}``.

    Example::

        stability(sweep, fractions=(0.5, 1.0))["corr"]["instruction->last"]     # [r_0.5, 1.0]
    """
    rng = np.random.default_rng(seed)
    x_all = sweep.inssd()
    corr: dict[str, list[float]] = {}
    for edge in edges or sweep.edges:
        keep = np.flatnonzero(sweep.valid(edge, mask))
        x = x_all[sweep.edges.index(edge)][:, keep]                                # [W, n]
        full = x.mean(1) if keep.size else np.full(x.shape[0], np.nan)
        row = []
        for frac in fractions:
            if not 0 < frac <= 1:
                raise ValueError(f"fractions must be in (0, 1], got {frac}")
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
    return {"fractions": [float(f) for f in fractions], "corr": corr}
