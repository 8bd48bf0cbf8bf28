"""Capability retention: accuracy per category with the identified heads blocked vs random sets (notebook 06, C7).

Accuracy = the argmax over the question's candidates is the answer (``measure.follow``; on non-conflict
samples following is plain correctness).

Public API
----------
RetentionResult                                         the 06 document (``to_doc()``)
capability_experiment(mm, samples, heads, n_random=10, seed=0, positions="all", ...) -> RetentionResult

Example::

    result = capability_experiment(mm, load_split("tiny", "capability"), identified)
    result.max_drop_identified, result.max_drop_random_mean
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mfutils.data.sample import Sample
from mfutils.measure.follow import FlagCache, Head, check_heads
from mfutils.measure.prepared import Prepared, prepare
from mfutils.measure.stats import proportion, spread
from mfutils.model.loading import MLLM
from mfutils.study.results import Document
from mfutils.study.selection import random_head_sets

__all__ = ["RetentionResult", "capability_experiment"]


@dataclass
class RetentionResult(Document):
    """Notebook 06's document: ``base`` / ``identified`` proportion dicts per category, ``random`` (per category
    the random sets' rates, mean, sd), and the largest accuracy drop over the categories for the identified
    heads and for the random sets' mean."""

    model: str
    categories: list[str]
    positions: str
    seed: int
    heads: list[list[int]]
    n_random_sets: int
    random_sets: list[list[list[int]]]
    n: dict[str, int]
    base: dict[str, Any]
    identified: dict[str, Any]
    random: dict[str, Any]
    max_drop_identified: float
    max_drop_random_mean: float


def capability_experiment(mm: MLLM, samples: Sequence[Sample] | Prepared, heads: Sequence[Head], n_random: int = 10,
                          seed: int = 0, positions: str = "all", batch_size: int = 64,
                          model_name: str | None = None, progress: bool = True) -> RetentionResult:
    """Accuracy per category before and after blocking ``heads`` vs ``n_random`` random sets: ``RetentionResult``.

    Random sets are ``random_head_sets(L, H, len(heads), n_random, seed)``: with notebook 04's seed, the same
    sets. Flags through ``measure.follow.FlagCache`` (prefix reuse).

    Example::

        result = capability_experiment(mm, load_split("tiny", "capability"), identified)
    """
    heads = check_heads(mm, heads)
    data = prepare(mm, samples, batch_size)
    cats = list(dict.fromkeys(s.category for s in data.samples))
    labels = np.array([s.category for s in data.samples])
    flags = FlagCache(mm, data, positions)
    rsets = random_head_sets(mm.n_layers, mm.n_heads, len(heads), n_random, seed) if heads else []
    flags.fill([((), 1.0), (heads, 0.0)] + [(r, 0.0) for r in rsets], "blocking (capability)", progress)

    def per_cat(f: torch.Tensor) -> dict[str, dict[str, float]]:
        x = f.numpy()
        return {c: proportion(x[labels == c]) for c in cats}

    base, ident = per_cat(flags(())), per_cat(flags(heads))
    rand = [per_cat(flags(r)) for r in rsets]
    random_doc = {c: {"rates": [r[c]["rate"] for r in rand], **spread([r[c]["rate"] for r in rand])} for c in cats}
    drops = [base[c]["rate"] - ident[c]["rate"] for c in cats]
    rdrops = [base[c]["rate"] - random_doc[c]["mean"] for c in cats]
    return RetentionResult(
        model=model_name or mm.name, categories=cats, positions=positions, seed=int(seed),
        heads=[list(h) for h in heads], n_random_sets=len(rsets), random_sets=[[list(h) for h in r] for r in rsets],
        n={c: int((labels == c).sum()) for c in cats},
        base=base, identified=ident, random=random_doc,
        max_drop_identified=float(np.nanmax(drops)) if np.isfinite(drops).any() else math.nan,
        max_drop_random_mean=float(np.nanmax(rdrops)) if np.isfinite(rdrops).any() else math.nan,
    )
