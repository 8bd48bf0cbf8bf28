"""Capability retention: accuracy per category with the identified heads blocked vs random sets (notebook 06, C7).

Accuracy = the argmax over the question's candidates is the answer (``measure.follow``; on non-conflict
samples following is plain correctness).

The original measure (kept exactly, the original rule reads it): every capability prompt, against
``n_random`` sets drawn from all heads. The held-out measure of amendment A6 (``held_out``): only the prompts
that do not occur in the model's training stream (``study.overlap``; the overlap is reported), against the A1
control sets (``study.control.control_sets``, drawn without the identified heads): per category the accuracy
drop with a paired bootstrap interval, the random sets' drops and their summary.

Public API
----------
RetentionResult                                         the 06 document (``to_doc()``)
capability_experiment(mm, samples, heads, n_random=10, seed=0, positions="all", ..., n_control=200,
                      seen=None, overlap=None) -> RetentionResult

Example::

    result = capability_experiment(mm, load_split("tiny", "capability"), identified, seen=seen, overlap=summary)
    result.max_drop_identified, result.held_out["max_drop_identified"]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mfutils.data.sample import Sample
from mfutils.measure.follow import FlagCache, Head, check_heads
from mfutils.measure.prepared import Prepared, prepare
from mfutils.measure.stats import paired_bootstrap, proportion, spread
from mfutils.model.loading import MLLM
from mfutils.study.control import N_CONTROL, against, control_sets, sets_digest
from mfutils.study.results import OPTIONAL, Document
from mfutils.study.selection import random_head_sets

__all__ = ["RetentionResult", "capability_experiment", "ANSWER_IN_TEXT"]


# Categories whose text states the answer: only there does a training-stream text make a prompt memorisable (A6).
ANSWER_IN_TEXT: tuple[str, ...] = ("text_only", "agree")

@dataclass
class RetentionResult(Document):
    """Notebook 06's document: ``base`` / ``identified`` proportion dicts per category, ``random`` (per category
    the random sets' rates, mean, sd), and the largest accuracy drop over the categories for the identified
    heads and for the random sets' mean (the original measure, every prompt).

    ``held_out`` (A6): ``overlap`` (``overlap.overlap_summary``: prompts whose text occurs in training),
    ``n`` per category of the held-out prompts, ``categories`` (those with any), ``base`` / ``identified``
    (proportion dicts), ``drop`` (base - identified accuracy, paired bootstrap ``{"value", "lo", "hi", "n"}``),
    ``max_drop_identified`` and its category, and ``random``: the A1 sets' drops per category (``drops``,
    ``null``), their largest drop over the categories (``max_drops``, ``max_null``) and the identified
    largest drop's ``empirical_p`` against them, and the sets' ``digest`` (``control.sets_digest``).
    """

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
    held_out: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)
    """A6: the prompts not in the training stream, against the A1 control sets"""


def capability_experiment(mm: MLLM, samples: Sequence[Sample] | Prepared, heads: Sequence[Head], n_random: int = 10,
                          seed: int = 0, positions: str = "all", batch_size: int = 64,
                          model_name: str | None = None, progress: bool = True, n_control: int = N_CONTROL,
                          seen: Sequence[bool] | None = None, overlap: dict[str, Any] | None = None,
                          n_boot: int = 1000) -> RetentionResult:
    """Accuracy per category before and after blocking ``heads`` vs ``n_random`` random sets: ``RetentionResult``.

    Random sets are ``random_head_sets(L, H, len(heads), n_random, seed)``: with notebook 04's seed, the same
    sets. Flags through ``measure.follow.FlagCache`` (prefix reuse). ``n_control`` > 0 adds ``held_out`` (A6)
    on the samples whose ``seen`` flag (``overlap.in_training``) is False (None: the training stream is
    unknown, every prompt counts as held out), encoded on their own, with the first ``n_control`` A1 sets;
    ``overlap``: the ``overlap.overlap_summary`` to record.

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
        held_out=(_held_out(mm, data.samples, heads, seen, overlap, n_control, seed, positions, batch_size, n_boot,
                            progress) if n_control > 0 and heads else None),
    )


def _largest(drops: dict[str, float]) -> tuple[float, str | None]:
    finite = {c: d for c, d in drops.items() if d is not None and math.isfinite(d)}
    if not finite:
        return math.nan, None
    c = max(finite, key=lambda k: finite[k])
    return float(finite[c]), c


def _held_out(mm: MLLM, samples: Sequence[Sample], heads: list[Head], seen: Sequence[bool] | None,
              overlap: dict[str, Any] | None, n_control: int, seed: int, positions: str, batch_size: int,
              n_boot: int, progress: bool) -> dict[str, Any]:
    """The A6 entry: the held-out prompts, identified heads blocked vs the A1 sets."""
    if seen is not None and len(seen) != len(samples):
        raise ValueError(f"{len(seen)} 'seen' flags for {len(samples)} samples")
    # held out: the prompt as a whole (image and text) does not occur in training. A seen text makes a prompt
    # memorisable only where the text states the answer; an image-only prompt's answer is in its image, which is
    # rendered afresh and never repeats, so its question text occurring in training does not make it seen
    keep = [s for i, s in enumerate(samples) if seen is None or not seen[i] or s.category not in ANSWER_IN_TEXT]
    data = prepare(mm, keep, batch_size)
    labels = np.array([s.category for s in data.samples])
    cats = [c for c in dict.fromkeys(s.category for s in samples) if (labels == c).any()]
    flags = FlagCache(mm, data, positions)
    csets = control_sets(mm.n_layers, mm.n_heads, heads, n_control, seed)
    flags.fill([((), 1.0), (heads, 0.0)] + [(r, 0.0) for r in csets], "blocking (held-out prompts, A1 sets)", progress)
    base = flags(()).numpy()
    ident = flags(heads).numpy()

    def drop(b: np.ndarray, x: np.ndarray) -> float:
        return float(b.mean() - x.mean()) if b.size else math.nan

    masks = {c: labels == c for c in cats}
    drops = {c: paired_bootstrap(lambda b, x: b.mean() - x.mean(), [base[m], ident[m]], n_boot=n_boot, seed=seed)
             for c, m in masks.items()}
    rdrops = {c: [drop(base[m], flags(r).numpy()[m]) for r in csets] for c, m in masks.items()}
    rmax = [_largest({c: rdrops[c][j] for c in cats})[0] for j in range(len(csets))]
    top, top_cat = _largest({c: d["value"] for c, d in drops.items()})
    vs = against(top, rmax, seed=seed)
    return {
        "amendment": "A6", "overlap": overlap,
        "prompts": ("those that do not occur in the training stream: text-stated categories "
                    f"({', '.join(ANSWER_IN_TEXT)}) whose text does not occur in it, and every image-only prompt "
                    "(its answer is in its image, rendered afresh)" if seen is not None
                    else "every prompt (the training stream is unknown)"),
        "n": {c: int((labels == c).sum()) for c in dict.fromkeys(s.category for s in samples)},
        "n_total": len(keep), "categories": cats,
        "base": {c: proportion(base[m]) for c, m in masks.items()},
        "identified": {c: proportion(ident[m]) for c, m in masks.items()},
        "drop": drops, "max_drop_identified": top, "max_drop_category": top_cat,
        "random": {"n_sets": len(csets), "digest": sets_digest(csets), "drops": rdrops,
                   "null": {c: against(drops[c]["value"], rdrops[c], seed=seed)["null"] for c in cats},
                   "max_drops": rmax, "max_null": vs["null"], "empirical_p": vs["empirical_p"]},
    }
