"""Attention heads that arbitrate between modalities: scores, blocking, amplification, retention (C5-C9).

The analyses of notebooks 03-06 (design sections 1, 4, 5). Computation only; the figures live in
``mfutils.present.plots_heads``. Definitions marked (ours) are our reconstruction: the paper (arXiv 2602.03677)
publishes only its abstract.

- **Head score** (ours, within design section 5): the mean drop of the instructed margin
  (``metrics.margins``, binary constraint) when one head alone is blocked (alpha = 0) at the answer
  position, over the samples the model follows correctly. Positive: the head supports following.
- **Attribution score**: the first-order (gradient x activation) estimate of the same drop,
  ``a_h . dm/da_h`` at the answer position, where ``a_h`` is the head's slice of the ``o_proj`` input.
  Blocking moves ``a_h`` by ``-a_h``, so the margin changes by about ``-(a_h . dm/da_h)``; the *drop*
  is its negative. Both scores share one sign convention.
- **Identified heads**: the top ``share`` (5%) of all heads by the exhaustive score,
  ``k = max(1, round(share * L * H))``.
- **MFR**: share of conflict samples answered with the instructed modality's answer
  (``metrics.follows``); on non-conflict samples the same test is plain accuracy.

Performance (design section 4, prefix reuse through ``hooks.PrefixTrace``, checked on every batch with a
fallback to plain forwards): blocking a head of layer l at the answer position reruns only layers >= l at
the answer rows; blocking or amplifying a head set whose lowest layer is l reruns only layers >= l.
``head_scores_fast`` (attribution patching, the top 3k candidates verified by exact ablation) is the
cheaper-in-principle alternative; identification defaults to the exact scores, which prefix reuse makes
cheaper still here (benchmarks/RESULTS.md). Batches that run out of memory are retried at half the size
(``mfutils.model.batching``). ``mfr`` itself always runs plain forwards under ``hooks.scale_heads`` (the
reference the tests compare against).

Public API
----------
Prepared, prepare(mm, samples, batch_size=64) -> Prepared     encode once, reuse across interventions
mfr(mm, samples, heads=None, alpha=0.0, positions="all", batch_size=64) -> BoolTensor[N]
block_summary(samples, flags) -> {"all", "follow_image", "follow_text": proportion dict}
head_scores_exhaustive(mm, samples, batch_size=64, progress=True, per_sample=False, method="prefix")
                                                          -> FloatTensor[L, H]  (the reference)
head_score_reference(mm, samples, head) -> float        slow unbatched reference (one sample per forward)
head_scores_attribution(mm, samples, batch_size=64, progress=True) -> FloatTensor[L, H]
FastScores, head_scores_fast(mm, samples, share=0.05, factor=3) -> FastScores   attribution, then the top
                                                          3k candidates verified by exact ablation
identify_heads(mm, samples, model_name, share=0.05, method="exhaustive") -> dict   the 03 document
n_top(n_layers, n_heads, share) -> int                   k = max(1, round(share * L * H))
top_heads(scores, share=0.05) -> list[(layer, head)]     highest first
rank_agreement(a, b, share=0.05) -> {"spearman", "top_overlap"}
random_head_sets(n_layers, n_heads, k, n_sets, seed, exclude=None) -> list[list[(layer, head)]]
relative_drop(base, blocked, n_boot=1000, seed=0) -> {"mean", "lo", "hi", "n"}   paired bootstrap
spread(values) -> {"mean", "sd"}                          over finite values (sd with ddof=1)
identification_doc(model_name, exhaustive, attribution, share, n_identify) -> dict   03 JSON
block_experiment(mm, samples, scores, ...) -> dict        04 JSON
split_pool(mm, pool, max_failed, max_correct) -> (failed, correct)
amplification_experiment(mm, failed, correct, heads, ...) -> dict   05 JSON
capability_experiment(mm, samples, heads, ...) -> dict    06 JSON
save_json(doc, model_name, name) -> Path                  results/<model>/<name>.json (NaN -> null)
load_json(model_name, name) -> dict
load_identification(model_name, mm=None) -> dict         03's JSON with tensors; "run 03 first" if missing
fast_path_status(model_name) -> str                       "prefix-reuse" or why exact scoring used full forwards

Example::

    ok = mfr(mm, samples)                                          # BoolTensor [N]
    ident = [s for s, f in zip(samples, ok) if f]
    scores = head_scores_exhaustive(mm, ident)                     # [L, H]
    blocked = mfr(mm, samples, heads=top_heads(scores), alpha=0.0)
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mfutils.model.groups import Encoded, encode
from mfutils.model.batching import is_out_of_memory, run_batched
from mfutils.model.hooks import PrefixTrace, check_head, prefix_trace, scale_heads
from mfutils.measure.metrics import Targets, answer_logits, follows, margins, targets_for
from mfutils.model.loading import MLLM
from mfutils.core.paths import results_dir
from mfutils.measure.stats import proportion
from mfutils.data.world import Sample, counterparts

__all__ = [
    "Head", "Prepared", "prepare", "mfr", "block_summary", "head_scores_exhaustive", "head_score_reference",
    "head_scores_attribution", "n_top", "top_heads", "rank_agreement", "random_head_sets", "relative_drop",
    "spread", "identification_doc", "block_experiment", "split_pool", "amplification_experiment",
    "capability_experiment", "save_json", "load_json", "load_identification", "INSTRUCTIONS", "SHARES",
    "ALPHAS", "fast_path_status", "FastScores", "head_scores_fast", "identify_heads", "SCORE_METHODS",
    "IDENTIFY_METHODS",
]

Head = tuple[int, int]
INSTRUCTIONS = ("all", "follow_image", "follow_text")
SHARES = (0.01, 0.02, 0.05, 0.1)
ALPHAS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
_POSITIONS = ("all", "last")


# ------------------------------------------------------------------------------------------------
# Encoded batches, reused across interventions
# ------------------------------------------------------------------------------------------------
@dataclass
class _Batch:
    index: list[int]          # positions of the batch's samples in the original list
    enc: Encoded
    targets: Targets


@dataclass
class Prepared:
    """Samples encoded once, in batches of similar length (less padding); results keep the input order.

    Example::

        data = prepare(mm, samples, batch_size=64)
        mfr(mm, data); mfr(mm, data, heads=[(3, 1)])      # no re-encoding
    """

    samples: list[Sample]
    batches: list[_Batch]

    def __len__(self) -> int:
        return len(self.samples)


def _length_key(sample: Sample) -> int:
    return sum(len(text) for _, text in sample.prompt.segments)


def _encode_batch(mm: MLLM, samples: Sequence[Sample], index: list[int]) -> _Batch:
    chunk = [samples[i] for i in index]
    enc = encode(mm, [s.prompt for s in chunk]).to(mm.device)
    return _Batch(index=index, enc=enc, targets=targets_for(mm, chunk))


def _chunks(samples: Sequence[Sample], batch_size: int) -> list[list[int]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(samples)), key=lambda i: _length_key(samples[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def prepare(mm: MLLM, samples: Sequence[Sample] | Prepared, batch_size: int = 64) -> Prepared:
    """Encode ``samples`` once (token groups, targets) in batches of ``batch_size`` sorted by length.

    Passing a ``Prepared`` returns it unchanged. Example: ``data = prepare(mm, load_split("tiny", "test"))``.
    """
    if isinstance(samples, Prepared):
        return samples
    samples = list(samples)
    return Prepared(samples, [_encode_batch(mm, samples, idx) for idx in _chunks(samples, batch_size)])


def _batches(mm: MLLM, samples: Sequence[Sample] | Prepared, batch_size: int) -> Iterator[_Batch]:
    """The batches of ``samples``: stored ones for a ``Prepared``, encoded on the fly otherwise."""
    if isinstance(samples, Prepared):
        yield from samples.batches
        return
    for idx in _chunks(samples, batch_size):
        yield _encode_batch(mm, samples, idx)


def _samples_of(samples: Sequence[Sample] | Prepared) -> list[Sample]:
    return samples.samples if isinstance(samples, Prepared) else list(samples)


def _check_heads(mm: MLLM, heads: Sequence[Head]) -> list[Head]:
    return [check_head(mm, hd) for hd in heads]


# ------------------------------------------------------------------------------------------------
# Modality-following ratio under head scaling
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def mfr(mm: MLLM, samples: Sequence[Sample] | Prepared, heads: Sequence[Head] | None = None, alpha: float = 0.0,
        positions: str = "all", batch_size: int = 64) -> torch.Tensor:
    """Per-sample "follows the instruction" flags, BoolTensor [N] (input order), with ``heads`` scaled by ``alpha``.

    ``heads``: [(layer, head), ...]; None or empty = the unmodified model. ``alpha``: 0 blocks, >1
    amplifies. ``positions``: ``"all"`` scales the heads at every position, ``"last"`` at the answer
    position only. On non-conflict samples the flag is plain correctness (argmax over the candidates is
    the answer). The rate is ``flags.float().mean()``; see ``block_summary`` for intervals.

    Example::

        base = mfr(mm, samples)
        blocked = mfr(mm, samples, heads=[(5, 2), (6, 0)], alpha=0.0)
    """
    if positions not in _POSITIONS:
        raise ValueError(f"positions must be one of {_POSITIONS}, got {positions!r}")
    alphas = {h: float(alpha) for h in _check_heads(mm, heads or [])}
    out = torch.zeros(len(_samples_of(samples)), dtype=torch.bool)
    for batch in _batches(mm, samples, batch_size):
        pos = None if positions == "all" else batch.enc.groups["last"]
        with scale_heads(mm, alphas, positions=pos):
            logits = answer_logits(mm, batch.enc)
        out[batch.index] = follows(logits, batch.targets).cpu()
    return out


def block_summary(samples: Sequence[Sample] | Prepared, flags: torch.Tensor | np.ndarray | Sequence[bool]
                  ) -> dict[str, dict[str, float]]:
    """Proportion dicts (``stats.proportion``) of ``flags`` [N] overall and per instruction.

    Keys ``"all"``, ``"follow_image"``, ``"follow_text"``; an empty subset gives n = 0 and NaN rates.

    Example::

        block_summary(samples, mfr(mm, samples))["follow_image"]["rate"]
    """
    x = np.asarray(flags, dtype=bool)
    cats = np.array([s.category for s in _samples_of(samples)])
    if x.shape != cats.shape:
        raise ValueError(f"{x.size} flags for {cats.size} samples")
    return {"all": proportion(x), **{c: proportion(x[cats == c]) for c in INSTRUCTIONS[1:]}}


# ------------------------------------------------------------------------------------------------
# Head scores: exhaustive (one forward per head) and attribution patching (one forward + backward)
# ------------------------------------------------------------------------------------------------
_FAST_PATH_STATUS: dict[str, str] = {}
SCORE_METHODS: tuple[str, ...] = ("prefix", "full")


def _traced(mm: MLLM, enc: Encoded, rows_from_last: bool) -> PrefixTrace | None:
    """``hooks.prefix_trace`` of ``enc``, checked: rerunning the last layer (from the first answer row when
    ``rows_from_last``) must reproduce the clean logits to 1e-4 of their scale; None (-> full forwards) if
    not, or if the architecture's layers cannot be rerun."""
    try:
        trace = prefix_trace(mm, enc, keep_kv=rows_from_last)
        p0 = int(trace.last.min()) if rows_from_last else 0
        dtype = next(mm.model.parameters()).dtype
        rel = max(1e-4, 64 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-4
        tol = rel * max(1.0, float(trace.logits.abs().max()))
        diff = float((trace.rerun(mm.n_layers - 1, rows_from=p0) - trace.logits).abs().max())
        if diff > tol:
            _FAST_PATH_STATUS[mm.name] = f"full forwards (prefix rerun differs by {diff:.2e})"
            warnings.warn(f"head scoring on {mm.name}: the prefix rerun differs from the full forward by {diff:.2e} "
                          f"(> {tol:.1e}); using one full forward per head", RuntimeWarning, stacklevel=2)
            return None
        return trace
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        if is_out_of_memory(exc):
            raise                                   # run_batched halves the batch
        _FAST_PATH_STATUS[mm.name] = f"full forwards ({type(exc).__name__}: {str(exc)[:100]})"
        warnings.warn(f"head scoring on {mm.name}: prefix reuse unavailable ({type(exc).__name__}: "
                      f"{str(exc)[:100]}); using one full forward per head", RuntimeWarning, stacklevel=2)
        return None


def _ablation_logits(mm: MLLM, batch: _Batch, heads: Sequence[Head], method: str = "prefix"
                     ) -> Iterator[torch.Tensor]:
    """Clean answer logits [B, V] of ``batch``, then those with each head of ``heads`` alone blocked
    (alpha = 0) at the answer position.

    ``method="prefix"``: blocking a head of layer l at the answer position changes nothing before layer l
    and no earlier row, so one clean forward (``hooks.prefix_trace``) serves all heads and each reruns
    layers l..L-1 for the answer rows only (design section 4, prefix reuse); checked per batch, with full
    forwards as the fallback. ``method="full"``: one full forward per head (the plain reference).
    """
    enc = batch.enc
    last = enc.groups["last"]
    trace = _traced(mm, enc, rows_from_last=True) if method == "prefix" else None
    if trace is not None:
        _FAST_PATH_STATUS[mm.name] = "prefix-reuse"
        yield trace.logits
        p0 = int(trace.last.min())
        for hd in heads:
            with scale_heads(mm, {hd: 0.0}, positions=last):
                out = trace.rerun(hd[0], rows_from=p0)
            yield out
        return
    if method == "full":
        _FAST_PATH_STATUS[mm.name] = "full forwards (method='full')"
    yield answer_logits(mm, enc).float()
    for hd in heads:
        with scale_heads(mm, {hd: 0.0}, positions=last):
            out = answer_logits(mm, enc).float()
        yield out


def _all_heads(mm: MLLM) -> list[Head]:
    return [(l, h) for l in range(mm.n_layers) for h in range(mm.n_heads)]


def _per_batch(mm: MLLM, samples: Sequence[Sample] | Prepared, batch_size: int, fn: Any, desc: str) -> None:
    """Call ``fn(batch)`` on every batch of ``samples``; on out of memory, retry that batch's samples in
    halves with a warning (``mfutils.model.batching.run_batched``). ``fn`` writes its results by sample index."""
    data_samples = _samples_of(samples)
    size = batch_size                     # once halved for memory, later batches start at the smaller size
    for batch in _batches(mm, samples, batch_size):
        def one(lo: int, hi: int, batch: _Batch = batch) -> int:
            if lo == 0 and hi == len(batch.index):
                fn(batch)
            else:
                fn(_encode_batch(mm, data_samples, batch.index[lo:hi]))
            return hi - lo
        done = run_batched(one, len(batch.index), min(size, len(batch.index)), desc=desc)
        if len(done) > 1:
            size = min(size, max(done))


@torch.no_grad()
def _exact_drops(mm: MLLM, samples: Sequence[Sample] | Prepared, heads: Sequence[Head], batch_size: int,
                 method: str, progress: bool, desc: str) -> tuple[torch.Tensor, float]:
    """(drops [N, len(heads)] float64, forward-equivalents): m - m' per sample with each head blocked."""
    n = len(_samples_of(samples))
    drops = torch.full((n, len(heads)), math.nan, dtype=torch.float64)
    work = {"fwd": 0.0}
    total = len(samples.batches) if isinstance(samples, Prepared) else len(_chunks(_samples_of(samples), batch_size))
    bar = tqdm(total=total, desc=desc, disable=not progress)

    def fn(batch: _Batch) -> None:
        logits = _ablation_logits(mm, batch, heads, method)
        m0 = margins(next(logits), batch.targets).double().cpu()
        for j, lg in enumerate(logits):
            drops[batch.index, j] = m0 - margins(lg, batch.targets).double().cpu()
        T = batch.enc.groups.shape[1]
        if _FAST_PATH_STATUS.get(mm.name) == "prefix-reuse":
            p0 = int(batch.enc.groups.last_index().min())
            work["fwd"] += 1 + sum((mm.n_layers - l) * (T - p0) for l, _ in heads) / (mm.n_layers * T)
        else:
            work["fwd"] += 1 + len(heads)
        bar.update(1)

    try:
        _per_batch(mm, samples, batch_size, fn, desc)
    finally:
        bar.close()
    return drops, work["fwd"]


@torch.no_grad()
def head_scores_exhaustive(mm: MLLM, samples: Sequence[Sample] | Prepared, batch_size: int = 64,
                           progress: bool = True, per_sample: bool = False, method: str = "prefix") -> torch.Tensor:
    """Head scores by exhaustive blocking: FloatTensor [L, H] (or [N, L, H] with ``per_sample``).

    score[l, h] = mean over ``samples`` of m - m', where m is the instructed margin (``metrics.margins``,
    binary constraint) and m' the margin with head (l, h) alone blocked (alpha = 0) at the answer position.
    Pass the samples the model follows correctly (the identification set); no samples give NaN scores.
    ``method="prefix"`` (default): one clean forward per batch, then per head a rerun of layers >= l at the
    answer rows only (``hooks.PrefixTrace``); ``"full"``: one full forward per head per batch. Equal to
    1e-5 (tested). This is the reference that ``head_scores_fast`` approximates.

    Example::

        ok = mfr(mm, samples); ident = [s for s, f in zip(samples, ok) if f]
        scores = head_scores_exhaustive(mm, ident)          # [L, H]; top_heads(scores) -> identified
    """
    if method not in SCORE_METHODS:
        raise ValueError(f"method must be one of {SCORE_METHODS}, got {method!r}")
    heads = _all_heads(mm)
    n = len(_samples_of(samples))
    drops, _ = _exact_drops(mm, samples, heads, batch_size, method, progress, "exhaustive head scores")
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
    (layer, h), = _check_heads(mm, [head])
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
    hooks are removed on exit, newest first, also when the body raises.
    """
    store: dict[int, torch.Tensor] = {}
    handles: list[Any] = []

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

    try:
        for l in range(mm.n_layers):
            handles.append(mm.o_proj(l).register_forward_pre_hook(make(l)))
        yield store
    finally:
        for handle in reversed(handles):
            handle.remove()


def head_scores_attribution(mm: MLLM, samples: Sequence[Sample] | Prepared, batch_size: int = 64,
                            progress: bool = True) -> torch.Tensor:
    """Head scores by attribution patching (gradient x activation): FloatTensor [L, H].

    score[l, h] = mean over samples of a_h . dm/da_h at the answer position, where a_h is head h's slice
    of layer l's ``o_proj`` input and m the instructed margin: the first-order estimate of the drop
    m - m' that ``head_scores_exhaustive`` measures (blocking changes the margin by about -(a_h . dm/da_h)).
    One forward and one backward per batch for all heads; weights get no ``.grad``.

    Example::

        attr = head_scores_attribution(mm, ident)          # [L, H]
        rank_agreement(scores, attr)["spearman"]
    """
    L, H, hd = mm.n_layers, mm.n_heads, mm.head_dim
    n = len(_samples_of(samples))
    total = torch.zeros(L, H, dtype=torch.float64)
    n_batches = len(samples.batches) if isinstance(samples, Prepared) else len(_chunks(_samples_of(samples), batch_size))
    bar = tqdm(total=n_batches, desc="attribution head scores", disable=not progress)

    def fn(batch: _Batch) -> None:
        with torch.enable_grad(), _o_proj_inputs(mm) as acts:
            m = margins(answer_logits(mm, batch.enc), batch.targets)
            inputs = [acts[l] for l in range(L)]
            grads = torch.autograd.grad(m.sum(), inputs, allow_unused=True)
        rows = torch.arange(m.shape[0], device=m.device)
        last = batch.enc.groups.last_index().to(m.device)
        for l, (a, g) in enumerate(zip(inputs, grads)):
            if g is None:
                continue
            a_l = a.detach()[rows, last].float().unflatten(-1, (H, hd))
            g_l = g[rows, last].float().unflatten(-1, (H, hd))
            total[l] += (a_l * g_l).sum(-1).sum(0).double().cpu()
        bar.update(1)

    try:
        _per_batch(mm, samples, batch_size, fn, "attribution head scores")
    finally:
        bar.close()
    return (total / n).float() if n else torch.full((L, H), math.nan)


@dataclass
class FastScores:
    """Head scores by attribution patching, with the top candidates verified by exact ablation.

    ``scores``: FloatTensor [L, H], the exact (exhaustive) score where ``verified`` and the attribution
    score elsewhere; ``attribution``: [L, H]; ``verified``: BoolTensor [L, H]; ``forward_equivalents``:
    decoder work in full forwards of a batch (attribution counted as 3: forward + backward), summed over
    batches; ``rounds``: verification rounds (1 unless the top ``share`` held unverified heads).

    Example::

        fast = head_scores_fast(mm, ident); top_heads(fast.scores)       # all verified
    """

    scores: torch.Tensor
    attribution: torch.Tensor
    verified: torch.Tensor
    forward_equivalents: float
    rounds: int


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
    todo = _ranked(attribution)[:min(L * H, math.ceil(factor * k))]
    rounds = 0
    while todo:
        rounds += 1
        drops, fwd = _exact_drops(mm, data, todo, batch_size, method, progress, "verify head scores")
        work += fwd
        for j, (l, h) in enumerate(todo):
            scores[l, h] = float(drops[:, j].mean())
            verified[l, h] = True
        todo = [hd for hd in top_heads(scores, share) if not verified[hd]]
    return FastScores(scores, attribution, verified, float(work), rounds)


# ------------------------------------------------------------------------------------------------
# Selecting heads
# ------------------------------------------------------------------------------------------------
def n_top(n_layers: int, n_heads: int, share: float) -> int:
    """k = max(1, round(share * n_layers * n_heads)) (Python's round: halves go to the even integer).

    Example: ``n_top(8, 8, 0.05) == 3``.
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    return max(1, round(share * n_layers * n_heads))


def _ranked(scores: torch.Tensor | np.ndarray) -> list[Head]:
    """Every head of an [L, H] table, highest score first; NaN last; ties in (layer, head) order."""
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
    ranked = _ranked(scores)
    L, H = np.asarray(scores).shape
    return ranked[:n_top(L, H, share)]


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


def random_head_sets(n_layers: int, n_heads: int, k: int, n_sets: int, seed: int,
                     exclude: Sequence[Head] | None = None) -> list[list[Head]]:
    """``n_sets`` sets of ``k`` distinct heads drawn uniformly (numpy ``default_rng(seed)``), each sorted.

    Reproducible: the same arguments give the same sets. ``exclude``: heads never drawn (e.g. the
    identified ones). Sets are drawn independently, so two sets may share heads.

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


# ------------------------------------------------------------------------------------------------
# Summaries
# ------------------------------------------------------------------------------------------------
def _rel(b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(mean(b) - mean(x)) / mean(b) along the last axis; NaN where mean(b) == 0."""
    bm, xm = b.mean(-1), x.mean(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(bm > 0, (bm - xm) / np.where(bm > 0, bm, 1.0), np.nan)


def relative_drop(base: torch.Tensor | np.ndarray, blocked: torch.Tensor | np.ndarray, n_boot: int = 1000,
                  seed: int = 0) -> dict[str, float]:
    """Relative MFR drop (MFR_base - MFR_blocked) / MFR_base with a paired bootstrap 95% interval.

    ``base``, ``blocked``: per-sample follow flags [N] of the same samples; the bootstrap resamples
    samples (pairs). NaN where MFR_base is 0 or N is 0.

    Example::

        relative_drop(mfr(mm, data), mfr(mm, data, heads=identified))   # {"mean": 0.6, "lo": .., "hi": .., "n": 400}
    """
    b = np.asarray(base, dtype=float)
    x = np.asarray(blocked, dtype=float)
    if b.shape != x.shape or b.ndim != 1:
        raise ValueError(f"base and blocked must be matching [N] flags, got {b.shape} and {x.shape}")
    n = b.size
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    point = float(_rel(b, x))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boots = _rel(b[idx], x[idx])
    boots = boots[np.isfinite(boots)]
    lo, hi = (float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))) if boots.size else (math.nan,) * 2
    return {"mean": point, "lo": lo, "hi": hi, "n": int(n)}


def spread(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """{"mean", "sd"} over the finite ``values`` (sd with ddof = 1; NaN with fewer than 2 values).

    Example: ``spread([0.5, 0.7])`` -> ``{"mean": 0.6, "sd": 0.141}``.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return {"mean": float(v.mean()) if v.size else math.nan, "sd": float(v.std(ddof=1)) if v.size > 1 else math.nan}


# ------------------------------------------------------------------------------------------------
# The documents of notebooks 03-06
# ------------------------------------------------------------------------------------------------
def identification_doc(model_name: str, exhaustive: torch.Tensor, attribution: torch.Tensor, share: float,
                       n_identify: int) -> dict[str, Any]:
    """The 03 JSON document from the two [L, H] score tables (pure: no model needed).

    Keys: model, n_identify, n_layers, n_heads, share, k, scores_exhaustive, scores_attribution, spearman,
    top_overlap, identified (top ``share`` by the exhaustive score), top_share_of_score (sum of the top-k
    exhaustive scores / sum of the positive ones), per_layer_top_count.

    Example::

        doc = identification_doc("tiny", scores, attr, 0.05, n_identify=len(ident))
    """
    ex = np.asarray(exhaustive, dtype=float)
    L, H = ex.shape
    identified = top_heads(ex, share)
    agree = rank_agreement(ex, attribution, share)
    positive = ex[np.isfinite(ex) & (ex > 0)].sum()
    top_sum = sum(ex[l, h] for l, h in identified if np.isfinite(ex[l, h]))
    counts = [sum(1 for l, _ in identified if l == layer) for layer in range(L)]
    return {
        "model": model_name, "n_identify": int(n_identify), "n_layers": int(L), "n_heads": int(H),
        "share": float(share), "k": len(identified),
        "scores_exhaustive": ex.tolist(), "scores_attribution": np.asarray(attribution, dtype=float).tolist(),
        "spearman": agree["spearman"], "top_overlap": agree["top_overlap"],
        "identified": [[int(l), int(h)] for l, h in identified],
        "top_share_of_score": float(top_sum / positive) if positive > 0 else math.nan,
        "per_layer_top_count": counts,
    }


@torch.no_grad()
def _scaled_logits(mm: MLLM, batch: _Batch, jobs: Sequence[tuple[tuple[Head, ...], float]], positions: str
                   ) -> Iterator[torch.Tensor]:
    """Answer logits [B, V] of ``batch`` under each job (heads, alpha), in order.

    Prefix reuse (design section 4, ``hooks.PrefixTrace``): scaling heads whose lowest layer is l leaves the
    input of layer l unchanged, so one clean forward serves every job and each reruns only layers >= l
    (and, with ``positions="last"``, only the answer rows). Checked on every batch (``_traced``); otherwise
    each job is a full forward under ``hooks.scale_heads``.
    """
    last_only = positions == "last"
    trace = _traced(mm, batch.enc, rows_from_last=last_only)
    pos = batch.enc.groups["last"] if last_only else None
    p0 = int(trace.last.min()) if trace is not None and last_only else 0
    for hs, alpha in jobs:
        if not hs or alpha == 1.0:
            out = trace.logits if trace is not None else answer_logits(mm, batch.enc).float()
        else:
            with scale_heads(mm, {h: alpha for h in hs}, positions=pos):
                out = (trace.rerun(min(l for l, _ in hs), rows_from=p0) if trace is not None
                       else answer_logits(mm, batch.enc).float())
        yield out


_Key = tuple[tuple[Head, ...], float]


class _FlagCache:
    """Follow flags [N] per (head set, alpha) on one prepared sample set; each pair is computed once.

    ``fill`` evaluates many pairs batch by batch with prefix reuse (``_scaled_logits``); ``__call__``
    returns (computing if needed) the flags of one pair.
    """

    def __init__(self, mm: MLLM, data: Prepared, positions: str) -> None:
        if positions not in _POSITIONS:
            raise ValueError(f"positions must be one of {_POSITIONS}, got {positions!r}")
        self.mm, self.data, self.positions = mm, data, positions
        self.store: dict[_Key, torch.Tensor] = {}

    def key(self, heads: Sequence[Head], alpha: float) -> _Key:
        hs = tuple(sorted(_check_heads(self.mm, heads)))
        return ((), 1.0) if not hs or alpha == 1.0 else (hs, float(alpha))

    def __call__(self, heads: Sequence[Head], alpha: float = 0.0) -> torch.Tensor:
        k = self.key(heads, alpha)
        if k not in self.store:
            self.fill([k], "", progress=False)
        return self.store[k]

    def fill(self, jobs: Sequence[tuple[Sequence[Head], float]], desc: str, progress: bool) -> None:
        todo = [k for k in dict.fromkeys(self.key(h, a) for h, a in jobs) if k not in self.store]
        if not todo:
            return
        out = {k: torch.zeros(len(self.data), dtype=torch.bool) for k in todo}
        bar = tqdm(total=len(self.data.batches) * len(todo), desc=desc, disable=not progress)

        def fn(batch: _Batch) -> None:
            for k, logits in zip(todo, _scaled_logits(self.mm, batch, todo, self.positions)):
                out[k][batch.index] = follows(logits, batch.targets).cpu()
                bar.update(1)

        try:
            _per_batch(self.mm, self.data, len(self.data), fn, desc or "head sets")
        finally:
            bar.close()
        self.store.update(out)


def _rate(flags: torch.Tensor) -> float:
    """k / n in float64, exactly as ``stats.proportion`` computes it (NaN when n == 0)."""
    return float(proportion(flags.numpy())["rate"])


def _rates(samples: Sequence[Sample] | Prepared, flags: torch.Tensor) -> dict[str, float]:
    return {k: v["rate"] for k, v in block_summary(samples, flags).items()}


def block_experiment(mm: MLLM, samples: Sequence[Sample] | Prepared, scores: torch.Tensor, share: float = 0.05,
                     n_random: int = 10, seed: int = 0, positions: str = "all", shares: Sequence[float] = SHARES,
                     batch_size: int = 64, model_name: str | None = None, progress: bool = True,
                     n_boot: int = 1000) -> dict[str, Any]:
    """Blocking (alpha = 0) the identified heads vs ``n_random`` random sets of the same size: the 04 document.

    ``scores``: the exhaustive head scores [L, H] of notebook 03 (identified = ``top_heads(scores, share)``;
    for each share of ``shares`` its own top heads). Random sets: ``random_head_sets(L, H, k, n_random,
    seed)``, drawn uniformly over all heads. Keys: model, k, n_random_sets, n_test, positions, identified_heads,
    random_sets, base, identified, random, relative_drop, random_relative_drop, shares.

    Example::

        doc = block_experiment(mm, load_split("tiny", "test"), load_identification("tiny")["scores_exhaustive"])
    """
    data = prepare(mm, samples, batch_size)
    L, H = mm.n_layers, mm.n_heads
    scores = torch.as_tensor(np.asarray(scores, dtype=float))
    if tuple(scores.shape) != (L, H):
        raise ValueError(f"scores have shape {list(scores.shape)} but the model has {L} layers x {H} heads")
    flags = _FlagCache(mm, data, positions)
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
    base_rate = _rate(base)
    random_drops = [float(_rel(base.numpy().astype(float), flags(r).numpy().astype(float))) if len(base) else math.nan
                    for r in rsets]
    shares_doc: dict[str, Any] = {}
    for s, (top, rs) in sweep.items():
        rr = [_rate(flags(r)) for r in rs]
        sp = spread(rr)
        shares_doc[str(float(s))] = {"k": len(top), "identified": _rate(flags(top)),
                                     "random_mean": sp["mean"], "random_sd": sp["sd"]}
    finite = np.array([d for d in random_drops if np.isfinite(d)])
    return {
        "model": model_name or mm.name, "k": k, "n_random_sets": int(n_random), "n_test": len(data),
        "positions": positions, "seed": int(seed), "share": float(share), "base_rate": base_rate,
        "identified_heads": [list(h) for h in identified], "random_sets": [[list(h) for h in r] for r in rsets],
        "base": block_summary(data, base),
        "identified": block_summary(data, blocked),
        "random": {key: {"rates": [r[key] for r in random_rates], **spread([r[key] for r in random_rates])}
                   for key in INSTRUCTIONS},
        "relative_drop": relative_drop(base, blocked, n_boot=n_boot, seed=seed),
        "random_relative_drop": {"values": random_drops, **spread(random_drops),
                                 "p95": float(np.quantile(finite, 0.95)) if finite.size else math.nan},
        "shares": shares_doc,
    }


@torch.no_grad()
def split_pool(mm: MLLM, pool: Sequence[Sample], max_failed: int = 200, max_correct: int = 200,
               batch_size: int = 64, progress: bool = True) -> tuple[list[Sample], list[Sample]]:
    """The first ``max_failed`` conflict samples of ``pool`` that the model does not follow, and the first
    ``max_correct`` that it follows (pool order); stops reading the pool once both are full.

    Example::

        failed, correct = split_pool(mm, load_split("tiny", "fail_pool"), max_failed=200)
    """
    conflict = [s for s in pool if s.other_answer is not None]
    failed: list[Sample] = []
    correct: list[Sample] = []
    for start in tqdm(range(0, len(conflict), batch_size), desc="baseline on the pool", disable=not progress):
        chunk = conflict[start:start + batch_size]
        ok = mfr(mm, chunk, batch_size=batch_size)
        failed += [s for s, f in zip(chunk, ok.tolist()) if not f]
        correct += [s for s, f in zip(chunk, ok.tolist()) if f]
        if len(failed) >= max_failed and len(correct) >= max_correct:
            break
    return failed[:max_failed], correct[:max_correct]


def amplification_experiment(mm: MLLM, failed: Sequence[Sample], correct: Sequence[Sample], heads: Sequence[Head],
                             alphas: Sequence[float] = ALPHAS, n_random: int = 10, seed: int = 0,
                             positions: str = "all", batch_size: int = 64, model_name: str | None = None,
                             progress: bool = True, random_damage: bool = False) -> dict[str, Any]:
    """Amplifying ``heads`` by each alpha on failed samples: recovery, damage, random control (05 document).

    recovery(alpha) = share of ``failed`` that follow with the heads scaled by alpha; damage(alpha) = share
    of ``correct`` (a separate reference set) that no longer follow. Random: ``n_random`` uniform sets of
    ``len(heads)`` heads (``random_head_sets(..., seed)``): recovery, and with ``random_damage`` their damage
    too (another ``n_random * len(alphas)`` evaluations of ``correct``). Arbitration failures (ours): failed
    samples whose image-only and text-only counterparts (``world.counterparts``) the model answers right.

    Example::

        failed, correct = split_pool(mm, pool)
        doc = amplification_experiment(mm, failed, correct, identified, alphas=[1, 2, 4, 8])
    """
    heads = _check_heads(mm, heads)
    alphas = [float(a) for a in alphas]
    fdata, cdata = prepare(mm, failed, batch_size), prepare(mm, correct, batch_size)
    ff, fc = _FlagCache(mm, fdata, positions), _FlagCache(mm, cdata, positions)
    rsets = random_head_sets(mm.n_layers, mm.n_heads, len(heads), n_random, seed) if heads else []
    ff.fill([(heads, a) for a in alphas] + [(r, a) for r in rsets for a in alphas], "amplify (failed)", progress)
    fc.fill([(heads, a) for a in alphas] + ([(r, a) for r in rsets for a in alphas] if random_damage else []),
            "amplify (correct reference)", progress)

    pairs = [counterparts(s) for s in failed]
    knows_image = mfr(mm, [p[0] for p in pairs], batch_size=batch_size)
    knows_text = mfr(mm, [p[1] for p in pairs], batch_size=batch_size)
    arbitration = knows_image & knows_text
    recovery = [proportion(ff(heads, a).numpy()) for a in alphas]
    rand = [[_rate(ff(r, a)) for r in rsets] for a in alphas]
    rdmg = [[1.0 - _rate(fc(r, a)) if len(cdata) else math.nan for r in rsets] for a in alphas] if random_damage else []
    rates = [r["rate"] for r in recovery]
    best = int(np.nanargmax(rates)) if np.isfinite(rates).any() else None
    return {
        "model": model_name or mm.name, "alphas": alphas, "positions": positions, "seed": int(seed),
        "heads": [list(h) for h in heads],
        "n_failed": len(fdata), "n_correct_reference": len(cdata),
        "identified": {"recovery": recovery, "damage": [proportion((~fc(heads, a)).numpy()) for a in alphas]},
        "random": {"recovery_mean": [spread(r)["mean"] for r in rand], "recovery_sd": [spread(r)["sd"] for r in rand],
                   "recovery_rates": rand, "n_sets": len(rsets), "sets": [[list(h) for h in r] for r in rsets],
                   **({"damage_mean": [spread(d)["mean"] for d in rdmg], "damage_sd": [spread(d)["sd"] for d in rdmg]}
                      if random_damage else {})},
        "arbitration": {"n": int(arbitration.sum()),
                        "knows_image": proportion(knows_image.numpy()), "knows_text": proportion(knows_text.numpy()),
                        "recovery": [proportion(ff(heads, a)[arbitration].numpy()) for a in alphas]},
        "best": {"alpha": alphas[best] if best is not None else None,
                 "recovery": recovery[best] if best is not None else proportion([])},
    }


def capability_experiment(mm: MLLM, samples: Sequence[Sample] | Prepared, heads: Sequence[Head], n_random: int = 10,
                          seed: int = 0, positions: str = "all", batch_size: int = 64,
                          model_name: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Accuracy per category before and after blocking ``heads`` vs ``n_random`` random sets (06 document).

    Accuracy = the argmax over the question's candidates is the answer (``metrics.follows``). Random sets
    are ``random_head_sets(L, H, len(heads), n_random, seed)``: with notebook 04's seed, the same sets.

    Example::

        doc = capability_experiment(mm, load_split("tiny", "capability"), identified)
    """
    heads = _check_heads(mm, heads)
    data = prepare(mm, samples, batch_size)
    cats = list(dict.fromkeys(s.category for s in data.samples))
    labels = np.array([s.category for s in data.samples])
    flags = _FlagCache(mm, data, positions)
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
    return {
        "model": model_name or mm.name, "categories": cats, "positions": positions, "seed": int(seed),
        "heads": [list(h) for h in heads], "n_random_sets": len(rsets), "random_sets": [[list(h) for h in r] for r in rsets],
        "n": {c: int((labels == c).sum()) for c in cats},
        "base": base, "identified": ident, "random": random_doc,
        "max_drop_identified": float(np.nanmax(drops)) if np.isfinite(drops).any() else math.nan,
        "max_drop_random_mean": float(np.nanmax(rdrops)) if np.isfinite(rdrops).any() else math.nan,
    }


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
def _jsonable(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


IDENTIFY_METHODS: tuple[str, ...] = ("fast", "exhaustive")


def identify_heads(mm: MLLM, samples: Sequence[Sample] | Prepared, model_name: str, share: float = 0.05,
                   method: str = "exhaustive", batch_size: int = 64, progress: bool = True,
                   check_exhaustive: bool = False) -> dict[str, Any]:
    """Notebook 03 in one call: score every head and identify the top ``share``; returns the 03 document.

    ``method="exhaustive"`` (default): ``head_scores_exhaustive`` with prefix reuse (every head ablated
    exactly, one rerun of layers >= l at the answer rows per head) plus attribution scores for comparison;
    ``"fast"``: ``head_scores_fast`` (attribution patching, then exact ablation of the top 3k candidates).
    Why exhaustive is the default: with prefix reuse it is exact and, in benchmarks/RESULTS.md, both
    faster than attribution + verification (it needs no backward pass) and the only one of the two whose
    top 5% on the default model is the exhaustive set (attribution misses large layer-0 effects).
    The document is ``identification_doc``'s with ``scores`` = the table the heads were identified from
    (the exact score for verified heads), ``method``, ``scores_verified`` (bool [L, H]) and
    ``forward_equivalents`` (of the scoring that identified the heads); ``scores_exhaustive`` is present only when computed (``method="exhaustive"``
    or ``check_exhaustive``, which also adds ``fast_vs_exhaustive``: the top-``share`` sets of both and
    whether they are equal).

    Example::

        doc = identify_heads(mm, ident_samples, "tiny")              # exact scores, prefix reuse
        save_json(doc, "tiny", "03_head_identification")
    """
    if method not in IDENTIFY_METHODS:
        raise ValueError(f"method must be one of {IDENTIFY_METHODS}, got {method!r}")
    data = prepare(mm, samples, batch_size)
    exhaustive = None
    if method == "fast":
        fast = head_scores_fast(mm, data, share=share, batch_size=batch_size, progress=progress)
        scores, attribution, verified, work = fast.scores, fast.attribution, fast.verified, fast.forward_equivalents
    else:
        drops, work = _exact_drops(mm, data, _all_heads(mm), batch_size, "prefix", progress, "exhaustive head scores")
        exhaustive = (drops.mean(0).float() if len(data) else torch.full((mm.n_layers * mm.n_heads,), math.nan)
                      ).reshape(mm.n_layers, mm.n_heads)
        attribution = head_scores_attribution(mm, data, progress=progress)      # for comparison (not counted)
        scores, verified = exhaustive, torch.ones(mm.n_layers, mm.n_heads, dtype=torch.bool)
    if check_exhaustive and exhaustive is None:
        exhaustive = head_scores_exhaustive(mm, data, progress=progress)
    doc = identification_doc(model_name, scores, attribution, share, n_identify=len(data))
    doc["scores"] = doc.pop("scores_exhaustive")
    doc.update(method=method, scores_verified=verified.tolist(), forward_equivalents=work)
    if exhaustive is not None:
        doc["scores_exhaustive"] = np.asarray(exhaustive, dtype=float).tolist()
        if method == "fast":
            a, b = top_heads(scores, share), top_heads(exhaustive, share)
            doc["fast_vs_exhaustive"] = {"top_fast": [list(h) for h in a], "top_exhaustive": [list(h) for h in b],
                                         "equal": set(a) == set(b), "overlap": len(set(a) & set(b)) / len(a)}
    return doc


def save_json(doc: Mapping[str, Any], model_name: str, name: str) -> Path:
    """Write ``doc`` to ``results/<model>/<name>.json`` atomically; NaN and inf become null.

    Example: ``save_json(doc, "tiny", "03_head_identification")``.
    """
    path = results_dir(model_name) / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_jsonable(doc), indent=1, allow_nan=False))
    tmp.replace(path)
    return path


def load_json(model_name: str, name: str) -> dict[str, Any]:
    """``results/<model>/<name>.json`` as a dict (null stays None). Example: ``load_json("tiny", "04_block_heads")``."""
    path = results_dir(model_name, create=False) / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run notebooks/{name}.ipynb for model={model_name!r} first")
    return json.loads(path.read_text())


def load_identification(model_name: str, mm: MLLM | None = None) -> dict[str, Any]:
    """Notebook 03's document, with ``scores`` (the table the heads were identified from; equal to
    ``scores_exhaustive`` for exhaustive documents), ``scores_exhaustive`` (when computed) and
    ``scores_attribution`` as FloatTensors [L, H] (null -> NaN) and ``identified`` as [(layer, head), ...].
    With ``mm``, checks that its shape matches.

    Example::

        ident = load_identification("tiny", mm); ident["identified"]       # [(6, 3), ...]
    """
    path = results_dir(model_name, create=False) / "03_head_identification.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: run 03 first (notebooks/03_head_identification.ipynb with model={model_name!r}); "
            "notebooks 04-06 use the heads it identifies")
    doc = json.loads(path.read_text())
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


def fast_path_status(model_name: str) -> str:
    """How the last exhaustive scoring of ``model_name`` ran: ``"kv-cache"`` or why it used full forwards."""
    return _FAST_PATH_STATUS.get(model_name, "not run")

