"""Prefix reuse, checked: one clean forward per batch that interventions rerun from.

A head of layer l scaled, or a knockout from layer l, leaves everything before layer l unchanged, so
``mfutils.model.hooks.PrefixTrace.rerun`` recomputes only layers >= l (and only the answer rows when the
intervention touches nothing else). ``checked_trace`` verifies on each batch that rerunning the last layer
reproduces the clean logits, and says so; when it does not, callers fall back to full forwards.

Public API
----------
PREFIX_REUSE                                     "prefix-reuse", the status of a batch that reused its prefix
checked_trace(mm, enc, rows_from_last) -> (PrefixTrace | None, status)   None: use full forwards; status
                                                 is PREFIX_REUSE or "full forwards (<why>)"
merge_status(run, batch) -> str                  the status of a run so far: its first fallback, else PREFIX_REUSE
merge_statuses(statuses) -> str                  the status of runs in several processes (those that ran nothing ignored)

Example::

    trace, status = checked_trace(mm, batch.enc, rows_from_last=True)
    logits = trace.logits if trace is not None else answer_logits(mm, batch.enc).float()
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from mfutils.measure.prepared import NOT_RUN
from mfutils.model.batching import is_out_of_memory
from mfutils.model.groups import Encoded
from mfutils.model.prefix import PrefixTrace, prefix_trace
from mfutils.model.loading import MLLM

__all__ = ["PREFIX_REUSE", "checked_trace", "merge_status", "merge_statuses"]

PREFIX_REUSE = "prefix-reuse"


def checked_trace(mm: MLLM, enc: Encoded, rows_from_last: bool) -> tuple[PrefixTrace | None, str]:
    """``hooks.prefix_trace`` of ``enc``, checked: rerunning the last layer (from the first answer row when
    ``rows_from_last``) must reproduce the clean logits to 1e-4 of their scale (or 64 eps of the dtype).

    Returns (trace, ``PREFIX_REUSE``), or (None, ``"full forwards (<why>)"``) with a RuntimeWarning if the
    rerun differs or the architecture's layers cannot be rerun. Out-of-memory errors propagate (the batch
    loop halves the batch).

    Example::

        trace, status = checked_trace(mm, enc, rows_from_last=False)     # status == "prefix-reuse"
    """
    try:
        trace = prefix_trace(mm, enc, keep_kv=rows_from_last)
        p0 = int(trace.last.min()) if rows_from_last else 0
        dtype = next(mm.model.parameters()).dtype
        rel = max(1e-4, 64 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-4
        tol = rel * max(1.0, float(trace.logits.abs().max()))
        diff = float((trace.rerun(mm.n_layers - 1, rows_from=p0) - trace.logits).abs().max())
        if diff > tol:
            warnings.warn(f"head scoring on {mm.name}: the prefix rerun differs from the full forward by {diff:.2e} "
                          f"(> {tol:.1e}); using one full forward per head", RuntimeWarning, stacklevel=2)
            return None, f"full forwards (prefix rerun differs by {diff:.2e})"
        return trace, PREFIX_REUSE
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        if is_out_of_memory(exc):
            raise                                   # run_batched halves the batch
        warnings.warn(f"head scoring on {mm.name}: prefix reuse unavailable ({type(exc).__name__}: "
                      f"{str(exc)[:100]}); using one full forward per head", RuntimeWarning, stacklevel=2)
        return None, f"full forwards ({type(exc).__name__}: {str(exc)[:100]})"


def merge_status(run: str, batch: str) -> str:
    """The status of a run after one more batch: the first fallback message sticks, else ``batch``'s.

    Example: ``merge_status("prefix-reuse", "full forwards (...)")`` -> ``"full forwards (...)"``.
    """
    return batch if run in (NOT_RUN, PREFIX_REUSE) else run


def merge_statuses(statuses: Sequence[str]) -> str:
    """The status of one run whose batches were spread over processes (``mfutils.core.processes``), in rank
    order; a process that ran no batch (``NOT_RUN``) is ignored.

    Example: ``merge_statuses(["prefix-reuse", "not run"])`` -> ``"prefix-reuse"``.
    """
    out = NOT_RUN
    for status in statuses:
        if status != NOT_RUN:
            out = merge_status(out, status)
    return out
