"""The batches the information-flow analyses run on: a ``Prepared``'s, or consecutive slices of a sample list.

A ``mfutils.measure.prepared.Prepared`` (encoded once, batches sorted by length) is run batch by batch through
``prepared.per_batch``. A plain sample list keeps the flow analyses' own batching: consecutive slices of
``batch_size`` in input order, encoded on the fly, through ``mfutils.model.batching.run_batched``; the
numbers the notebook chain writes come from this path. Both halve a batch that runs out of memory.

Public API
----------
BatchFn = Callable[[list[int], Encoded, Targets | None], R]       fn(index [B], enc, targets) -> R
flow_batches(mm, data, batch_size, fn, desc, progress=False, targets=True, fills=None) -> list[(index, R)]
        every batch's input positions and result, in the order run; with ``fills`` spread over processes
gather(parts, axis=0) -> ndarray        per-batch arrays [(index, array)] joined along ``axis`` in input order
subset_or_data(data, keep) -> data | keep   ``data`` if it is a Prepared of exactly ``keep``, else ``keep``

Example::

    done = flow_batches(mm, samples, 64, lambda idx, enc, t: margins(answer_logits(mm, enc), t), "margins")
    m = torch.cat([r for _, r in done])          # [N], input order for a sample list
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from tqdm.auto import tqdm

from mfutils.core.processes import gather_items, gather_rows, share
from mfutils.data.sample import Sample
from mfutils.measure.answers import Targets, targets_for
from mfutils.measure.prepared import Batch, Fill, Prepared, per_batch
from mfutils.model.batching import run_batched
from mfutils.model.groups import Encoded, encode
from mfutils.model.loading import MLLM

__all__ = ["BatchFn", "flow_batches", "gather", "subset_or_data"]

R = TypeVar("R")
BatchFn = Callable[[list[int], Encoded, "Targets | None"], R]


def flow_batches(mm: MLLM, data: Sequence[Sample] | Prepared, batch_size: int, fn: BatchFn[R], desc: str,
                 progress: bool = False, targets: bool = True, fills: Sequence[Fill] | None = None
                 ) -> list[tuple[list[int], R]]:
    """``fn(index, enc, targets)`` on every batch of ``data``; returns ``[(index, result)]`` in the order run.

    ``data``: a ``Prepared`` (its batches, ``per_batch``) or samples (consecutive slices of ``batch_size``,
    ``run_batched``; ``targets_for`` all samples once, unless ``targets=False``: then ``fn`` gets None).
    A batch that runs out of memory is retried in halves; only successful calls are returned.
    ``fills`` (``prepared.per_batch``): given (even empty), the batches are spread over the processes of a
    group, and every process gets the whole returned list (in the single-process order) and the other
    processes' entries of the listed arrays that ``fn`` writes; None: every process runs every batch.

    Example::

        done = flow_batches(mm, samples, 4, lambda idx, enc, t: len(idx), "sizes")   # [([0..3], 4), ...]
    """
    done: list[tuple[int, list[int], R]] = []          # (batch number, index, result)
    if isinstance(data, Prepared):
        bar = tqdm(total=len(data), desc=desc, disable=not progress)
        number = {i: k for k, b in enumerate(data.batches) for i in b.index}     # sample -> its batch

        def one_prepared(b: Batch) -> None:
            done.append((number[b.index[0]], b.index, fn(b.index, b.enc, b.targets)))
            bar.update(len(b.index))

        try:
            per_batch(mm, data, batch_size, one_prepared, desc, fills=fills)
        finally:
            bar.close()
        return _joined(done, fills is not None)
    samples = list(data)
    all_targets = targets_for(mm, samples) if targets else None
    slices = [(lo, min(lo + batch_size, len(samples))) for lo in range(0, len(samples), batch_size)]
    mine = share(len(slices)) if fills is not None else list(range(len(slices)))
    bar = tqdm(total=sum(slices[k][1] - slices[k][0] for k in mine), desc=desc, disable=not progress)
    rows: list[int] = []
    size = batch_size                     # once halved for memory, later slices start at the smaller size
    try:
        for k in mine:
            def one(lo: int, hi: int, k: int = k) -> int:
                lo, hi = slices[k][0] + lo, slices[k][0] + hi
                index = list(range(lo, hi))
                enc = encode(mm, [s.prompt for s in samples[lo:hi]]).to(mm.device)
                done.append((k, index, fn(index, enc, all_targets.subset(index) if all_targets is not None else None)))
                bar.update(hi - lo)
                return hi - lo

            n_k = slices[k][1] - slices[k][0]
            ran = run_batched(one, n_k, min(size, n_k), desc=desc)
            if len(ran) > 1:
                size = min(size, max(ran))
            rows.extend(range(*slices[k]))
    finally:
        bar.close()
    if fills is not None:
        gather_rows(rows, fills)
    return _joined(done, fills is not None)


def _joined(done: list[tuple[int, list[int], R]], spread: bool) -> list[tuple[list[int], R]]:
    """The (index, result) pairs of every process when ``spread``, in batch order (the order one process runs)."""
    if spread:
        done = sorted(gather_items(done), key=lambda d: d[0])          # stable: halved batches keep their order
    return [(index, result) for _, index, result in done]


def gather(parts: Sequence[tuple[Sequence[int], np.ndarray]], axis: int = 0) -> np.ndarray:
    """The arrays of ``parts`` ([(input positions [B], array with B entries along ``axis``)], at least one)
    joined along ``axis`` in input order (consecutive batches: plain concatenation).

    Example::

        gather([([1], np.array([10.0])), ([0], np.array([20.0]))])      # array([20., 10.])
    """
    index = np.concatenate([np.asarray(i, dtype=np.int64) for i, _ in parts])
    joined = np.concatenate([a for _, a in parts], axis=axis)
    order = np.argsort(index, kind="stable")
    return joined if np.array_equal(order, np.arange(len(order))) else np.take(joined, order, axis=axis)


def subset_or_data(data: Sequence[Sample] | Prepared, keep: list[Sample]) -> Sequence[Sample] | Prepared:
    """``data`` when it is a ``Prepared`` whose samples are all in ``keep`` (its batches can be used as they
    are), else ``keep`` (to be encoded in consecutive batches).

    Example::

        source = subset_or_data(data, [s for s in samples_of(data) if s.other_answer is not None])
    """
    return data if isinstance(data, Prepared) and len(keep) == len(data) else keep
