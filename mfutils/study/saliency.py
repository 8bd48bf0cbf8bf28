"""Information-flow saliency |A * dL/dA| per layer and token-group pair ("Label Words are Anchors", Wang et al. 2023).

Design section 1 (claims C1, C2). The group pairs are ``mfutils.model.edges.SALIENCY_PAIRS``.

Public API
----------
saliency(mm, samples | Prepared, batch_size=16, pairs=SALIENCY_PAIRS, progress=True, abs_per_head=False)
        -> {pair: ndarray [L]}       non-negative; NaN for a pair no sample has

Example::

    sal = saliency(mm, make_split("test", 8))
    sal["instruction->last"].shape            # (L,)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mfutils.data.sample import Sample
from mfutils.measure.answers import Targets
from mfutils.measure.margins import margins
from mfutils.measure.prepared import Prepared
from mfutils.model.edges import SALIENCY_PAIRS, parse_edge
from mfutils.model.groups import Encoded, edge_cut
from mfutils.model.loading import MLLM
from mfutils.study.flow_batches import flow_batches

__all__ = ["saliency"]


def saliency(mm: MLLM, samples: Sequence[Sample] | Prepared, batch_size: int = 16, pairs: Sequence[str] = SALIENCY_PAIRS,
             progress: bool = True, abs_per_head: bool = False) -> dict[str, np.ndarray]:
    """Information-flow saliency per layer and group pair: {pair: ndarray [L]}, non-negative.

    As in "Label Words are Anchors": I_l = |sum_h A_{h,l} * dL/dA_{h,l}| ([T, T] per sample; with
    ``abs_per_head`` sum_h |A * dL/dA| instead), L = the summed instructed margin (binary constraint);
    S_l(pair) = mean of I_l over the existing edges (query in the destination, key in the source, causal,
    no padding), then averaged over the samples that have both groups. A list runs in consecutive batches
    of ``batch_size``, a ``Prepared`` in its own (``mfutils.study.flow_batches``). Runs under eager
    attention with ``output_attentions`` (switched inside, the previous implementation restored afterwards).

    Example::

        sal = saliency(mm, samples[:32])
        sal["instruction->last"].shape            # (L,)
    """
    previous = mm.attn_implementation
    L = mm.n_layers
    cut_pairs = {p: parse_edge(p) for p in pairs}

    def grad_on_embeddings(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return output if output.requires_grad else output.detach().requires_grad_(True)

    def run(index: list[int], enc: Encoded, t: Targets) -> tuple[dict[str, list[float]], dict[str, int]]:
        """Per pair: the batch's per-layer sums over samples, and how many samples have the pair."""
        with torch.enable_grad():
            out = mm.model(**enc.inputs, output_attentions=True, logits_to_keep=1)
            loss = margins(out.logits[:, -1], t).sum()
            grads = torch.autograd.grad(loss, list(out.attentions))
        groups = enc.groups.to("cpu")
        edges = {p: edge_cut(groups, *src_dst) for p, src_dst in cut_pairs.items()}
        sums: dict[str, list[float]] = {p: [] for p in pairs}
        counts: dict[str, int] = {}
        for l in range(L):
            prod = out.attentions[l].detach() * grads[l]                   # [B, H, T, T]
            flow = (prod.abs().sum(1) if abs_per_head else prod.sum(1).abs()).float().cpu()
            for p, (cut, valid) in edges.items():
                n_edges = cut.sum((-1, -2))
                keep = valid & (n_edges > 0)
                per_sample = (flow * cut).sum((-1, -2))[keep] / n_edges[keep]
                sums[p].append(float(per_sample.sum()))
                if l == 0:
                    counts[p] = int(keep.sum())
        return sums, counts

    mm.set_attn_implementation("eager")
    handle = mm.model.get_input_embeddings().register_forward_hook(grad_on_embeddings)
    try:
        done = flow_batches(mm, samples, batch_size, run, "saliency", progress=progress, fills=())
    finally:
        handle.remove()
        mm.set_attn_implementation(previous)
    total = {p: np.zeros(L) for p in pairs}
    n = {p: 0 for p in pairs}
    for _, (sums, counts) in done:                   # the batches' sums added in order, as one running sum
        for p in pairs:
            for l in range(L):
                total[p][l] += sums[p][l]
            n[p] += counts[p]
    return {p: total[p] / n[p] if n[p] else np.full(L, np.nan) for p in pairs}
