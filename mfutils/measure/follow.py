"""Does the model follow the instruction? The one path for every MFR, failure search, readout and evaluation.

On conflict samples a sample *follows* when the argmax of the answer-position logits over the question's
candidates is the instructed modality's answer (``mfutils.measure.margins.instructed_wins``); on other
samples the same test is plain correctness. Interventions: heads scaled by ``alpha`` (0 blocks), at every
position or the answer position only, and an attention edge knocked out in some layers.

Public API
----------
Head = tuple[int, int]                                   (layer, head)
POSITIONS = ("all", "last")                              where heads are scaled
check_heads(mm, heads) -> list[Head]                     each head in range (``hooks.check_head``)
follows(mm, data, *, heads=None, alpha=0.0, positions="all", knockout=None, batch_size=64) -> BoolTensor [N]
                                                         plain forwards, input order
scaled_logits(mm, batch, jobs, positions) -> (status, Iterator[FloatTensor [B, V]])   prefix reuse per job
FlagCache(mm, data, positions)                           flags [N] per (heads, alpha), each computed once with
                                                         prefix reuse; ``.fast_path`` says whether it reused

Example::

    ok = follows(mm, samples)                                      # BoolTensor [N]
    blocked = follows(mm, data, heads=[(5, 2), (6, 0)], alpha=0.0)
    cut = follows(mm, data, knockout=("image->last", range(4, 8)))
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from mfutils.core.processes import gather_items, share
from mfutils.data.sample import Sample
from mfutils.measure.answers import answer_logits
from mfutils.measure.margins import instructed_wins
from mfutils.measure.prefix import checked_trace, merge_status, merge_statuses
from mfutils.measure.prepared import NOT_RUN, Batch, Prepared, per_batch, samples_of
from mfutils.model.edges import parse_edge
from mfutils.model.groups import edge_cut
from mfutils.model.hooks import check_head, scale_heads
from mfutils.model.hooks import knockout as cut_attention
from mfutils.model.loading import MLLM

__all__ = ["Head", "POSITIONS", "check_heads", "follows", "scaled_logits", "FlagCache"]

Head = tuple[int, int]
POSITIONS = ("all", "last")
_Key = tuple[tuple[Head, ...], float]


def check_heads(mm: MLLM, heads: Sequence[Head]) -> list[Head]:
    """``hooks.check_head`` of every head: [(layer, head)] as ints, or a ValueError naming the valid range.

    Example: ``check_heads(mm, [(3, 1)])`` -> ``[(3, 1)]``.
    """
    return [check_head(mm, hd) for hd in heads]


def _check_positions(positions: str) -> None:
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")


@torch.no_grad()
def follows(mm: MLLM, data: Sequence[Sample] | Prepared, *, heads: Sequence[Head] | None = None, alpha: float = 0.0,
            positions: str = "all", knockout: tuple[str, Iterable[int]] | None = None,
            batch_size: int = 64) -> torch.Tensor:
    """Per-sample "follows the instruction" flags, BoolTensor [N] (input order), from plain forwards.

    ``heads``: [(layer, head), ...] scaled by ``alpha`` (0 blocks, >1 amplifies); None or empty = no scaling.
    ``positions``: ``"all"`` scales the heads at every position, ``"last"`` at the answer position only.
    ``knockout``: ``(edge_name, layers)`` cuts that edge (``mfutils.model.edges.parse_edge``, the causal,
    non-diagonal edges of ``groups.edge_cut``) in those layers (``hooks.knockout``); samples without the edge's
    groups are unaffected. Batches sorted by length (``prepared.batches``); out of memory halves a batch.
    The rate is ``flags.float().mean()``; ``mfutils.study.blocking.block_summary`` gives intervals.

    Example::

        base = follows(mm, samples)
        blocked = follows(mm, samples, heads=[(5, 2), (6, 0)], alpha=0.0)
    """
    _check_positions(positions)
    alphas = {h: float(alpha) for h in check_heads(mm, heads or [])}
    cut = None
    if knockout is not None:
        edge, layers = knockout
        cut = (parse_edge(edge), [int(l) for l in layers])
    out = torch.zeros(len(samples_of(data)), dtype=torch.bool)

    def fn(batch: Batch) -> None:
        pos = None if positions == "all" else batch.enc.groups["last"]
        with scale_heads(mm, alphas, positions=pos):
            if cut is None:
                logits = answer_logits(mm, batch.enc)
            else:
                block = edge_cut(batch.enc.groups.to("cpu"), *cut[0])[0]
                with cut_attention(mm, block, cut[1]):
                    logits = answer_logits(mm, batch.enc)
        out[batch.index] = instructed_wins(logits, batch.targets).cpu()

    per_batch(mm, data, batch_size, fn, "follows", fills=[(out, 0)])
    return out


@torch.no_grad()
def scaled_logits(mm: MLLM, batch: Batch, jobs: Sequence[tuple[tuple[Head, ...], float]], positions: str
                  ) -> tuple[str, Iterator[torch.Tensor]]:
    """(status, answer logits [B, V] of ``batch`` under each job (heads, alpha), in order).

    Prefix reuse (prefix reuse, paper/METHOD.md; ``hooks.PrefixTrace``): scaling heads whose lowest layer is l leaves the
    input of layer l unchanged, so one clean forward serves every job and each reruns only layers >= l
    (and, with ``positions="last"``, only the answer rows). Checked on every batch
    (``prefix.checked_trace``, whose status is returned); otherwise each job is a full forward under
    ``hooks.scale_heads``.

    Example::

        status, logits = scaled_logits(mm, data.batches[0], [((), 1.0), (((3, 1),), 0.0)], "all")
    """
    last_only = positions == "last"
    trace, status = checked_trace(mm, batch.enc, rows_from_last=last_only)

    def run() -> Iterator[torch.Tensor]:
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

    return status, run()


class FlagCache:
    """Follow flags [N] per (head set, alpha) on one prepared sample set; each pair is computed once.

    ``fill`` evaluates many pairs batch by batch with prefix reuse (``scaled_logits``); ``__call__``
    returns (computing if needed) the flags of one pair. ``fast_path``: ``"prefix-reuse"`` when every batch
    of the last ``fill`` reused its prefix, else why it used full forwards (also written to ``data.fast_path``).
    Flags equal ``follows(mm, data, heads=..., alpha=..., positions=...)`` (tested).

    Example::

        flags = FlagCache(mm, data, "all"); flags.fill([((), 1.0), ([(3, 1)], 0.0)], "blocking", progress=False)
        flags([(3, 1)])                                      # BoolTensor [N]
    """

    def __init__(self, mm: MLLM, data: Prepared, positions: str) -> None:
        _check_positions(positions)
        self.mm, self.data, self.positions = mm, data, positions
        self.store: dict[_Key, torch.Tensor] = {}
        self.fast_path = NOT_RUN

    def key(self, heads: Sequence[Head], alpha: float) -> _Key:
        hs = tuple(sorted(check_heads(self.mm, heads)))
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
        # a refresh at most every 2 s: in a notebook each refresh is a widget message, and a test runner that reads
        # a cell's messages only when it ends (nbval) loses the cell's end past the kernel's 1000-message buffer
        here = len(share(len(self.data.batches)))           # the batches this process runs (all, alone)
        bar = tqdm(total=here * len(todo), desc=desc, disable=not progress, mininterval=2.0)
        status = NOT_RUN

        def fn(batch: Batch) -> None:
            nonlocal status
            batch_status, logits = scaled_logits(self.mm, batch, todo, self.positions)
            status = merge_status(status, batch_status)
            for k, lg in zip(todo, logits):
                out[k][batch.index] = instructed_wins(lg, batch.targets).cpu()
                bar.update(1)

        try:
            per_batch(self.mm, self.data, len(self.data), fn, desc or "head sets", fills=[(t, 0) for t in out.values()])
        finally:
            bar.close()
        status = merge_statuses(gather_items([status]))
        self.store.update(out)
        self.fast_path = self.data.fast_path = status
