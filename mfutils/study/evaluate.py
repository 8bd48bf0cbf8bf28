"""Behavioural evaluation on the world: accuracy per category with intervals.

A sample is answered right when the argmax of the answer-position logits over the candidate answers of the
asked attribute (8 colours or 6 shapes, each one token in the tiny world) is its answer: the one path
``mfutils.measure.follow.follows`` (batches of ``mfutils.measure.prepared``), as every analysis of the chain.

Public API
----------
EVAL_CATEGORIES                       the categories reported by ``mf eval``
category_samples(category, n, seed, heldout_share=0.5) -> list[Sample]   the samples evaluate scores
evaluate(mm, n, seed, batch_size, flags=None) -> dict   {category: proportion dict (rate, lo, hi, k, n)}
quick_accuracy(mm, n, seed) -> dict[str, float]  the same, rates only (for training curves)

Example::

    evaluate(load_model("tiny"), n=1000, seed=1001)["follow_image"]["rate"]
"""

from __future__ import annotations

from typing import Any, Sequence

from tqdm.auto import tqdm

from mfutils.data.world import make_samples
from mfutils.measure.follow import follows
from mfutils.measure.stats import proportion
from mfutils.model.loading import MLLM

__all__ = ["EVAL_CATEGORIES", "category_samples", "evaluate", "quick_accuracy"]

EVAL_CATEGORIES = ("follow_image", "follow_text", "image_only", "text_only", "agree", "no_instruction")


def category_samples(category: str, n: int, seed: int, heldout_share: float = 0.5) -> list[Any]:
    """The ``n`` samples of ``category`` that ``evaluate`` scores (stream ``seed``; each category of
    ``EVAL_CATEGORIES`` has its own index range, so categories never share a sample)."""
    start = EVAL_CATEGORIES.index(category) * 1_000_000 if category in EVAL_CATEGORIES else 9_000_000
    return make_samples(n, seed, category, start=start, heldout_share=heldout_share)


def evaluate(mm: MLLM, n: int = 1000, seed: int = 1001, batch_size: int = 128,
             categories: Sequence[str] = EVAL_CATEGORIES, heldout_share: float = 0.5,
             progress: bool = False, flags: dict[str, list[bool]] | None = None) -> dict[str, Any]:
    """Accuracy per category on ``n`` fresh samples each (stream ``seed``), with Wilson 95% intervals.

    Instructed categories use a held-out instruction template for ``heldout_share`` of the samples;
    ``<category>/heldout`` and ``<category>/seen`` split them; ``<category>/color`` and ``/shape`` the
    asked attributes. ``flags``: a dict that receives each category's per-sample right/wrong list, in the
    order of ``category_samples``.

    Example::

        res = evaluate(mm, n=1000, seed=1001)         # res["follow_image"] == {"rate", "lo", "hi", "k", "n"}
    """
    mm.model.eval()
    result: dict[str, Any] = {"model": mm.name, "seed": seed, "n_per_category": n}
    for cat in tqdm(categories, desc="evaluate", disable=not progress):
        samples = category_samples(cat, n, seed, heldout_share)
        ok = follows(mm, samples, batch_size=batch_size).tolist()
        if flags is not None:
            flags[cat] = ok
        result[cat] = proportion(ok)
        if any(s.template is not None for s in samples):
            for tag, flag in (("heldout", True), ("seen", False)):
                sub = [o for s, o in zip(samples, ok) if s.heldout_template == flag]
                if sub:
                    result[f"{cat}/{tag}"] = proportion(sub)
        for attr in ("color", "shape"):
            result[f"{cat}/{attr}"] = proportion([o for s, o in zip(samples, ok) if s.attribute == attr])
    return result


def quick_accuracy(mm: MLLM, n: int = 256, seed: int = 500) -> dict[str, float]:
    """Accuracy rates per category on ``n`` samples each (training-time monitor, no intervals).

    Example::

        quick_accuracy(mm, n=256)            # {"follow_image": 0.84, ...}
    """
    res = evaluate(mm, n=n, seed=seed, categories=EVAL_CATEGORIES, heldout_share=0.0)
    return {c: round(float(res[c]["rate"]), 4) for c in EVAL_CATEGORIES}
