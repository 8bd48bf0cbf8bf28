"""Batched loops that survive running out of memory: a batch that does not fit is retried at half the size.

Public API
----------
run_batched(fn, n, batch_size, desc="", progress=False) -> list    fn(start, stop) over [0, n) in batches
is_out_of_memory(exc) -> bool               torch.OutOfMemoryError, or a RuntimeError saying "out of memory"
BatchOutOfMemoryError                       even a batch of one sample ran out of memory

On an out-of-memory error at batch size N > 1, ``run_batched`` warns
``"out of memory at batch size N; retrying at N/2"`` (with the numbers), frees the accelerator's cached
memory, retries the same samples in batches of N // 2 and keeps the smaller size for the rest of the loop.
At batch size 1 it raises ``BatchOutOfMemoryError`` naming what ran out and how to fix it. ``fn`` must be
safe to call again on the same range (write results by index, do not append).

Example::

    out = run_batched(lambda lo, hi: model_logits(samples[lo:hi]), len(samples), batch_size=64)
    logits = torch.cat(out)
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch
from tqdm.auto import tqdm

__all__ = ["run_batched", "is_out_of_memory", "BatchOutOfMemoryError"]

R = TypeVar("R")


class BatchOutOfMemoryError(MemoryError):
    """Out of memory on a batch of a single sample: halving the batch cannot help any more."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for ``torch.OutOfMemoryError`` (CUDA, MPS, ...) and for a RuntimeError whose message says
    "out of memory" (CPU allocators and older torch builds).

    Example: ``is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate ..."))`` -> True.
    """
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_batched(fn: Callable[[int, int], R], n: int, batch_size: int, desc: str = "",
                progress: bool = False) -> list[R]:
    """Call ``fn(start, stop)`` on consecutive ranges covering [0, n) of at most ``batch_size`` items.

    Returns the results in order (one per successful call). On out of memory (``is_out_of_memory``) the
    failing range is retried in halves, with a warning; see the module docstring. Any other error
    propagates unchanged.

    Example::

        run_batched(lambda lo, hi: hi - lo, 10, 4)        # [4, 4, 2]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out: list[R] = []
    size = batch_size
    start = 0
    bar = tqdm(total=n, desc=desc or "batches", disable=not progress)
    try:
        while start < n:
            stop = min(start + size, n)
            oom = False
            try:
                out.append(fn(start, stop))
            except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled, others re-raised
                if not is_out_of_memory(exc):
                    raise
                oom = True
            if oom:  # outside the except block: the traceback no longer pins the failed batch's tensors
                current = stop - start
                _free_memory()
                if current <= 1:
                    raise BatchOutOfMemoryError(
                        f"out of memory on a batch of 1 sample{' in ' + desc if desc else ''}: even one sample does "
                        "not fit. Free accelerator memory (close other processes), use a smaller dtype "
                        "(bfloat16), spread the model over several GPUs (device='auto'), or run on a larger device."
                    ) from None
                size = max(1, current // 2)
                warnings.warn(f"out of memory at batch size {current}; retrying at {size}"
                              f"{' (' + desc + ')' if desc else ''}", RuntimeWarning, stacklevel=2)
                continue
            bar.update(stop - start)
            start = stop
    finally:
        bar.close()
    return out
