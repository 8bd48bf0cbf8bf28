"""Amplifying the identified heads on failed samples: recovery, damage and a random control (notebook 05, C8).

Public API
----------
ALPHAS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)                 the amplification factors swept
split_pool(mm, pool, max_failed=200, max_correct=200) -> (failed, correct)   conflict samples by baseline follow
AmplificationResult                                     the 05 document (``to_doc()``)
amplification_experiment(mm, failed, correct, heads, alphas=ALPHAS, n_random=10, seed=0, ...) -> AmplificationResult

Example::

    failed, correct = split_pool(mm, load_split("tiny", "fail_pool"))
    result = amplification_experiment(mm, failed, correct, identified, alphas=[1, 2, 4, 8])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mfutils.data.counterparts import counterparts
from mfutils.data.sample import Sample
from mfutils.measure.follow import FlagCache, Head, check_heads, follows
from mfutils.measure.prepared import prepare
from mfutils.measure.stats import proportion, rate, spread
from mfutils.model.loading import MLLM
from mfutils.study.results import Document
from mfutils.study.selection import random_head_sets

__all__ = ["ALPHAS", "split_pool", "AmplificationResult", "amplification_experiment"]

ALPHAS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)


@torch.no_grad()
def split_pool(mm: MLLM, pool: Sequence[Sample], max_failed: int = 200, max_correct: int = 200,
               batch_size: int = 64, progress: bool = True) -> tuple[list[Sample], list[Sample]]:
    """The first ``max_failed`` conflict samples of ``pool`` that the model does not follow, and the first
    ``max_correct`` that it follows (pool order; flags from ``measure.follow.follows``); stops reading the pool
    once both are full.

    Example::

        failed, correct = split_pool(mm, load_split("tiny", "fail_pool"), max_failed=200)
    """
    conflict = [s for s in pool if s.other_answer is not None]
    failed: list[Sample] = []
    correct: list[Sample] = []
    for start in tqdm(range(0, len(conflict), batch_size), desc="baseline on the pool", disable=not progress):
        chunk = conflict[start:start + batch_size]
        ok = follows(mm, chunk, batch_size=batch_size)
        failed += [s for s, f in zip(chunk, ok.tolist()) if not f]
        correct += [s for s, f in zip(chunk, ok.tolist()) if f]
        if len(failed) >= max_failed and len(correct) >= max_correct:
            break
    return failed[:max_failed], correct[:max_correct]


@dataclass
class AmplificationResult(Document):
    """Notebook 05's document: recovery of failed samples and damage to correct ones, per alpha.

    ``identified``: ``recovery`` and ``damage`` proportion dicts per alpha; ``random``: the random sets'
    recovery (and, when computed, damage) mean, sd and rates per alpha; ``arbitration``: failed samples whose
    image-only and text-only counterparts the model answers right, and their recovery; ``best``: the alpha
    with the highest recovery.
    """

    model: str
    alphas: list[float]
    positions: str
    seed: int
    heads: list[list[int]]
    """the amplified heads, [[layer, head], ...]"""
    n_failed: int
    n_correct_reference: int
    identified: dict[str, list[dict[str, float]]]
    """{"recovery": [proportion dict per alpha], "damage": [proportion dict per alpha]}"""
    random: dict[str, Any]
    arbitration: dict[str, Any]
    best: dict[str, Any]
    """{"alpha": the alpha of the highest recovery (None without failed samples), "recovery": its proportion}"""


def amplification_experiment(mm: MLLM, failed: Sequence[Sample], correct: Sequence[Sample], heads: Sequence[Head],
                             alphas: Sequence[float] = ALPHAS, n_random: int = 10, seed: int = 0,
                             positions: str = "all", batch_size: int = 64, model_name: str | None = None,
                             progress: bool = True, random_damage: bool = False) -> AmplificationResult:
    """Amplifying ``heads`` by each alpha on failed samples: recovery, damage, random control.

    recovery(alpha) = share of ``failed`` that follow with the heads scaled by alpha; damage(alpha) = share
    of ``correct`` (a separate reference set) that no longer follow. Random: ``n_random`` uniform sets of
    ``len(heads)`` heads (``random_head_sets(..., seed)``): recovery, and with ``random_damage`` their damage
    too (another ``n_random * len(alphas)`` evaluations of ``correct``). Arbitration failures (ours): failed
    samples whose image-only and text-only counterparts (``data.counterparts``) the model answers right.

    Example::

        failed, correct = split_pool(mm, pool)
        result = amplification_experiment(mm, failed, correct, identified, alphas=[1, 2, 4, 8])
    """
    heads = check_heads(mm, heads)
    alphas = [float(a) for a in alphas]
    fdata, cdata = prepare(mm, failed, batch_size), prepare(mm, correct, batch_size)
    ff, fc = FlagCache(mm, fdata, positions), FlagCache(mm, cdata, positions)
    rsets = random_head_sets(mm.n_layers, mm.n_heads, len(heads), n_random, seed) if heads else []
    ff.fill([(heads, a) for a in alphas] + [(r, a) for r in rsets for a in alphas], "amplify (failed)", progress)
    fc.fill([(heads, a) for a in alphas] + ([(r, a) for r in rsets for a in alphas] if random_damage else []),
            "amplify (correct reference)", progress)

    pairs = [counterparts(s) for s in failed]
    knows_image = follows(mm, [p[0] for p in pairs], batch_size=batch_size)
    knows_text = follows(mm, [p[1] for p in pairs], batch_size=batch_size)
    arbitration = knows_image & knows_text
    recovery = [proportion(ff(heads, a).numpy()) for a in alphas]
    rand = [[rate(ff(r, a)) for r in rsets] for a in alphas]
    rdmg = [[1.0 - rate(fc(r, a)) if len(cdata) else math.nan for r in rsets] for a in alphas] if random_damage else []
    rates = [r["rate"] for r in recovery]
    best = int(np.nanargmax(rates)) if np.isfinite(rates).any() else None
    return AmplificationResult(
        model=model_name or mm.name, alphas=alphas, positions=positions, seed=int(seed),
        heads=[list(h) for h in heads],
        n_failed=len(fdata), n_correct_reference=len(cdata),
        identified={"recovery": recovery, "damage": [proportion((~fc(heads, a)).numpy()) for a in alphas]},
        random={"recovery_mean": [spread(r)["mean"] for r in rand], "recovery_sd": [spread(r)["sd"] for r in rand],
                "recovery_rates": rand, "n_sets": len(rsets), "sets": [[list(h) for h in r] for r in rsets],
                **({"damage_mean": [spread(d)["mean"] for d in rdmg], "damage_sd": [spread(d)["sd"] for d in rdmg]}
                   if random_damage else {})},
        arbitration={"n": int(arbitration.sum()),
                     "knows_image": proportion(knows_image.numpy()), "knows_text": proportion(knows_text.numpy()),
                     "recovery": [proportion(ff(heads, a)[arbitration].numpy()) for a in alphas]},
        best={"alpha": alphas[best] if best is not None else None,
              "recovery": recovery[best] if best is not None else proportion([])},
    )
