"""Where the instruction stands: behaviour and mechanism per instruction position (claim C14; amendments A8, A9).

The world renders the instruction at four positions (``mfutils.data.world.POSITIONS``): ``first`` (before the image),
``after_image``, ``standard`` (after the context) and ``last`` (after the question and the constraint). Training saw
only standard and last. Under causal attention an instruction that stands first cannot read the image or the
context, so the "latent buffer" of C1 cannot exist there.

Public API
----------
POSITION_EDGES                      the knockout edges swept at every position
scored_pass(mm, samples, batch_size=64) -> (follows bool [N], margins [N])   one forward per batch
behaviour(mm, pools, batch_size=64) -> (doc, flags)   MFR per position x instruction (Wilson), margins, failure kinds
instruction_effect(mm, samples, batch_size=64) -> dict   per pair S, S_cut, B of follow-image samples and their twins
effect_doc(effects, n_boot=1000, seed=0) -> dict       their means with intervals and C14's comparisons (b), (c)
mfr_difference(behaviour_doc, position) -> dict        C14 (a): MFR at a position minus the standard's (Newcombe)
edge_present(mm, sample, edge) -> bool               whether the edge removes any attention at that sample's layout
position_knockout(mm, tests, k, stride, ...) -> dict   curves of ``POSITION_EDGES`` per position and instruction
position_heads(mm, idents, share, reference, ...) -> dict   attribution head scores per position, top-share overlaps
failure_curves(mm, failed, succeeded, arbitration, k, stride, ...) -> dict   succeeded vs failed within a position
blocked_margins(mm, samples, heads, positions, batch_size=64) -> dict   margin change and flips with heads blocked

Example::

    doc, flags = behaviour(mm, {p: load_split("smol", f"pool_{p}") for p in POSITIONS})
    doc["positions"]["first"]["follow_image"]["rate"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mfutils.data.sample import Sample
from mfutils.data.world import twin
from mfutils.measure.answers import answer_logits
from mfutils.measure.follow import Head, follows, scaled_logits
from mfutils.measure.margins import instructed_wins, margins
from mfutils.measure.prepared import Batch, per_batch, prepare
from mfutils.measure.stats import diff_of_means, newcombe, paired_bootstrap, proportion, summarize
from mfutils.model.edges import parse_edge
from mfutils.model.groups import edge_cut, encode
from mfutils.model.loading import MLLM
from mfutils.study.information_flow import arbitration_failures
from mfutils.study.knockout import knockout_sweep, windows
from mfutils.study.scoring import head_attribution
from mfutils.study.selection import rank_agreement, top_heads

__all__ = ["POSITION_EDGES", "INSTRUCTIONS", "scored_pass", "behaviour", "instruction_effect", "effect_doc",
           "mfr_difference", "edge_present", "position_knockout", "position_heads", "failure_curves", "blocked_margins"]

POSITION_EDGES: tuple[str, ...] = ("instruction->last", "image->last", "context->last", "image->instruction",
                                   "context->instruction")
INSTRUCTIONS = ("follow_image", "follow_text")


def scored_pass(mm: MLLM, samples: Sequence[Sample], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One forward per batch: (follows bool [N], instructed margins [N] in log-odds, binary constraint).

    Example: ``ok, m = scored_pass(mm, samples)``.
    """
    n = len(samples)
    ok = torch.zeros(n, dtype=torch.bool)
    m = torch.full((n,), float("nan"), dtype=torch.float64)

    @torch.no_grad()
    def fn(batch: Batch) -> None:
        logits = answer_logits(mm, batch.enc).float()
        ok[batch.index] = instructed_wins(logits, batch.targets).cpu()
        m[batch.index] = margins(logits, batch.targets).double().cpu()

    per_batch(mm, list(samples), batch_size, fn, "follows and margins", fills=[(ok, 0), (m, 0)])
    return ok.numpy(), m.numpy()


def behaviour(mm: MLLM, pools: dict[str, Sequence[Sample]], batch_size: int = 64
              ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """MFR per position and instruction on each position's pool, with failure kinds.

    ``pools``: position -> samples. Per position and instruction: ``proportion`` of the followed samples (Wilson
    95%) and the instructed margin's median and mean (bootstrap interval); per position ``failures``: n, arbitration
    (both single-modality counterparts answered right) and perception failures, the arbitration share (Wilson).
    Returns the document and, per position, the follow flags [N] (for reuse by the failure analyses).

    Example::

        doc, flags = behaviour(mm, {"first": load_split("smol", "pool_first")})
    """
    out: dict[str, Any] = {}
    flags: dict[str, np.ndarray] = {}
    for pos, samples in pools.items():
        samples = list(samples)
        ok, m = scored_pass(mm, samples, batch_size)
        arb = arbitration_failures(mm, samples, ok, batch_size=batch_size)
        cats = np.array([s.category for s in samples])
        entry: dict[str, Any] = {}
        for cat in INSTRUCTIONS:
            sel = cats == cat
            entry[cat] = {**proportion(ok[sel]), "margin_median": float(np.median(m[sel])) if sel.any() else None,
                          "margin_mean": summarize(m[sel])}
        failed = ~ok
        entry["all"] = proportion(ok)
        entry["failures"] = {"n": int(failed.sum()), "arbitration": int(arb.sum()),
                             "perception": int((failed & ~arb).sum()),
                             "arbitration_share": proportion(arb[failed]),
                             "by_instruction": {c: {"n": int((failed & (cats == c)).sum()),
                                                    "arbitration": int((arb & (cats == c)).sum())}
                                                for c in INSTRUCTIONS}}
        entry["n"] = len(samples)
        out[pos] = entry
        flags[pos] = ok
        flags[f"{pos}:arbitration"] = arb
    return {"positions": out}, flags


def instruction_effect(mm: MLLM, samples: Sequence[Sample], batch_size: int = 64) -> dict[str, np.ndarray]:
    """Per pair of a follow-image sample and its flipped-instruction twin (``world.twin``): the instruction's effect
    S = m(follow-image) + m(twin) (the log-odds of the image's answer over the text's moves by S between the two
    instructions), S_cut: the same with instruction->last cut in every layer for both, and the baseline
    B = (m(follow-image) - m(twin)) / 2 (where the pair sits between the two answers, whatever the instruction).

    Example: ``eff = instruction_effect(mm, [s for s in pool if s.category == "follow_image"][:200])``.
    """
    first = [s for s in samples if s.category == "follow_image"]
    if len(first) != len(samples):
        raise ValueError("instruction_effect takes follow-image samples only (their twins are built here)")
    pairs = first + [twin(s) for s in first]
    L = mm.n_layers
    sweep = knockout_sweep(mm, pairs, ["instruction->last"], k=L, stride=L, batch_size=batch_size, progress=False)
    n = len(first)
    m, mc = sweep.base, sweep.knocked[0, 0]
    return {"S": m[:n] + m[n:], "S_cut": mc[:n] + mc[n:], "B": (m[:n] - m[n:]) / 2,
            "follows": sweep.follows[:n], "twin_follows": sweep.follows[n:]}


def effect_doc(effects: dict[str, dict[str, np.ndarray]], n_boot: int = 1000, seed: int = 0,
               against: str = "standard") -> dict[str, Any]:
    """Means of S, S_cut, S_direct = S - S_cut and B per position (bootstrap intervals), and the comparisons of C14
    (A9): (b) S at each position minus S at ``against``, (c) S_direct likewise (independent bootstraps).

    Example: ``effect_doc({"first": eff1, "standard": eff0})["compare"]["first"]["S"]["hi"] < 0``.
    """
    doc: dict[str, Any] = {"per_position": {}, "compare": {}, "against": against}
    for pos, e in effects.items():
        direct = e["S"] - e["S_cut"]
        doc["per_position"][pos] = {"S": summarize(e["S"], n_boot, seed), "S_cut": summarize(e["S_cut"], n_boot, seed),
                                    "S_direct": summarize(direct, n_boot, seed), "B": summarize(e["B"], n_boot, seed),
                                    "n_pairs": int(len(e["S"])),
                                    "follows": proportion(e["follows"]), "twin_follows": proportion(e["twin_follows"])}
    if against in effects:
        ref = effects[against]
        for pos, e in effects.items():
            if pos == against:
                continue
            doc["compare"][pos] = {
                "S": diff_of_means(e["S"], ref["S"], n_boot, seed),
                "S_direct": diff_of_means(e["S"] - e["S_cut"], ref["S"] - ref["S_cut"], n_boot, seed),
                "B": diff_of_means(e["B"], ref["B"], n_boot, seed)}
    return doc


def mfr_difference(behaviour_doc: dict[str, Any], position: str, against: str = "standard",
                   instruction: str = "follow_image") -> dict[str, float]:
    """C14 (a): MFR at ``position`` minus MFR at ``against`` for ``instruction`` with Newcombe's 95% interval."""
    a, b = behaviour_doc["positions"][position][instruction], behaviour_doc["positions"][against][instruction]
    return newcombe(a["k"], a["n"], b["k"], b["n"])


def edge_present(mm: MLLM, sample: Sample, edge: str) -> bool:
    """Whether cutting ``edge`` removes any attention edge at ``sample``'s layout (False where the source comes after
    the destination, e.g. image->instruction with the instruction first).

    Example: ``edge_present(mm, make_sample(1, 0, "follow_image", variant="instruction_first"), "image->instruction")``
    -> False.
    """
    block, present = edge_cut(encode(mm, [sample.prompt]).groups, *parse_edge(edge))
    return bool(present[0]) and bool(block[0].any())


def _summaries(sweep: Any, edges: Sequence[str], masks: dict[str, np.ndarray], n_boot: int, seed: int
               ) -> dict[str, Any]:
    return {e: {name: sweep.summary(e, mask, n_boot=n_boot, seed=seed) for name, mask in masks.items()} for e in edges}


def position_knockout(mm: MLLM, tests: dict[str, Sequence[Sample]], k: int, stride: int, batch_size: int = 64,
                      n_boot: int = 1000, seed: int = 0, edges: Sequence[str] = POSITION_EDGES) -> dict[str, Any]:
    """Knockout curves of ``edges`` at each position (windows of ``k`` layers every ``stride``), on all samples and
    per instruction: ``{position: {"n", "present": {edge: bool}, "edges": {edge: {subset: summary}}}}``, plus the
    forward-equivalents spent.

    Example: ``position_knockout(mm, {"first": load_split("smol", "test_first")}, k=5, stride=5)``.
    """
    out: dict[str, Any] = {"k": int(k), "stride": int(stride), "windows": [list(w) for w in windows(mm.n_layers, k, stride)],
                           "positions": {}}
    for pos, samples in tests.items():
        samples = list(samples)
        sweep = knockout_sweep(mm, samples, edges, k, stride=stride, batch_size=batch_size, progress=False)
        cats = sweep.categories
        masks = {"all": np.ones(len(samples), dtype=bool), **{c: cats == c for c in INSTRUCTIONS}}
        out["positions"][pos] = {"n": len(samples), "n_follow": int(sweep.follows.sum()),
                                 "present": {e: edge_present(mm, samples[0], e) for e in edges},
                                 "edges": _summaries(sweep, edges, masks, n_boot, seed),
                                 "forward_equivalents": float(sweep.info.get("forward_equivalents", float("nan")))}
    return out


def position_heads(mm: MLLM, idents: dict[str, Sequence[Sample]], share: float, reference: Sequence[Head] | None = None,
                   against: str = "standard", batch_size: int = 64) -> dict[str, Any]:
    """Attribution-patching head scores (``study.scoring.head_attribution``; the cheap estimate of the exhaustive
    score of notebook 03) on each position's identification samples that the model follows; each position's top
    ``share`` and its overlap with ``against``'s top set and with ``reference`` (notebook 03's identified heads).

    Example: ``position_heads(mm, {p: load_split("smol", f"identify_{p}") for p in POSITIONS}, 0.05, identified)``.
    """
    scores: dict[str, torch.Tensor] = {}
    out: dict[str, Any] = {"share": float(share), "method": "attribution", "positions": {}}
    for pos, samples in idents.items():
        samples = list(samples)
        ok = follows(mm, samples, batch_size=batch_size).numpy()
        keep = [s for s, f in zip(samples, ok) if f]
        if not keep:
            out["positions"][pos] = {"n": 0, "n_asked": len(samples), "why": "the model follows none of the samples"}
            continue
        scores[pos] = head_attribution(mm, keep, batch_size, progress=False).scores
        top = top_heads(scores[pos], share)
        out["positions"][pos] = {"n": len(keep), "n_asked": len(samples), "scores": scores[pos].tolist(),
                                 "top": [list(h) for h in top]}
    ref_top = {tuple(h) for h in out["positions"].get(against, {}).get("top", [])}
    given = {tuple(h) for h in reference} if reference is not None else set()
    for pos, entry in out["positions"].items():
        if "top" not in entry:
            continue
        top = {tuple(h) for h in entry["top"]}
        entry["overlap_standard"] = {"shared": len(top & ref_top), "k": len(top)} if ref_top else None
        entry["overlap_identified"] = {"shared": len(top & given), "k": len(given)} if given else None
        if against in scores and pos != against:
            entry["spearman_standard"] = float(rank_agreement(scores[pos], scores[against], share)["spearman"])
    return out


def failure_curves(mm: MLLM, failed: Sequence[Sample], succeeded: Sequence[Sample], arbitration: np.ndarray, k: int,
                   stride: int, batch_size: int = 64, n_boot: int = 1000, seed: int = 0,
                   edges: Sequence[str] = POSITION_EDGES) -> dict[str, Any]:
    """Knockout curves of succeeded vs failed samples of one pool (C10 within a position; A8): ``{"n": {...},
    "present": {edge: bool}, "edges": {edge: {"succeeded", "failed", "failed_arbitration": summary}}}``.
    ``arbitration``: bool [len(failed)], which failures are arbitration failures.

    Example: ``failure_curves(mm, failed, correct, arb, k=5, stride=5)``.
    """
    samples = list(failed) + list(succeeded)
    if not samples:
        return {"n": {"failed": 0, "succeeded": 0, "failed_arbitration": 0}, "present": {}, "edges": {}}
    arb = np.asarray(arbitration, dtype=bool)
    if arb.shape != (len(failed),):
        raise ValueError(f"arbitration must be bool [{len(failed)}] (one per failed sample), got shape {arb.shape}")
    sweep = knockout_sweep(mm, samples, edges, k, stride=stride, batch_size=batch_size, progress=False)
    nf = len(failed)
    is_failed = np.arange(len(samples)) < nf
    masks = {"succeeded": ~is_failed, "failed": is_failed,
             "failed_arbitration": np.concatenate([arb, np.zeros(len(succeeded), dtype=bool)])}
    return {"n": {"failed": nf, "succeeded": len(succeeded), "failed_arbitration": int(arb.sum()),
                  "consistent": int((sweep.follows == ~is_failed).sum())},
            "present": {e: edge_present(mm, samples[0], e) for e in edges},
            "windows": [list(w) for w in sweep.windows], "edges": _summaries(sweep, edges, masks, n_boot, seed)}


def blocked_margins(mm: MLLM, samples: Sequence[Sample], heads: Sequence[Head], positions: str,
                    batch_size: int = 64, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The instructed margin with ``heads`` blocked at ``positions`` ("last" or "all") against the clean margin:
    mean change (paired bootstrap), the flip rate (followed before, not after; Wilson) and the means before and after.

    Example: ``blocked_margins(mm, load_split("smol", "test_first"), identified, "last")["change"]["value"]``.
    """
    n = len(samples)
    base = torch.full((n,), float("nan"), dtype=torch.float64)
    blocked = torch.full((n,), float("nan"), dtype=torch.float64)
    ok0 = torch.zeros(n, dtype=torch.bool)
    ok1 = torch.zeros(n, dtype=torch.bool)
    jobs = [((), 1.0), (tuple(tuple(h) for h in heads), 0.0)]

    @torch.no_grad()
    def fn(batch: Batch) -> None:
        _, logits = scaled_logits(mm, batch, jobs, positions)
        for j, lg in enumerate(logits):
            lg = lg.float()
            (base if j == 0 else blocked)[batch.index] = margins(lg, batch.targets).double().cpu()
            (ok0 if j == 0 else ok1)[batch.index] = instructed_wins(lg, batch.targets).cpu()

    data = prepare(mm, list(samples), batch_size)
    per_batch(mm, data, batch_size, fn, "blocked margins", fills=[(base, 0), (blocked, 0), (ok0, 0), (ok1, 0)])
    b, x, f0, f1 = base.numpy(), blocked.numpy(), ok0.numpy(), ok1.numpy()
    return {"n": n, "change": paired_bootstrap(lambda p, q: float(np.mean(q - p)), [b, x], n_boot, seed),
            "base_mean": summarize(b, n_boot, seed), "blocked_mean": summarize(x, n_boot, seed),
            "flips": proportion(f1[f0] == 0) if f0.any() else proportion([]),
            "base_follow": proportion(f0), "blocked_follow": proportion(f1)}
