"""Identifying the heads that arbitrate between modalities: the top share by head score (notebook 03, C5).

**Identified heads**: the top ``share`` (5%) of all heads by the exhaustive head score
(``mfutils.study.scoring``), ``k = max(1, round(share * L * H))``.

Public API
----------
IDENTIFY_METHODS = ("fast", "exhaustive")
Identification                                          the 03 document (``to_doc()``)
identification_doc(model_name, exhaustive, attribution, share, n_identify) -> Identification   pure, no model
identify_heads(mm, samples, model_name, share=0.05, method="exhaustive", ...) -> Identification   notebook 03
load_identification(model_name, mm=None) -> dict         03's document with tensors; "run 03 first" if missing

Example::

    ident = [s for s, f in zip(samples, follows(mm, samples)) if f]
    result = identify_heads(mm, ident, "tiny", compare_fast=True); write_results(result, "tiny", "03_head_identification")
    load_identification("tiny", mm)["identified"]                  # [(6, 3), ...]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mfutils.data.sample import Sample
from mfutils.measure.prepared import Prepared, prepare
from mfutils.model.loading import MLLM
from mfutils.study.results import OPTIONAL, Document, read_results, results_path
from mfutils.study.scoring import all_heads, exact_drops, head_scores_attribution, head_scores_exhaustive, head_scores_fast
from mfutils.study.selection import rank_agreement, top_heads

__all__ = ["IDENTIFY_METHODS", "Identification", "identification_doc", "identify_heads", "load_identification"]

IDENTIFY_METHODS: tuple[str, ...] = ("fast", "exhaustive")
_NAME = "03_head_identification"


@dataclass
class Identification(Document):
    """Notebook 03's document. ``scores``: the [L, H] table the heads were identified from (lists, NaN kept);
    ``identified``: its top ``share`` as [[layer, head], ...]; ``spearman`` / ``top_overlap``: agreement with
    ``scores_attribution``; ``top_share_of_score``: the top-k scores' sum / the sum of the positive ones.

    ``method`` is None for ``identification_doc`` (whose document calls the table ``scores_exhaustive``);
    ``identify_heads`` sets it with ``scores_verified`` (bool [L, H]), ``forward_equivalents`` and
    ``fast_path`` (how exact scoring ran), and, when computed, ``scores_exhaustive``, ``fast_vs_exhaustive``
    and ``attribution_verify`` (the attribution + verification summary notebook 03 reports).
    """

    model: str
    n_identify: int
    n_layers: int
    n_heads: int
    share: float
    k: int
    scores: list[list[float]]
    scores_attribution: list[list[float]]
    spearman: float
    top_overlap: float
    identified: list[list[int]]
    top_share_of_score: float
    per_layer_top_count: list[int]
    method: str | None = field(default=None, metadata=OPTIONAL)
    scores_verified: list[list[bool]] | None = field(default=None, metadata=OPTIONAL)
    forward_equivalents: float | None = field(default=None, metadata=OPTIONAL)
    fast_path: str | None = field(default=None, metadata=OPTIONAL)
    scores_exhaustive: list[list[float]] | None = field(default=None, metadata=OPTIONAL)
    fast_vs_exhaustive: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)
    attribution_verify: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)

    def to_doc(self) -> dict[str, Any]:
        doc = super().to_doc()
        if self.method is None:               # identification_doc: identified by the exhaustive score
            return {("scores_exhaustive" if k == "scores" else k): v for k, v in doc.items()}
        return doc


def identification_doc(model_name: str, exhaustive: torch.Tensor, attribution: torch.Tensor, share: float,
                       n_identify: int) -> Identification:
    """The 03 document from the two [L, H] score tables (pure: no model needed).

    Keys of ``to_doc()``: model, n_identify, n_layers, n_heads, share, k, scores_exhaustive, scores_attribution,
    spearman, top_overlap, identified (top ``share`` by the exhaustive score), top_share_of_score (sum of the
    top-k exhaustive scores / sum of the positive ones), per_layer_top_count.

    Example::

        doc = identification_doc("tiny", scores, attr, 0.05, n_identify=len(ident)).to_doc()
    """
    ex = np.asarray(exhaustive, dtype=float)
    L, H = ex.shape
    identified = top_heads(ex, share)
    agree = rank_agreement(ex, attribution, share)
    positive = ex[np.isfinite(ex) & (ex > 0)].sum()
    top_sum = sum(ex[l, h] for l, h in identified if np.isfinite(ex[l, h]))
    counts = [sum(1 for l, _ in identified if l == layer) for layer in range(L)]
    return Identification(
        model=model_name, n_identify=int(n_identify), n_layers=int(L), n_heads=int(H),
        share=float(share), k=len(identified),
        scores=ex.tolist(), scores_attribution=np.asarray(attribution, dtype=float).tolist(),
        spearman=agree["spearman"], top_overlap=agree["top_overlap"],
        identified=[[int(l), int(h)] for l, h in identified],
        top_share_of_score=float(top_sum / positive) if positive > 0 else math.nan,
        per_layer_top_count=counts,
    )


def _attribution_verify(mm: MLLM, data: Prepared, exhaustive: torch.Tensor, share: float, batch_size: int,
                        ) -> dict[str, Any]:
    """Notebook 03's summary of attribution + verification against the exhaustive top ``share``."""
    fast = head_scores_fast(mm, data, share=share, batch_size=batch_size, progress=False)
    fast_top = [list(h) for h in top_heads(fast.scores, share)]
    exact_top = [list(h) for h in top_heads(exhaustive, share)]
    k = len(exact_top)
    return {"identified": fast_top,
            "overlap_with_exhaustive": len({tuple(h) for h in fast_top} & {tuple(h) for h in exact_top}) / k,
            "n_verified": int(fast.verified.sum()), "forward_equivalents": round(float(fast.forward_equivalents), 2)}


def identify_heads(mm: MLLM, samples: Sequence[Sample] | Prepared, model_name: str, share: float = 0.05,
                   method: str = "exhaustive", batch_size: int = 64, progress: bool = True,
                   check_exhaustive: bool = False, compare_fast: bool = False) -> Identification:
    """Notebook 03 in one call: score every head and identify the top ``share``; returns the 03 document.

    ``samples``: the identification set (the samples the model follows). ``method="exhaustive"`` (default):
    exact scores with prefix reuse (every head ablated exactly, one rerun of layers >= l at the answer rows
    per head) plus attribution scores for comparison; ``"fast"``: ``head_scores_fast`` (attribution
    patching, then exact ablation of the top 3k candidates). Why exhaustive is the default: with prefix reuse
    it is exact and, in benchmarks/RESULTS.md, both faster than attribution + verification (it needs no
    backward pass) and the only one of the two whose top 5% on the default model is the exhaustive set
    (attribution misses large layer-0 effects).

    The document is ``identification_doc``'s with ``scores`` = the table the heads were identified from
    (the exact score for verified heads), ``method``, ``scores_verified``, ``forward_equivalents`` (of the
    scoring that identified the heads) and ``fast_path``; ``scores_exhaustive`` is present only when computed
    (``method="exhaustive"`` or ``check_exhaustive``, which also adds ``fast_vs_exhaustive``: the top-``share``
    sets of both and whether they are equal). ``compare_fast`` (with the exhaustive scores) adds
    ``attribution_verify``: ``head_scores_fast``'s top set, its overlap with the exhaustive one, how many heads
    it ablated and its forward-equivalents (rounded to 0.01), as notebook 03 reports them.

    Example::

        result = identify_heads(mm, ident_samples, "tiny")              # exact scores, prefix reuse
        write_results(result, "tiny", "03_head_identification")
    """
    if method not in IDENTIFY_METHODS:
        raise ValueError(f"method must be one of {IDENTIFY_METHODS}, got {method!r}")
    data = prepare(mm, samples, batch_size)
    exhaustive = None
    if method == "fast":
        fast = head_scores_fast(mm, data, share=share, batch_size=batch_size, progress=progress)
        scores, attribution, verified, work = fast.scores, fast.attribution, fast.verified, fast.forward_equivalents
        status = fast.fast_path
    else:
        drops, work, status = exact_drops(mm, data, all_heads(mm), batch_size, "prefix", progress,
                                          "exhaustive head scores")
        exhaustive = (drops.mean(0).float() if len(data) else torch.full((mm.n_layers * mm.n_heads,), math.nan)
                      ).reshape(mm.n_layers, mm.n_heads)
        attribution = head_scores_attribution(mm, data, progress=progress)      # for comparison (not counted)
        scores, verified = exhaustive, torch.ones(mm.n_layers, mm.n_heads, dtype=torch.bool)
    if check_exhaustive and exhaustive is None:
        exhaustive = head_scores_exhaustive(mm, data, progress=progress)
    result = identification_doc(model_name, scores, attribution, share, n_identify=len(data))
    result.method, result.scores_verified, result.forward_equivalents = method, verified.tolist(), work
    result.fast_path = status
    if exhaustive is not None:
        result.scores_exhaustive = np.asarray(exhaustive, dtype=float).tolist()
        if method == "fast":
            a, b = top_heads(scores, share), top_heads(exhaustive, share)
            result.fast_vs_exhaustive = {"top_fast": [list(h) for h in a], "top_exhaustive": [list(h) for h in b],
                                         "equal": set(a) == set(b), "overlap": len(set(a) & set(b)) / len(a)}
        if compare_fast:
            result.attribution_verify = _attribution_verify(mm, data, exhaustive, share, batch_size)
    return result


def load_identification(model_name: str, mm: MLLM | None = None) -> dict[str, Any]:
    """Notebook 03's document, with ``scores`` (the table the heads were identified from; equal to
    ``scores_exhaustive`` for exhaustive documents), ``scores_exhaustive`` (when computed) and
    ``scores_attribution`` as FloatTensors [L, H] (null -> NaN) and ``identified`` as [(layer, head), ...].
    With ``mm``, checks that its shape matches.

    Example::

        ident = load_identification("tiny", mm); ident["identified"]       # [(6, 3), ...]
    """
    path = results_path(model_name, _NAME, create=False)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: run 03 first (notebooks/03_head_identification.ipynb with model={model_name!r}); "
            "notebooks 04-06 use the heads it identifies")
    doc = read_results(model_name, _NAME)
    if "scores" not in doc:                       # written by identification_doc: identified by the exhaustive score
        doc["scores"] = doc["scores_exhaustive"]
    for key in ("scores", "scores_exhaustive", "scores_attribution"):
        if key in doc:
            doc[key] = torch.tensor([[math.nan if v is None else float(v) for v in row] for row in doc[key]])
    doc["identified"] = [(int(l), int(h)) for l, h in doc["identified"]]
    if mm is not None and (doc["n_layers"], doc["n_heads"]) != (mm.n_layers, mm.n_heads):
        raise ValueError(f"{path} was written for {doc['n_layers']} x {doc['n_heads']} heads, but {mm.name!r} has "
                         f"{mm.n_layers} x {mm.n_heads}: rerun 03 for this model")
    return doc
