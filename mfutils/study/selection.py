"""Choosing heads: the identified top share of a score table, random control sets, rank agreement.

Pure functions of [L, H] score tables (no model needed).

Public API
----------
n_top(n_layers, n_heads, share) -> int                   k = max(1, round(share * L * H))
ranked(scores) -> list[(layer, head)]                    every head, highest score first, NaN last
top_heads(scores, share=0.05) -> list[(layer, head)]     the top k, highest first
rank_agreement(a, b, share=0.05) -> {"spearman", "top_overlap"}
random_head_sets(n_layers, n_heads, k, n_sets, seed, exclude=None) -> list[list[(layer, head)]]   seed: int or ints

Example::

    identified = top_heads(scores, 0.05)                    # scores: [L, H]
    controls = random_head_sets(8, 8, k=len(identified), n_sets=10, seed=0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from mfutils.measure.follow import Head

__all__ = ["n_top", "ranked", "top_heads", "rank_agreement", "random_head_sets"]


def n_top(n_layers: int, n_heads: int, share: float) -> int:
    """k = max(1, round(share * n_layers * n_heads)) (Python's round: halves go to the even integer).

    Example: ``n_top(8, 8, 0.05) == 3``.
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    return max(1, round(share * n_layers * n_heads))


def ranked(scores: torch.Tensor | np.ndarray) -> list[Head]:
    """Every head of an [L, H] table, highest score first; NaN last; ties in (layer, head) order.

    Example: ``ranked(torch.tensor([[0.0, 2.0], [1.0, 0.5]]))`` -> ``[(0, 1), (1, 0), (1, 1), (0, 0)]``.
    """
    s = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    if s.dim() != 2:
        raise ValueError(f"scores must be [n_layers, n_heads], got shape {list(s.shape)}")
    L, H = s.shape
    flat = torch.nan_to_num(s.flatten(), nan=-math.inf)
    order = sorted(range(L * H), key=lambda i: (-float(flat[i]), i))
    return [(i // H, i % H) for i in order]


def top_heads(scores: torch.Tensor | np.ndarray, share: float = 0.05) -> list[Head]:
    """The ``n_top`` heads with the highest score, highest first, as [(layer, head), ...].

    ``scores``: [L, H]. NaN ranks last; ties keep (layer, head) order. With all-NaN scores (no
    identification samples) the choice is the first k heads and carries no information.

    Example::

        top_heads(scores, 0.05)        # [(6, 3), (7, 0), (5, 5)] for 64 heads
    """
    order = ranked(scores)
    L, H = np.asarray(scores).shape
    return order[:n_top(L, H, share)]


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), as for the Spearman coefficient."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=float)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def rank_agreement(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, share: float = 0.05
                   ) -> dict[str, float]:
    """Agreement of two [L, H] score tables: Spearman correlation over heads and the top-``share`` overlap.

    ``top_overlap`` = |top(a) & top(b)| / k. Heads with a NaN score in either table are left out of the
    Spearman coefficient (NaN when fewer than 2 remain or a table is constant); ``top_overlap`` is NaN when
    a table has no finite score.

    Example::

        rank_agreement(exhaustive, attribution)     # {"spearman": 0.81, "top_overlap": 0.67}
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"score tables must both be [L, H], got {x.shape} and {y.shape}")
    ok = np.isfinite(x.ravel()) & np.isfinite(y.ravel())
    rho = math.nan
    if ok.sum() >= 2:
        rx, ry = _ranks(x.ravel()[ok]), _ranks(y.ravel()[ok])
        if rx.std() > 0 and ry.std() > 0:
            rho = float(np.corrcoef(rx, ry)[0, 1])
    if not (np.isfinite(x).any() and np.isfinite(y).any()):
        return {"spearman": rho, "top_overlap": math.nan}      # no scores: the top heads would be arbitrary
    ta, tb = top_heads(x, share), top_heads(y, share)
    return {"spearman": rho, "top_overlap": len(set(ta) & set(tb)) / len(ta)}


def random_head_sets(n_layers: int, n_heads: int, k: int, n_sets: int, seed: int | Sequence[int],
                     exclude: Sequence[Head] | None = None) -> list[list[Head]]:
    """``n_sets`` sets of ``k`` distinct heads drawn uniformly (numpy ``default_rng(seed)``), each sorted.

    Reproducible: the same arguments give the same sets; the draws are sequential, so the first m sets of
    ``n_sets`` are the sets of ``n_sets=m``. ``exclude``: heads never drawn (e.g. the identified ones); empty
    or None draws from all heads, exactly as before ``exclude`` existed (the original control of notebooks
    04-06). ``seed``: an int or a sequence of ints (a separate stream, as ``study.control`` uses). Sets are
    drawn independently, so two sets may share heads.

    Example::

        random_head_sets(8, 8, k=3, n_sets=10, seed=0)       # [[(0, 5), (3, 1), (6, 2)], ...]
    """
    excl = {(int(l), int(h)) for l, h in (exclude or [])}
    pool = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in excl]
    if not 0 < k <= len(pool):
        raise ValueError(f"cannot draw {k} heads from {len(pool)} available ({n_layers} x {n_heads} heads, "
                         f"{len(excl)} excluded)")
    rng = np.random.default_rng(seed)
    return [sorted(pool[int(i)] for i in rng.choice(len(pool), size=k, replace=False)) for _ in range(n_sets)]
