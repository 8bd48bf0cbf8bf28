"""Identifying the heads that arbitrate between modalities: the top share by head score (notebook 03, C5).

**Identified heads**: the top ``share`` (5%) of all heads by the exhaustive head score
(``mfutils.study.scoring``), ``k = max(1, round(share * L * H))``.

**Uncertainty of the selection** (ours): B bootstrap resamples of the identification samples (the
same B resamples for every statistic: the per-sample drops [N, L, H] that exhaustive scoring measures anyway
are averaged with each resample's counts, no model run). ``selection_stability``: the share of resamples in
which each head is again in the top k (Wilson interval over the B resamples: Monte Carlo error only);
``boundary_margin``: the k-th minus the (k+1)-th score with the paired bootstrap interval of that difference
(the same two heads in every resample); ``score_intervals``: C5's top share, Spearman and top-share overlap
with percentile bootstrap intervals (the statistic recomputed on each resample, the top k re-selected).

Public API
----------
IDENTIFY_METHODS = ("fast", "exhaustive")
Identification                                          the 03 document (``to_doc()``)
identification_doc(model_name, exhaustive, attribution, share, n_identify) -> Identification   pure, no model
identify_heads(mm, samples, model_name, share=0.05, method="exhaustive", ...) -> Identification   notebook 03
load_identification(model_name, mm=None) -> dict         03's document with tensors; "run 03 first" if missing
bootstrap_means(per_sample, n_boot=1000, seed=0) -> ndarray [B, P]   means of [N, P] values over resamples
selection_stability(drops, scores, k, n_boot=1000, seed=0, n_outside=None) -> dict   per-head top-k frequency
boundary_margin(drops, scores, k, n_boot=1000, seed=0) -> dict | None      k-th minus (k+1)-th score [interval]
score_intervals(drops, attribution, share, n_boot=1000, seed=0) -> dict    C5's numbers with bootstrap intervals

Example::

    ident = [s for s, f in zip(samples, follows(mm, samples)) if f]
    result = identify_heads(mm, ident, "tiny", compare_fast=True); write_results(result, "tiny", "03_head_identification")
    load_identification("tiny", mm)["identified"]                  # [(6, 3), ...]
    selection_stability(drops, scores, k=3)["heads"][2]["frequency"]     # drops [N, L, H]: 0.55
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
from mfutils.measure.stats import wilson
from mfutils.study.scoring import all_heads, exact_drops, head_attribution, head_scores_exhaustive, head_scores_fast
from mfutils.study.selection import n_top, rank_agreement, ranked, top_heads

__all__ = ["IDENTIFY_METHODS", "Identification", "identification_doc", "identify_heads", "load_identification",
           "bootstrap_means", "selection_stability", "boundary_margin", "score_intervals"]

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

    With per-sample drops (``identification_doc(..., drops=...)``, ``identify_heads`` with the exhaustive
    method): ``intervals`` (``score_intervals``), ``selection_stability`` and ``top_k_boundary``
    (``boundary_margin``; None when every head is identified).
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
    intervals: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)
    selection_stability: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)
    top_k_boundary: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)

    def to_doc(self) -> dict[str, Any]:
        doc = super().to_doc()
        if self.method is None:               # identification_doc: identified by the exhaustive score
            return {("scores_exhaustive" if k == "scores" else k): v for k, v in doc.items()}
        return doc


def identification_doc(model_name: str, exhaustive: torch.Tensor, attribution: torch.Tensor, share: float,
                       n_identify: int, drops: torch.Tensor | np.ndarray | None = None,
                       attribution_drops: torch.Tensor | np.ndarray | None = None, n_boot: int = 1000,
                       seed: int = 0) -> Identification:
    """The 03 document from the two [L, H] score tables (pure: no model needed).

    Keys of ``to_doc()``: model, n_identify, n_layers, n_heads, share, k, scores_exhaustive, scores_attribution,
    spearman, top_overlap, identified (top ``share`` by the exhaustive score), top_share_of_score (sum of the
    top-k exhaustive scores / sum of the positive ones), per_layer_top_count. With ``drops`` (the per-sample
    exhaustive drops [N, L, H] whose mean is ``exhaustive``) also ``intervals``, ``selection_stability`` and
    ``top_k_boundary`` from ``n_boot`` resamples (``seed``); ``attribution_drops`` [N, L, H] (the per-sample
    attribution terms) adds the Spearman and overlap intervals.

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
    doc = Identification(
        model=model_name, n_identify=int(n_identify), n_layers=int(L), n_heads=int(H),
        share=float(share), k=len(identified),
        scores=ex.tolist(), scores_attribution=np.asarray(attribution, dtype=float).tolist(),
        spearman=agree["spearman"], top_overlap=agree["top_overlap"],
        identified=[[int(l), int(h)] for l, h in identified],
        top_share_of_score=float(top_sum / positive) if positive > 0 else math.nan,
        per_layer_top_count=counts,
    )
    if drops is not None:
        k = len(identified)
        doc.intervals = score_intervals(drops, attribution_drops, share, n_boot, seed, exhaustive=ex,
                                        attribution=np.asarray(attribution, dtype=float))
        doc.selection_stability = selection_stability(drops, ex, k, n_boot, seed)
        doc.top_k_boundary = boundary_margin(drops, ex, k, n_boot, seed)
    return doc


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
                   check_exhaustive: bool = False, compare_fast: bool = False, n_boot: int = 1000,
                   seed: int = 0) -> Identification:
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
    it ablated and its forward-equivalents (rounded to 0.01), as notebook 03 reports them. With
    ``method="exhaustive"`` the per-sample drops and attribution terms are kept, and the document gains
    ``intervals``, ``selection_stability`` and ``top_k_boundary`` (``n_boot`` resamples, ``seed``); no
    extra model work. The fast method has no per-sample drops of every head and leaves them out.

    Example::

        result = identify_heads(mm, ident_samples, "tiny")              # exact scores, prefix reuse
        write_results(result, "tiny", "03_head_identification")
    """
    if method not in IDENTIFY_METHODS:
        raise ValueError(f"method must be one of {IDENTIFY_METHODS}, got {method!r}")
    data = prepare(mm, samples, batch_size)
    exhaustive = per_sample = attribution_terms = None
    if method == "fast":
        fast = head_scores_fast(mm, data, share=share, batch_size=batch_size, progress=progress)
        scores, attribution, verified, work = fast.scores, fast.attribution, fast.verified, fast.forward_equivalents
        status = fast.fast_path
    else:
        drops, work, status = exact_drops(mm, data, all_heads(mm), batch_size, "prefix", progress,
                                          "exhaustive head scores")
        exhaustive = (drops.mean(0).float() if len(data) else torch.full((mm.n_layers * mm.n_heads,), math.nan)
                      ).reshape(mm.n_layers, mm.n_heads)
        per_sample = drops.reshape(len(data), mm.n_layers, mm.n_heads)          # kept for the bootstrap
        attribution, attribution_terms = head_attribution(mm, data, progress=progress)   # for comparison
        scores, verified = exhaustive, torch.ones(mm.n_layers, mm.n_heads, dtype=torch.bool)
    if check_exhaustive and exhaustive is None:
        exhaustive = head_scores_exhaustive(mm, data, progress=progress)
    result = identification_doc(model_name, scores, attribution, share, n_identify=len(data), drops=per_sample,
                                attribution_drops=attribution_terms, n_boot=n_boot, seed=seed)
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


# ------------------------------------------------------------------------------------------------
# Uncertainty of the selection: B bootstrap resamples of the identification samples
# ------------------------------------------------------------------------------------------------
def _flat(per_sample: torch.Tensor | np.ndarray) -> np.ndarray:
    x = np.asarray(per_sample, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"per-sample values must be [N, L, H], got shape {list(x.shape)}")
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2])


def bootstrap_means(per_sample: torch.Tensor | np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Means over ``n_boot`` bootstrap resamples of the samples (rows) of ``per_sample`` [N, P]: [B, P] float64.

    Resample b draws N rows with replacement (``default_rng(seed).integers(0, N, (B, N))``, as
    ``measure.stats.paired_bootstrap``), so calls with the same N, ``n_boot`` and ``seed`` use the same
    resamples. A NaN value makes a column's mean NaN only in the resamples that draw its row. N = 0 gives NaN.

    Example: ``bootstrap_means(drops.reshape(len(drops), -1), 1000).shape`` -> ``(1000, L * H)``.
    """
    x = np.asarray(per_sample, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        return np.full((n_boot, x.shape[1]), math.nan)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
    bad = ~np.isfinite(x)
    means = counts @ np.where(bad, 0.0, x) / n
    if bad.any():
        means[(counts @ bad.astype(float)) > 0] = math.nan
    return means


def _order(means: np.ndarray) -> np.ndarray:
    """Heads of each resample [B, P] ranked highest first, NaN last, ties by index (as ``selection.ranked``)."""
    return np.argsort(-np.nan_to_num(means, nan=-math.inf), axis=1, kind="stable")


def _top_mask(means: np.ndarray, k: int) -> np.ndarray:
    """[B, P] bool: the top k heads of each resample."""
    mask = np.zeros(means.shape, dtype=bool)
    np.put_along_axis(mask, _order(means)[:, :k], True, axis=1)
    return mask


def _interval(value: float, boots: np.ndarray, n: int) -> dict[str, float]:
    """``{"value", "lo", "hi", "n"}``: the percentile 95% interval of the finite bootstrap values."""
    b = boots[np.isfinite(boots)]
    lo, hi = (float(np.quantile(b, 0.025)), float(np.quantile(b, 0.975))) if b.size else (math.nan, math.nan)
    return {"value": float(value), "lo": lo, "hi": hi, "n": int(n)}


def _rate(hits: int, total: int, n: int = 1) -> dict[str, float]:
    """``{"frequency", "lo", "hi"}``: hits / total with a Wilson interval; NaN without samples (n == 0)."""
    if n == 0 or total == 0:
        return {"frequency": math.nan, "lo": math.nan, "hi": math.nan}
    lo, hi = wilson(hits, total)
    return {"frequency": hits / total, "lo": lo, "hi": hi}


def selection_stability(drops: torch.Tensor | np.ndarray, scores: torch.Tensor | np.ndarray, k: int,
                        n_boot: int = 1000, seed: int = 0, n_outside: int | None = None) -> dict[str, Any]:
    """How often each head is again in the top k when the identification samples are resampled.

    ``drops``: the per-sample drops [N, L, H] (``scoring.exact_drops``); ``scores``: the [L, H] table the heads
    were identified from (their mean), which fixes the ranking reported. Returns ``{"n_boot", "n", "k",
    "heads", "set", "frequency"}``: ``heads`` the identified heads and the next ``n_outside`` (default k) by
    score, each ``{"head", "rank", "score", "identified", "frequency", "lo", "hi"}``; ``set`` the share of
    resamples whose top k is exactly the identified set; ``frequency`` the [L, H] table for every head (it sums
    to k). Intervals: Wilson over the B resamples (the Monte Carlo error of the frequency, not a second
    sampling interval: the frequency itself is the bootstrap's answer).

    Example::

        st = selection_stability(drops, scores, k=3); [h["frequency"] for h in st["heads"]]   # [1.0, 1.0, 0.55, ...]
    """
    x = _flat(drops)
    ex = np.asarray(scores, dtype=np.float64)
    L, H = ex.shape
    order = ranked(ex)
    means = bootstrap_means(x, n_boot, seed)
    top = _top_mask(means, k)
    hits = top.sum(0)
    ident = np.zeros(L * H, dtype=bool)
    ident[[l * H + h for l, h in order[:k]]] = True
    same = int((top == ident).all(1).sum())
    extra = k if n_outside is None else n_outside
    n = x.shape[0]
    heads = []
    for rank, (l, h) in enumerate(order[:min(L * H, k + extra)], start=1):
        heads.append({"head": [int(l), int(h)], "rank": rank, "score": float(ex[l, h]), "identified": rank <= k,
                      **_rate(int(hits[l * H + h]), n_boot, n)})
    table = hits / n_boot if n else np.full(L * H, math.nan)
    return {"n_boot": int(n_boot), "n": int(n), "k": int(k), "heads": heads, "set": _rate(same, n_boot, n),
            "frequency": table.reshape(L, H).tolist()}


def boundary_margin(drops: torch.Tensor | np.ndarray, scores: torch.Tensor | np.ndarray, k: int,
                    n_boot: int = 1000, seed: int = 0) -> dict[str, Any] | None:
    """The top-k boundary: the k-th and (k+1)-th heads by ``scores`` [L, H], their scores and the difference
    with a paired bootstrap 95% interval over samples (the same two heads' mean drops in each resample of
    ``drops`` [N, L, H]; an interval that covers 0 is a tie at this n). Also ``order_frequency``: the share of
    resamples in which the k-th head scores above the (k+1)-th. None when k is every head.

    Example::

        boundary_margin(drops, scores, 3)["difference"]       # {"value": 0.013, "lo": -0.05, "hi": 0.08, "n": 239}
    """
    x = _flat(drops)
    ex = np.asarray(scores, dtype=np.float64)
    L, H = ex.shape
    order = ranked(ex)
    if k >= L * H:
        return None
    (la, ha), (lb, hb) = order[k - 1], order[k]
    means = bootstrap_means(x, n_boot, seed)
    diff = means[:, la * H + ha] - means[:, lb * H + hb]
    ahead = int((diff[np.isfinite(diff)] > 0).sum())
    return {"k": int(k), "n_boot": int(n_boot),
            "kth": {"head": [int(la), int(ha)], "score": float(ex[la, ha])},
            "next": {"head": [int(lb), int(hb)], "score": float(ex[lb, hb])},
            "difference": _interval(float(ex[la, ha] - ex[lb, hb]), diff, x.shape[0]),
            "order_frequency": _rate(ahead, int(np.isfinite(diff).sum()), x.shape[0])}


def _row_ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share the mean rank), as ``selection.rank_agreement`` uses."""
    order = np.argsort(x, axis=-1, kind="stable")
    sx = np.take_along_axis(x, order, axis=-1)
    pos = np.broadcast_to(np.arange(x.shape[-1]), x.shape)
    new = np.ones(x.shape, dtype=bool)
    new[..., 1:] = sx[..., 1:] != sx[..., :-1]
    first = np.maximum.accumulate(np.where(new, pos, 0), axis=-1)
    last_new = np.ones(x.shape, dtype=bool)
    last_new[..., :-1] = new[..., 1:]
    last = np.flip(np.minimum.accumulate(np.flip(np.where(last_new, pos, x.shape[-1]), -1), axis=-1), -1)
    ranks = np.empty(x.shape)
    np.put_along_axis(ranks, order, (first + last) / 2.0, axis=-1)
    return ranks


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman coefficient per row of [B, P] pairs; NaN for a row with a NaN or a constant side."""
    bad = ~(np.isfinite(a).all(1) & np.isfinite(b).all(1))
    ra = _row_ranks(np.nan_to_num(a)) - (a.shape[1] - 1) / 2.0
    rb = _row_ranks(np.nan_to_num(b)) - (a.shape[1] - 1) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = (ra * rb).sum(1) / np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    rho[bad] = math.nan
    return rho


def score_intervals(drops: torch.Tensor | np.ndarray, attribution_drops: torch.Tensor | np.ndarray | None,
                    share: float, n_boot: int = 1000, seed: int = 0, exhaustive: np.ndarray | None = None,
                    attribution: np.ndarray | None = None) -> dict[str, Any]:
    """C5's numbers with percentile bootstrap 95% intervals over the identification samples.

    ``drops``, ``attribution_drops``: per-sample exhaustive drops and attribution terms [N, L, H] (the same
    samples); ``exhaustive`` / ``attribution``: the [L, H] tables reported as the values (default: the means of
    the per-sample arrays). Each resample recomputes the statistic as defined, the top k re-selected:
    ``top_share_of_score`` (sum of the top-k scores / sum of the positive ones), and with ``attribution_drops``
    ``spearman`` (over the heads finite in both tables) and ``top_overlap`` (|top k of both| / k, with
    ``count`` = |top k of both| and ``k``). Each ``{"value", "lo", "hi", "n"}``; plus ``n_boot`` and, when no
    per-sample attribution is given, ``attribution_per_sample: False`` (Spearman and overlap have no interval).

    Example::

        score_intervals(drops, attr_terms, 0.05)["top_share_of_score"]   # {"value": 0.81, "lo": .., "hi": .., "n": ..}
    """
    x = _flat(drops)
    n, P = x.shape
    L, H = np.asarray(drops).shape[1:]
    k = n_top(L, H, share)
    ex = x.mean(0).reshape(L, H) if exhaustive is None else np.asarray(exhaustive, dtype=np.float64)
    means = bootstrap_means(x, n_boot, seed)
    ranked_means = np.take_along_axis(means, _order(means), axis=1)[:, :k]
    top = np.where(np.isfinite(ranked_means), ranked_means, 0.0).sum(1)
    positive = np.where(np.isfinite(means) & (means > 0), means, 0.0).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = np.where(positive > 0, top / positive, math.nan)
    ident = top_heads(ex, share)
    pos_full = ex[np.isfinite(ex) & (ex > 0)].sum()
    top_full = sum(ex[l, h] for l, h in ident if np.isfinite(ex[l, h]))
    out: dict[str, Any] = {"n_boot": int(n_boot),
                           "top_share_of_score": _interval(top_full / pos_full if pos_full > 0 else math.nan, boots, n)}
    if attribution_drops is None:
        out["attribution_per_sample"] = False
        return out
    y = _flat(attribution_drops)
    if y.shape != x.shape:
        raise ValueError(f"drops {list(x.shape)} and attribution_drops {list(y.shape)} must be the same samples")
    at = y.mean(0).reshape(L, H) if attribution is None else np.asarray(attribution, dtype=np.float64)
    agree = rank_agreement(ex, at, share)
    ok = np.isfinite(ex.ravel()) & np.isfinite(at.ravel())
    a_means = bootstrap_means(y, n_boot, seed)                      # the same resamples as ``means``
    rho = _spearman_rows(means[:, ok], a_means[:, ok])
    both = (_top_mask(means, k) & _top_mask(a_means, k)).sum(1)
    count = len(set(ident) & set(top_heads(at, share)))
    out["spearman"] = _interval(agree["spearman"], rho, n)
    out["top_overlap"] = {**_interval(agree["top_overlap"], both / k, n), "count": count, "k": int(k)}
    return out
