"""Samples encoded once and reused across interventions, and the one batch loop that survives out of memory.

Public API
----------
Batch(index, enc, targets)                     one encoded batch: input positions [B], ``Encoded``, ``Targets``
Prepared(samples, batches)                     samples encoded in batches sorted by length (input order kept);
                                               ``.fast_path``: how the last prefix-reuse run on it went
prepare(mm, samples | Prepared, batch_size=64) -> Prepared    encode once (a Prepared is returned unchanged)
batches(mm, samples | Prepared, batch_size) -> Iterator[Batch]  stored batches, or encoded on the fly
n_batches(samples | Prepared, batch_size) -> int              how many batches ``batches`` yields
samples_of(samples | Prepared) -> list[Sample]
per_batch(mm, data, batch_size, fn, desc, fills=None) -> None   fn(batch) on every batch; halves on out
                                               of memory; with ``fills`` spread over processes and gathered
Fill = (array, sample_axis)                    an array that a batch function fills by sample index

Example::

    data = prepare(mm, samples, batch_size=64)
    per_batch(mm, data, 64, lambda b: print(b.index, b.enc.groups.shape), "show")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mfutils.core.processes import gather_rows, share
from mfutils.data.sample import Sample
from mfutils.measure.answers import Targets, targets_for
from mfutils.model.batching import run_batched
from mfutils.model.groups import Encoded, encode
from mfutils.model.loading import MLLM

__all__ = ["Batch", "Prepared", "prepare", "batches", "n_batches", "samples_of", "per_batch", "NOT_RUN", "Fill"]

NOT_RUN = "not run"
Fill = tuple[Any, int]          # (numpy array or CPU tensor that a batch function writes by sample index, its sample axis)


@dataclass
class Batch:
    """One encoded batch: ``index`` (positions of its samples in the input list), ``enc`` (on the model's
    device), ``targets`` (``mfutils.measure.answers.Targets`` of those samples)."""

    index: list[int]
    enc: Encoded
    targets: Targets


@dataclass
class Prepared:
    """Samples encoded once, in batches of similar length (less padding); results keep the input order.

    ``fast_path``: how the last computation with prefix reuse on these samples ran (``"prefix-reuse"``, or why
    it used full forwards; ``"not run"`` before any), set by ``mfutils.measure.follow.FlagCache`` and the head
    scores of ``mfutils.study.scoring``.

    Example::

        data = prepare(mm, samples, batch_size=64)
        follows(mm, data); follows(mm, data, heads=[(3, 1)])      # no re-encoding
    """

    samples: list[Sample]
    batches: list[Batch]
    fast_path: str = NOT_RUN

    def __len__(self) -> int:
        return len(self.samples)


def _length_key(sample: Sample) -> int:
    return sum(len(text) for _, text in sample.prompt.segments)


def _encode_batch(mm: MLLM, samples: Sequence[Sample], index: list[int]) -> Batch:
    chunk = [samples[i] for i in index]
    enc = encode(mm, [s.prompt for s in chunk]).to(mm.device)
    return Batch(index=index, enc=enc, targets=targets_for(mm, chunk))


def _chunks(samples: Sequence[Sample], batch_size: int) -> list[list[int]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(samples)), key=lambda i: _length_key(samples[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def prepare(mm: MLLM, samples: Sequence[Sample] | Prepared, batch_size: int = 64) -> Prepared:
    """Encode ``samples`` once (token groups, targets) in batches of ``batch_size`` sorted by length.

    Passing a ``Prepared`` returns it unchanged.

    Example::

        data = prepare(mm, load_split("tiny", "test"))        # len(data.batches) == ceil(N / 64)
    """
    if isinstance(samples, Prepared):
        return samples
    samples = list(samples)
    return Prepared(samples, [_encode_batch(mm, samples, idx) for idx in _chunks(samples, batch_size)])


def batches(mm: MLLM, samples: Sequence[Sample] | Prepared, batch_size: int) -> Iterator[Batch]:
    """The batches of ``samples``: stored ones for a ``Prepared``, encoded on the fly otherwise (sorted by length).

    Example::

        for b in batches(mm, samples, 64): logits = answer_logits(mm, b.enc)     # [B, V]
    """
    if isinstance(samples, Prepared):
        yield from samples.batches
        return
    for idx in _chunks(samples, batch_size):
        yield _encode_batch(mm, samples, idx)


def n_batches(samples: Sequence[Sample] | Prepared, batch_size: int) -> int:
    """How many batches ``batches(mm, samples, batch_size)`` yields. Example: ``n_batches(samples, 64)``."""
    return len(samples.batches) if isinstance(samples, Prepared) else len(_chunks(samples_of(samples), batch_size))


def samples_of(samples: Sequence[Sample] | Prepared) -> list[Sample]:
    """The samples of a ``Prepared`` (input order), or the sequence as a list. Example: ``samples_of(data)``."""
    return samples.samples if isinstance(samples, Prepared) else list(samples)


def per_batch(mm: MLLM, samples: Sequence[Sample] | Prepared, batch_size: int, fn: Callable[[Batch], object],
              desc: str, fills: Sequence[Fill] | None = None) -> None:
    """Call ``fn(batch)`` on every batch of ``samples``; on out of memory, retry that batch's samples in
    halves with a warning (``mfutils.model.batching.run_batched``). ``fn`` writes its results by sample index.
    Once halved, later batches start at the smaller size.

    ``fills``: the arrays ``fn`` writes, each as ``(array, sample_axis)``. Given (even empty), the batches are
    spread over the processes of a group (``mfutils.core.processes``: batch b runs in rank b % size) and
    afterwards every process gets the other processes' entries of those arrays, so each holds every sample's
    result. None: every process runs every batch (alone, both are the same).

    Example::

        per_batch(mm, data, 64, lambda b: out.__setitem__(b.index, answer_logits(mm, b.enc).cpu()), "logits",
                  fills=[(out, 0)])
    """
    data_samples = samples_of(samples)
    if isinstance(samples, Prepared):
        planned: list[Batch | list[int]] = list(samples.batches)
    else:
        planned = list(_chunks(data_samples, batch_size))
    mine = share(len(planned)) if fills is not None else list(range(len(planned)))
    size = batch_size                     # once halved for memory, later batches start at the smaller size
    rows: list[int] = []
    for b in mine:
        item = planned[b]
        batch = item if isinstance(item, Batch) else _encode_batch(mm, data_samples, item)

        def one(lo: int, hi: int, batch: Batch = batch) -> int:
            if lo == 0 and hi == len(batch.index):
                fn(batch)
            else:
                fn(_encode_batch(mm, data_samples, batch.index[lo:hi]))
            return hi - lo
        done = run_batched(one, len(batch.index), min(size, len(batch.index)), desc=desc)
        if len(done) > 1:
            size = min(size, max(done))
        rows.extend(batch.index)
    if fills is not None:
        gather_rows(rows, fills)
