"""Head scores: how much the instructed margin drops when one head is blocked (C5, paper/METHOD.md).

- **Head score** (ours; paper/METHOD.md): the mean drop of the instructed margin
  (``measure.margins.margins``, binary constraint) when one head alone is blocked (alpha = 0) at the answer
  position, over the samples the model follows correctly. Positive: the head supports following.
- **Attribution score**: the first-order (gradient x activation) estimate of the same drop,
  ``a_h . dm/da_h`` at the answer position, where ``a_h`` is the head's slice of the ``o_proj`` input.
  Blocking moves ``a_h`` by ``-a_h``, so the margin changes by about ``-(a_h . dm/da_h)``; the *drop*
  is its negative. Both scores share one sign convention.

Performance: blocking a head of layer l at the answer position reruns only layers >= l at
the answer rows (``measure.prefix.checked_trace``, checked on every batch, with full forwards as the
fallback); how a run went is ``Drops.fast_path`` and, for a ``Prepared`` input, ``data.fast_path``.
``head_scores_fast`` (attribution patching, the top 3k candidates verified by exact ablation) is the
cheaper-in-principle alternative (benchmarks/RESULTS.md). Batches that run out of memory are retried at half
the size (``measure.prepared.per_batch``).

Public API
----------
SCORE_METHODS = ("prefix", "full")
all_heads(mm) -> list[(layer, head)]                      every head, layer-major
Drops(drops, forward_equivalents, fast_path)              drops [N, len(heads)] float64 of ``exact_drops``
exact_drops(mm, data, heads, batch_size, method, progress, desc) -> Drops   m - m' per sample and head
head_scores_exhaustive(mm, data, batch_size=64, progress=True, per_sample=False, method="prefix")
                                                          -> FloatTensor [L, H] (or [N, L, H]); the reference
head_score_reference(mm, samples, head) -> float          slow unbatched reference (one sample per forward)
head_scores_attribution(mm, data, batch_size=64, progress=True) -> FloatTensor [L, H]
Attribution(scores, per_sample), head_attribution(mm, data, batch_size=64, progress=True) -> Attribution
                                                          the same [L, H] scores and the per-sample terms [N, L, H]
FastScores, head_scores_fast(mm, data, share=0.05, factor=3) -> FastScores   attribution, then exact
                                                          ablation of the top 3k candidates

Example::

    data = prepare(mm, [s for s, f in zip(samples, follows(mm, samples)) if f])
    scores = head_scores_exhaustive(mm, data)                     # [L, H]; data.fast_path == "prefix-reuse"
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from mfutils.core.processes import gather_items, share
from mfutils.data.sample import Sample
from mfutils.measure.answers import answer_logits, targets_for
from mfutils.measure.follow import Head, check_heads
from mfutils.measure.margins import margins
from mfutils.measure.prefix import PREFIX_REUSE, checked_trace, merge_status, merge_statuses
from mfutils.measure.prepared import NOT_RUN, Batch, Prepared, n_batches, per_batch, prepare, samples_of
from mfutils.model.groups import encode
from mfutils.model.hooks import registered, scale_heads
from mfutils.model.loading import MLLM
from mfutils.study.selection import n_top, ranked, top_heads

__all__ = ["SCORE_METHODS", "all_heads", "Drops", "exact_drops", "head_scores_exhaustive", "head_score_reference",
           "head_scores_attribution", "Attribution", "head_attribution", "FastScores", "head_scores_fast"]

SCORE_METHODS: tuple[str, ...] = ("prefix", "full")


def all_heads(mm: MLLM) -> list[Head]:
    """Every (layer, head) of the model, layer-major. Example: ``len(all_heads(mm)) == mm.n_layers * mm.n_heads``."""
    return [(l, h) for l in range(mm.n_layers) for h in range(mm.n_heads)]


def _ablation_logits(mm: MLLM, batch: Batch, heads: Sequence[Head], method: str = "prefix"
                     ) -> tuple[str, Iterator[torch.Tensor]]:
    """(status, iterator of the clean answer logits [B, V] of ``batch``, then those with each head of ``heads``
    alone blocked (alpha = 0) at the answer position).

    ``method="prefix"``: blocking a head of layer l at the answer position changes nothing before layer l
    and no earlier row, so one clean forward (``hooks.prefix_trace``) serves all heads and each reruns
    layers l..L-1 for the answer rows only (prefix reuse, paper/METHOD.md; prefix reuse); checked per batch, with full
    forwards as the fallback. ``method="full"``: one full forward per head (the plain reference).
    """
    enc = batch.enc
    last = enc.groups["last"]
    if method == "prefix":
        trace, status = checked_trace(mm, enc, rows_from_last=True)
    else:
        trace, status = None, "full forwards (method='full')"

    def run() -> Iterator[torch.Tensor]:
        if trace is not None:
            yield trace.logits
            p0 = int(trace.last.min())
            for hd in heads:
                with scale_heads(mm, {hd: 0.0}, positions=last):
                    out = trace.rerun(hd[0], rows_from=p0)
                yield out
            return
        yield answer_logits(mm, enc).float()
        for hd in heads:
            with scale_heads(mm, {hd: 0.0}, positions=last):
                out = answer_logits(mm, enc).float()
            yield out

    return status, run()


class Drops(NamedTuple):
    """``drops``: [N, len(heads)] float64, m - m' per sample and blocked head (NaN never written means the
    batch failed); ``forward_equivalents``: decoder work in full forwards of a batch; ``fast_path``: how the
    run went (``"prefix-reuse"`` or why it used full forwards)."""

    drops: torch.Tensor
    forward_equivalents: float
    fast_path: str


@torch.no_grad()
def exact_drops(mm: MLLM, samples: Sequence[Sample] | Prepared, heads: Sequence[Head], batch_size: int,
                method: str, progress: bool, desc: str) -> Drops:
    """m - m' per sample with each head of ``heads`` alone blocked at the answer position: ``Drops``.

    Example::

        d = exact_drops(mm, data, [(3, 1), (5, 0)], 64, "prefix", False, "")      # d.drops [N, 2]
    """
    n = len(samples_of(samples))
    drops = torch.full((n, len(heads)), math.nan, dtype=torch.float64)
    work = {"fwd": 0.0}
    status = NOT_RUN
    bar = tqdm(total=len(share(n_batches(samples, batch_size))), desc=desc, disable=not progress)

    def fn(batch: Batch) -> None:
        nonlocal status
        batch_status, logits = _ablation_logits(mm, batch, heads, method)
        status = merge_status(status, batch_status)
        m0 = margins(next(logits), batch.targets).double().cpu()
        for j, lg in enumerate(logits):
            drops[batch.index, j] = m0 - margins(lg, batch.targets).double().cpu()
        T = batch.enc.groups.shape[1]
        if batch_status == PREFIX_REUSE:
            p0 = int(batch.enc.groups.last_index().min())
            work["fwd"] += 1 + sum((mm.n_layers - l) * (T - p0) for l, _ in heads) / (mm.n_layers * T)
        else:
            work["fwd"] += 1 + len(heads)
        bar.update(1)

    try:
        per_batch(mm, samples, batch_size, fn, desc, fills=[(drops, 0)])    # spread over processes, if any
    finally:
        bar.close()
    status = merge_statuses(gather_items([status]))
    work["fwd"] = sum(gather_items([work["fwd"]]))
    if isinstance(samples, Prepared):
        samples.fast_path = status
    return Drops(drops, work["fwd"], status)


@torch.no_grad()
def head_scores_exhaustive(mm: MLLM, samples: Sequence[Sample] | Prepared, batch_size: int = 64,
                           progress: bool = True, per_sample: bool = False, method: str = "prefix") -> torch.Tensor:
    """Head scores by exhaustive blocking: FloatTensor [L, H] (or [N, L, H] with ``per_sample``).

    score[l, h] = mean over ``samples`` of m - m', where m is the instructed margin (``margins``, binary
    constraint) and m' the margin with head (l, h) alone blocked (alpha = 0) at the answer position.
    Pass the samples the model follows correctly (the identification set); no samples give NaN scores.
    ``method="prefix"`` (default): one clean forward per batch, then per head a rerun of layers >= l at the
    answer rows only; ``"full"``: one full forward per head per batch. Equal to 1e-5 (tested). With a
    ``Prepared``, ``samples.fast_path`` tells which ran. This is the reference that ``head_scores_fast``
    approximates.

    Example::

        data = prepare(mm, ident); scores = head_scores_exhaustive(mm, data)      # [L, H]
        top_heads(scores)                                                        # identified
    """
    if method not in SCORE_METHODS:
        raise ValueError(f"method must be one of {SCORE_METHODS}, got {method!r}")
    n = len(samples_of(samples))
    drops = exact_drops(mm, samples, all_heads(mm), batch_size, method, progress, "exhaustive head scores").drops
    drops = drops.reshape(n, mm.n_layers, mm.n_heads)
    if per_sample:
        return drops.float()
    return drops.mean(0).float() if n else torch.full((mm.n_layers, mm.n_heads), math.nan)


@torch.no_grad()
def head_score_reference(mm: MLLM, samples: Sequence[Sample], head: Head) -> float:
    """The exhaustive score of one head computed the slow way, for checks: one sample per forward (no
    padding, no KV cache), the head blocked at that sample's answer position with ``hooks.scale_heads``.

    Example::

        assert abs(head_score_reference(mm, ident, (3, 1)) - float(scores[3, 1])) < 1e-4
    """
    (layer, h), = check_heads(mm, [head])
    drops = []
    for s in samples:
        enc = encode(mm, [s.prompt]).to(mm.device)
        t = targets_for(mm, [s])
        m0 = margins(answer_logits(mm, enc), t)
        with scale_heads(mm, {(layer, h): 0.0}, positions=enc.groups["last"]):
            m1 = margins(answer_logits(mm, enc), t)
        drops.append(float(m0 - m1))
    return float(np.mean(drops)) if drops else math.nan


@contextmanager
def _o_proj_inputs(mm: MLLM) -> Iterator[dict[int, torch.Tensor]]:
    """Capture every layer's ``o_proj`` input [B, T, H * head_dim] as a tensor that gradients reach.

    Forward pre-hooks; where the input does not require grad (frozen weights, first layer) it is replaced
    by an identical leaf that does, so ``torch.autograd.grad`` can differentiate with respect to it. The
    hooks are removed on exit, newest first, also when the body raises (``hooks.registered``).
    """
    store: dict[int, torch.Tensor] = {}

    def make(layer: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            x = args[0]
            if x.requires_grad:
                x.retain_grad()
                store[layer] = x
                return None
            leaf = x.detach().requires_grad_(True)
            store[layer] = leaf
            return (leaf, *args[1:])

        return hook

    with registered(mm.o_proj(l).register_forward_pre_hook(make(l)) for l in range(mm.n_layers)):
        yield store


class Attribution(NamedTuple):
    """``scores``: FloatTensor [L, H], the mean attribution score (exactly ``head_scores_attribution``'s);
    ``per_sample``: float64 [N, L, H], each sample's term a_h . dm/da_h (its mean over samples is ``scores``
    up to float rounding), for bootstrap intervals over samples at no extra model cost."""

    scores: torch.Tensor
    per_sample: torch.Tensor


def head_attribution(mm: MLLM, samples: Sequence[Sample] | Prepared, batch_size: int = 64,
                     progress: bool = True) -> Attribution:
    """Head scores by attribution patching, with the per-sample terms kept: ``Attribution``.

    The same pass as ``head_scores_attribution`` (which returns ``.scores``); ``per_sample`` [N, L, H] adds
    no model work.

    Example::

        attr = head_attribution(mm, ident); attr.per_sample.shape        # (N, L, H)
    """
    L, H, hd = mm.n_layers, mm.n_heads, mm.head_dim
    n = len(samples_of(samples))
    per_sample = torch.full((n, L, H), math.nan, dtype=torch.float64)
    bar = tqdm(total=len(share(n_batches(samples, batch_size))), desc="attribution head scores",
               disable=not progress)

    def fn(batch: Batch) -> None:
        with torch.enable_grad(), _o_proj_inputs(mm) as acts:
            m = margins(answer_logits(mm, batch.enc), batch.targets)
            inputs = [acts[l] for l in range(L)]
            grads = torch.autograd.grad(m.sum(), inputs, allow_unused=True)
        rows = torch.arange(m.shape[0], device=m.device)
        last = batch.enc.groups.last_index().to(m.device)
        for l, (a, g) in enumerate(zip(inputs, grads)):
            if g is None:
                per_sample[batch.index, l] = 0.0
                continue
            a_l = a.detach()[rows, last].float().unflatten(-1, (H, hd))
            g_l = g[rows, last].float().unflatten(-1, (H, hd))
            terms = (a_l * g_l).sum(-1)                                       # [B, H]
            per_sample[batch.index, l] = terms.double().cpu()
        bar.update(1)

    try:
        per_batch(mm, samples, batch_size, fn, "attribution head scores", fills=[(per_sample, 0)])
    finally:
        bar.close()
    total = per_sample.sum(0)                # the same sum whatever the number of processes
    return Attribution((total / n).float() if n else torch.full((L, H), math.nan), per_sample)


def head_scores_attribution(mm: MLLM, samples: Sequence[Sample] | Prepared, batch_size: int = 64,
                            progress: bool = True) -> torch.Tensor:
    """Head scores by attribution patching (gradient x activation): FloatTensor [L, H].

    score[l, h] = mean over samples of a_h . dm/da_h at the answer position, where a_h is head h's slice
    of layer l's ``o_proj`` input and m the instructed margin: the first-order estimate of the drop
    m - m' that ``head_scores_exhaustive`` measures (blocking changes the margin by about -(a_h . dm/da_h)).
    One forward and one backward per batch for all heads; weights get no ``.grad``. ``head_attribution``
    also returns the per-sample terms.

    Example::

        attr = head_scores_attribution(mm, ident)          # [L, H]
        rank_agreement(scores, attr)["spearman"]
    """
    return head_attribution(mm, samples, batch_size, progress).scores


@dataclass
class FastScores:
    """Head scores by attribution patching, with the top candidates verified by exact ablation.

    ``scores``: FloatTensor [L, H], the exact (exhaustive) score where ``verified`` and the attribution
    score elsewhere; ``attribution``: [L, H]; ``verified``: BoolTensor [L, H]; ``forward_equivalents``:
    decoder work in full forwards of a batch (attribution counted as 3: forward + backward), summed over
    batches; ``rounds``: verification rounds (1 unless the top ``share`` held unverified heads);
    ``fast_path``: how the verification ran (``"prefix-reuse"`` or why it used full forwards).

    Example::

        fast = head_scores_fast(mm, ident); top_heads(fast.scores)       # all verified
    """

    scores: torch.Tensor
    attribution: torch.Tensor
    verified: torch.Tensor
    forward_equivalents: float
    rounds: int
    fast_path: str = NOT_RUN


def head_scores_fast(mm: MLLM, samples: Sequence[Sample] | Prepared, share: float = 0.05, factor: float = 3.0,
                     batch_size: int = 64, progress: bool = True, method: str = "prefix") -> FastScores:
    """Attribution patching for every head, then exact ablation of the top candidates: ``FastScores``.

    1. ``head_scores_attribution`` (one forward + backward per batch). 2. The ``ceil(factor * k)`` heads
    with the highest attribution score (k = ``n_top(L, H, share)``) are scored exactly, as
    ``head_scores_exhaustive`` does (``method``). 3. While the top k of the combined table hold a head
    that is not verified, those heads are scored exactly too. So the top ``share`` of ``scores`` always
    carry exact scores; a head outside the candidates whose exact score would rank in the top k is missed
    only if its attribution score ranked below every candidate's (benchmarks/RESULTS.md reports the
    top-5% set against the exhaustive one).

    Example::

        fast = head_scores_fast(mm, ident, share=0.05)      # fast.scores [L, H]
        identified = top_heads(fast.scores, 0.05)
    """
    L, H = mm.n_layers, mm.n_heads
    data = prepare(mm, samples, batch_size)
    n = len(data)
    attribution = head_scores_attribution(mm, data, progress=progress)
    work = 3.0 * len(data.batches)
    scores = attribution.clone()
    verified = torch.zeros(L, H, dtype=torch.bool)
    if n == 0:
        return FastScores(scores, attribution, verified, 0.0, 0)
    k = n_top(L, H, share)
    todo = ranked(attribution)[:min(L * H, math.ceil(factor * k))]
    rounds = 0
    status = NOT_RUN
    while todo:
        rounds += 1
        drops, fwd, round_status = exact_drops(mm, data, todo, batch_size, method, progress, "verify head scores")
        status = merge_status(status, round_status)
        work += fwd
        for j, (l, h) in enumerate(todo):
            scores[l, h] = float(drops[:, j].mean())
            verified[l, h] = True
        todo = [hd for hd in top_heads(scores, share) if not verified[hd]]
    data.fast_path = status
    return FastScores(scores, attribution, verified, float(work), rounds, status)
