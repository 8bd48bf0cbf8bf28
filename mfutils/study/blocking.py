"""Blocking the identified heads against random head sets: the MFR drop of notebook 04 (C6, C9).

Public API
----------
INSTRUCTIONS = ("all", "follow_image", "follow_text")   the rows of every summary
SHARES = (0.01, 0.02, 0.05, 0.1)                        the share sweep
block_summary(samples, flags) -> {"all", "follow_image", "follow_text": proportion dict}
BlockResult                                             the 04 document (``to_doc()``)
block_experiment(mm, samples, scores, share=0.05, n_random=10, seed=0, ...) -> BlockResult

Example::

    result = block_experiment(mm, load_split("tiny", "test"), load_identification("tiny")["scores"])
    result.relative_drop["mean"]; write_results(result, "tiny", "04_block_heads")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mfutils.data.sample import Sample
from mfutils.measure.follow import FlagCache, Head
from mfutils.measure.prepared import Prepared, prepare, samples_of
from mfutils.measure.stats import proportion, rate, relative_change, relative_drop, spread
from mfutils.model.loading import MLLM
from mfutils.study.results import Document
from mfutils.study.selection import n_top, random_head_sets, top_heads

__all__ = ["INSTRUCTIONS", "SHARES", "block_summary", "BlockResult", "block_experiment"]

INSTRUCTIONS = ("all", "follow_image", "follow_text")
SHARES = (0.01, 0.02, 0.05, 0.1)


def block_summary(samples: Sequence[Sample] | Prepared, flags: torch.Tensor | np.ndarray | Sequence[bool]
                  ) -> dict[str, dict[str, float]]:
    """Proportion dicts (``stats.proportion``) of ``flags`` [N] overall and per instruction.

    Keys ``"all"``, ``"follow_image"``, ``"follow_text"``; an empty subset gives n = 0 and NaN rates.

    Example::

        block_summary(samples, follows(mm, samples))["follow_image"]["rate"]
    """
    x = np.asarray(flags, dtype=bool)
    cats = np.array([s.category for s in samples_of(samples)])
    if x.shape != cats.shape:
        raise ValueError(f"{x.size} flags for {cats.size} samples")
    return {"all": proportion(x), **{c: proportion(x[cats == c]) for c in INSTRUCTIONS[1:]}}


def _rates(samples: Sequence[Sample] | Prepared, flags: torch.Tensor) -> dict[str, float]:
    return {k: v["rate"] for k, v in block_summary(samples, flags).items()}


@dataclass
class BlockResult(Document):
    """Notebook 04's document: MFR with the identified heads blocked vs random sets of the same size.

    ``base`` / ``identified``: ``block_summary`` dicts; ``random``: per instruction, the random sets' rates with
    their mean and sd; ``relative_drop``: the identified heads' relative MFR drop with a paired bootstrap
    interval; ``random_relative_drop``: the random sets' drops (values, mean, sd, p95); ``shares``: per share
    of the sweep, k, the identified rate and the random sets' mean and sd.
    """

    model: str
    k: int
    n_random_sets: int
    n_test: int
    positions: str
    seed: int
    share: float
    base_rate: float
    """MFR of the unmodified model on all samples"""
    identified_heads: list[list[int]]
    random_sets: list[list[list[int]]]
    """the ``n_random_sets`` control sets of k heads each"""
    base: dict[str, dict[str, float]]
    identified: dict[str, dict[str, float]]
    random: dict[str, dict[str, Any]]
    relative_drop: dict[str, float]
    random_relative_drop: dict[str, Any]
    shares: dict[str, dict[str, float]]


def block_experiment(mm: MLLM, samples: Sequence[Sample] | Prepared, scores: torch.Tensor, share: float = 0.05,
                     n_random: int = 10, seed: int = 0, positions: str = "all", shares: Sequence[float] = SHARES,
                     batch_size: int = 64, model_name: str | None = None, progress: bool = True,
                     n_boot: int = 1000) -> BlockResult:
    """Blocking (alpha = 0) the identified heads vs ``n_random`` random sets of the same size: ``BlockResult``.

    ``scores``: the head scores [L, H] of notebook 03 (identified = ``top_heads(scores, share)``; for each
    share of ``shares`` its own top heads). Random sets: ``random_head_sets(L, H, k, n_random, seed)``, drawn
    uniformly over all heads. Flags through ``measure.follow.FlagCache`` (prefix reuse).

    Example::

        result = block_experiment(mm, load_split("tiny", "test"), load_identification("tiny")["scores"])
    """
    data = prepare(mm, samples, batch_size)
    L, H = mm.n_layers, mm.n_heads
    scores = torch.as_tensor(np.asarray(scores, dtype=float))
    if tuple(scores.shape) != (L, H):
        raise ValueError(f"scores have shape {list(scores.shape)} but the model has {L} layers x {H} heads")
    flags = FlagCache(mm, data, positions)
    identified = top_heads(scores, share)
    k = len(identified)
    rsets = random_head_sets(L, H, k, n_random, seed)
    sweep = {s: (top_heads(scores, s), random_head_sets(L, H, n_top(L, H, s), n_random, seed)) for s in shares}
    jobs: list[tuple[Sequence[Head], float]] = [((), 1.0), (identified, 0.0), *((r, 0.0) for r in rsets)]
    for top, rs in sweep.values():
        jobs += [(top, 0.0), *((r, 0.0) for r in rs)]
    flags.fill(jobs, "blocking head sets", progress)

    base, blocked = flags(()), flags(identified)
    random_rates = [_rates(data, flags(r)) for r in rsets]
    base_rate = rate(base)
    random_drops = [float(relative_change(base.numpy().astype(float), flags(r).numpy().astype(float)))
                    if len(base) else math.nan for r in rsets]
    shares_doc: dict[str, Any] = {}
    for s, (top, rs) in sweep.items():
        rr = [rate(flags(r)) for r in rs]
        sp = spread(rr)
        shares_doc[str(float(s))] = {"k": len(top), "identified": rate(flags(top)),
                                     "random_mean": sp["mean"], "random_sd": sp["sd"]}
    finite = np.array([d for d in random_drops if np.isfinite(d)])
    return BlockResult(
        model=model_name or mm.name, k=k, n_random_sets=int(n_random), n_test=len(data),
        positions=positions, seed=int(seed), share=float(share), base_rate=base_rate,
        identified_heads=[list(h) for h in identified], random_sets=[[list(h) for h in r] for r in rsets],
        base=block_summary(data, base),
        identified=block_summary(data, blocked),
        random={key: {"rates": [r[key] for r in random_rates], **spread([r[key] for r in random_rates])}
                for key in INSTRUCTIONS},
        relative_drop=relative_drop(base, blocked, n_boot=n_boot, seed=seed),
        random_relative_drop={"values": random_drops, **spread(random_drops),
                              "p95": float(np.quantile(finite, 0.95)) if finite.size else math.nan},
        shares=shares_doc,
    )
