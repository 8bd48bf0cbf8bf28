"""Amplifying the identified heads on failed samples: recovery, damage and a random control (notebook 05, C8).

The original measure (kept exactly, the original rule reads it): recovery of every failed sample per alpha,
the best alpha chosen on those same samples, against ``n_random`` sets drawn from all heads. The held-out
measure of amendment A2 (``held_out``): the failed samples are split into two halves by a fixed seed
(``split_halves``); alpha is chosen on the selection half by the identified heads' recovery (ties: the
smaller alpha, ``choose_alpha``), and everything reported is measured on the evaluation half, which the choice
never sees: the recovery (Wilson), the recovery of the arbitration failures, the damage to the correct
reference set, and the A1 control sets (``study.control.control_sets``) at the same alpha.

Public API
----------
ALPHAS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)                 the amplification factors swept
HALVES_STREAM = 0xA2                                    the random stream of the halves
split_pool(mm, pool, max_failed=200, max_correct=200) -> (failed, correct)   conflict samples by baseline follow
split_halves(n, seed) -> (selection, evaluation)        two disjoint sorted index lists covering range(n)
choose_alpha(alphas, recovery) -> int | None            index of the highest recovery, ties to the smaller alpha
AmplificationResult                                     the 05 document (``to_doc()``)
amplification_experiment(mm, failed, correct, heads, alphas=ALPHAS, n_random=10, seed=0, ...,
                         n_control=200, n_control_curve=10) -> AmplificationResult

Example::

    failed, correct = split_pool(mm, load_split("tiny", "fail_pool"))
    result = amplification_experiment(mm, failed, correct, identified, alphas=[1, 2, 4, 8])
    result.held_out["recovery"], result.held_out["random"]["empirical_p"]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from mfutils.study.control import N_CONTROL, against, control_sets, sets_digest
from mfutils.study.results import OPTIONAL, Document
from mfutils.study.selection import random_head_sets

__all__ = ["ALPHAS", "HALVES_STREAM", "split_pool", "split_halves", "choose_alpha", "AmplificationResult",
           "amplification_experiment"]

ALPHAS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
HALVES_STREAM = 0xA2


def split_halves(n: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices 0..n-1 split into a selection half (n // 2) and an evaluation half (the rest) by a permutation
    from ``default_rng([HALVES_STREAM, seed])``; both sorted, disjoint, together every index.

    Example: ``sel, ev = split_halves(147, 0)`` -> 73 and 74 indices.
    """
    perm = np.random.default_rng([HALVES_STREAM, int(seed)]).permutation(int(n))
    return sorted(int(i) for i in perm[:n // 2]), sorted(int(i) for i in perm[n // 2:])


def choose_alpha(alphas: Sequence[float], recovery: Sequence[float]) -> int | None:
    """Index of the alpha with the highest ``recovery`` (rates per alpha, NaN ignored); ties go to the smaller
    alpha; None when no rate is finite.

    Example: ``choose_alpha([1, 2, 4], [0.0, 0.3, 0.3])`` -> 1.
    """
    rows = [(float(r), -float(a), i) for i, (a, r) in enumerate(zip(alphas, recovery))
            if r is not None and math.isfinite(float(r))]
    return max(rows)[2] if rows else None


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
    with the highest recovery (on the same samples: the original measure). ``held_out`` (A2): ``selection`` /
    ``evaluation`` (indices into the failed samples), ``selection_recovery`` (per alpha), ``alpha`` (chosen on
    the selection half), ``recovery`` and ``recovery_curve`` (evaluation half, Wilson), ``arbitration`` (n,
    recovery and curve on the evaluation half's arbitration failures), ``damage`` (the reference set at that
    alpha), ``random`` (the A1 sets at that alpha on the evaluation half: ``digest`` (``control.sets_digest``,
    equal to that of notebook 04's first ``n_sets`` sets), ``recovery`` per set, ``empirical_p``, ``null``;
    ``curve``: the first ``n_sets`` of them at every alpha, mean, sd, rates).
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
    held_out: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)
    """A2: alpha chosen on the selection half, everything else measured on the evaluation half"""
    pool: str | None = field(default=None, metadata=OPTIONAL)
    """the split the failed and correct samples came from ("fail_pool", or a position's pool such as "pool_first": A8)"""


def amplification_experiment(mm: MLLM, failed: Sequence[Sample], correct: Sequence[Sample], heads: Sequence[Head],
                             alphas: Sequence[float] = ALPHAS, n_random: int = 10, seed: int = 0,
                             positions: str = "all", batch_size: int = 64, model_name: str | None = None,
                             progress: bool = True, random_damage: bool = False, n_control: int = N_CONTROL,
                             n_control_curve: int = 10, pool: str | None = None) -> AmplificationResult:
    """Amplifying ``heads`` by each alpha on failed samples: recovery, damage, random control.

    recovery(alpha) = share of ``failed`` that follow with the heads scaled by alpha; damage(alpha) = share
    of ``correct`` (a separate reference set) that no longer follow. Random: ``n_random`` uniform sets of
    ``len(heads)`` heads (``random_head_sets(..., seed)``): recovery, and with ``random_damage`` their damage
    too (another ``n_random * len(alphas)`` evaluations of ``correct``). Arbitration failures (ours): failed
    samples whose image-only and text-only counterparts (``data.counterparts``) the model answers right.
    ``n_control`` > 0 adds ``held_out`` (A2): the halves of ``split_halves(len(failed), seed)``, each encoded
    on its own; the ``n_control`` A1 sets at the chosen alpha on the evaluation half and the first
    ``n_control_curve`` of them at every alpha there (the figure's band). ``pool``: the split's name, recorded
    (the rules of C8 read it: A8).

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
        held_out=(_held_out(mm, failed, heads, alphas, arbitration, fc, seed, positions, batch_size, n_control,
                            n_control_curve, progress) if n_control > 0 and heads else None),
        pool=pool,
    )


def _held_out(mm: MLLM, failed: Sequence[Sample], heads: list[Head], alphas: list[float], arbitration: torch.Tensor,
              fc: FlagCache, seed: int, positions: str, batch_size: int, n_control: int, n_curve: int,
              progress: bool) -> dict[str, Any]:
    """The A2 entry: alpha chosen on the selection half, the evaluation half scored (identified and A1 sets)."""
    sel, ev = split_halves(len(failed), seed)
    fs = FlagCache(mm, prepare(mm, [failed[i] for i in sel], batch_size), positions)
    fs.fill([(heads, a) for a in alphas], "amplify (selection half)", progress)
    sel_rec = [proportion(fs(heads, a).numpy()) for a in alphas]
    i = choose_alpha(alphas, [p["rate"] for p in sel_rec])
    csets = control_sets(mm.n_layers, mm.n_heads, heads, n_control, seed)
    curve_sets = csets[:n_curve]
    fe = FlagCache(mm, prepare(mm, [failed[j] for j in ev], batch_size), positions)
    jobs: list[tuple[Sequence[Head], float]] = [(heads, a) for a in alphas] + [(r, a) for r in curve_sets for a in alphas]
    if i is not None:
        jobs += [(r, alphas[i]) for r in csets]
    fe.fill(jobs, "amplify (evaluation half, identified and A1 sets)", progress)
    arb = arbitration[torch.as_tensor(ev, dtype=torch.long)] if ev else torch.zeros(0, dtype=torch.bool)
    curve = [proportion(fe(heads, a).numpy()) for a in alphas]
    rand_at = [rate(fe(r, alphas[i])) for r in csets] if i is not None else []
    rates = [[rate(fe(r, a)) for r in curve_sets] for a in alphas]
    return {
        "amendment": "A2", "split_seed": int(seed), "stream": [HALVES_STREAM, int(seed)],
        "n_selection": len(sel), "n_evaluation": len(ev), "selection": sel, "evaluation": ev,
        "selection_recovery": sel_rec, "rule": "highest identified recovery on the selection half; ties: the smaller alpha",
        "alpha": alphas[i] if i is not None else None,
        "recovery": curve[i] if i is not None else proportion([]), "recovery_curve": curve,
        "arbitration": {"n": int(arb.sum()),
                        "recovery": proportion(fe(heads, alphas[i])[arb].numpy()) if i is not None else proportion([]),
                        "curve": [proportion(fe(heads, a)[arb].numpy()) for a in alphas]},
        "damage": proportion((~fc(heads, alphas[i])).numpy()) if i is not None else proportion([]),
        "random": {"n_sets": len(csets), "digest": sets_digest(csets), "recovery": rand_at,
                   **{k: v for k, v in against(curve[i]["rate"] if i is not None else math.nan, rand_at,
                                               seed=seed).items() if k != "observed"},
                   "curve": {"n_sets": len(curve_sets), "mean": [spread(r)["mean"] for r in rates],
                             "sd": [spread(r)["sd"] for r in rates], "rates": rates}},
    }
