"""Processes: which of N cooperating processes this one is, which share of the work is its own, and how the
shares are put back together (torch.distributed, gloo backend).

The analyses run the same code in every process (SPMD, as ``accelerate launch`` and ``torchrun`` do). A batch
loop that is allowed to spread (``mfutils.measure.prepared.per_batch`` and ``study.flow_batches.flow_batches``
with ``fills=``) runs the batches ``b`` with ``b % size == rank`` and then gathers, so that every process holds
every sample's result, in sample order, before anything is computed from them. Random sets and bootstrap draws
are drawn after the gather from the same seeds in every process, so they do not depend on the process count.
Only the main process (rank 0) writes files: ``mfutils.core.paths.atomic_output`` discards the others' writes
and then waits until rank 0's file is in place, so a process may read back what "it" just wrote (every process
must therefore make the same writes, as SPMD code does). A chain runner, whose group only carries messages
between runners, calls ``coordinate_only()``: its writes are rank 0's own and wait for nobody.

A process joins a group when its environment says so: ``WORLD_SIZE`` > 1 with ``RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` (what ``torchrun``, ``accelerate launch`` and ``mf reproduce --processes N`` set). The gather
always goes through gloo (CPU tensors), also on GPU machines: the gathered objects are per-sample numbers, small
next to the forwards. A process whose ``MF_PARENT_PID`` is set exits when that parent is gone (a notebook kernel
of a chain whose runner was killed never lingers in a collective).

Public API
----------
World(rank, size, local_rank, local_size)     ``.main``: rank 0
world() -> World                   this process's place; joins the group on first use (env, see above)
is_main() -> bool                  rank 0, or not in a group
share(n) -> list[int]              the items of range(n) this process runs: rank, rank + size, ...
gather_items(items) -> list        every process's list, joined in rank order (all processes get it)
gather_rows(rows, arrays)          fill, in place, the entries of ``arrays`` that other processes computed
barrier()                          wait for every process
in_lockstep() -> bool              in a group whose processes run the same code (not a chain runner's)
coordinate_only()                  mark this process as a coordinator (a chain runner): writes wait for nobody
leave()                            leave the group (tests; a process that ends leaves it anyway)
ProcessGroupError                  the group could not be joined, or a peer failed

Example::

    mine = share(len(batches))                    # [0, 2, 4, ...] on rank 0 of 2
    for b in mine: out[batches[b]] = compute(b)
    gather_rows(rows_of(mine), [(out, 0)])        # out is complete in every process
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

__all__ = ["World", "world", "is_main", "share", "gather_items", "gather_rows", "barrier", "in_lockstep",
           "coordinate_only", "leave", "ProcessGroupError", "TIMEOUT_ENV"]

TIMEOUT_ENV = "MF_PROCESS_TIMEOUT"       # seconds a collective may wait for a peer (default 10800: a chain
                                         # runner waits for the slowest rank's notebook; a dead peer is seen at once)
_PARENT_ENV = "MF_PARENT_PID"


class ProcessGroupError(RuntimeError):
    """The process group could not be joined, or a peer process failed during a gather."""


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` processes (``local_*``: on this machine)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


_WORLD: World | None = None
_LOCKSTEP = True


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw != "" else default
    except ValueError:
        raise ProcessGroupError(f"environment variable {name}={raw!r} is not an integer; unset it or set a number "
                                "(it is set by torchrun, accelerate launch or mf reproduce --processes)") from None


def _watch_parent(pid: int) -> None:
    def run() -> None:
        while True:
            if os.getppid() != pid:
                os._exit(3)                  # the runner that started us is gone: never linger in a collective
            time.sleep(0.5)

    threading.Thread(target=run, name="mfutils-parent-watch", daemon=True).start()


def world() -> World:
    """This process's place; on first use in a process whose environment names a group of more than one
    process (``WORLD_SIZE`` > 1), joins it (gloo, timeout ``MF_PROCESS_TIMEOUT`` seconds, default 3 hours).

    Example: ``world().size``  -> 1 in a plain Python session.
    """
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        _WORLD = World()
        return _WORLD
    import torch.distributed as dist

    rank = _env_int("RANK", -1)
    if not 0 <= rank < size:
        raise ProcessGroupError(f"WORLD_SIZE={size} but RANK={os.environ.get('RANK')!r}: each process needs a RANK "
                                f"in 0..{size - 1} (start the processes with torchrun, accelerate launch or "
                                "mf reproduce --processes N)")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ProcessGroupError(f"WORLD_SIZE={size} but {name} is not set: the processes cannot find each other "
                                    "(start them with torchrun, accelerate launch or mf reproduce --processes N)")
    parent = _env_int(_PARENT_ENV, 0)
    if parent:
        _watch_parent(parent)
    if not dist.is_initialized():
        try:
            dist.init_process_group("gloo", rank=rank, world_size=size,
                                    timeout=timedelta(seconds=_env_int(TIMEOUT_ENV, 10800)))
        except Exception as exc:  # noqa: BLE001 - re-raised with what to check
            raise ProcessGroupError(f"could not join the group of {size} processes as rank {rank} at "
                                    f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}: {exc}") from exc
        # leave before the interpreter tears down: a gloo group destroyed by the C++ static destructors instead
        # aborts the process ("terminate called without an active exception", SIGABRT: seen at a runner's exit)
        atexit.register(leave)
    _WORLD = World(rank=rank, size=size, local_rank=_env_int("LOCAL_RANK", rank),
                   local_size=_env_int("LOCAL_WORLD_SIZE", size))
    return _WORLD


def is_main() -> bool:
    """True in rank 0 and in a process outside any group. Example: ``if is_main(): print(table)``."""
    return world().main


def share(n: int) -> list[int]:
    """The items of ``range(n)`` this process runs: ``rank, rank + size, ...`` (all of them alone).

    Example: ``share(5)`` -> [0, 2, 4] on rank 0 of 2, [1, 3] on rank 1.
    """
    w = world()
    return list(range(w.rank, n, w.size))


def _all_gather(obj: Any) -> list[Any]:
    import torch.distributed as dist

    out: list[Any] = [None] * world().size
    try:
        dist.all_gather_object(out, obj)
    except Exception as exc:  # noqa: BLE001 - a peer died or timed out: say so, keep the cause
        raise ProcessGroupError(f"rank {world().rank}: a gather with the other processes failed ({exc}); "
                                "see the other processes' errors for the cause") from exc
    return out


def gather_items(items: Sequence[Any]) -> list[Any]:
    """Every process's ``items``, joined in rank order; every process gets the whole list (alone: a copy).

    Example: ``gather_items([rank])`` -> [0, 1] in both processes of 2.
    """
    if world().size == 1:
        return list(items)
    return [x for part in _all_gather(list(items)) for x in part]


def _rows_view(array: Any, axis: int) -> Any:
    """A view of ``array`` with ``axis`` first (writes go through to ``array``)."""
    if hasattr(array, "movedim"):
        return array.movedim(axis, 0)
    import numpy as np

    return np.moveaxis(array, axis, 0)


def gather_rows(rows: Sequence[int], arrays: Sequence[tuple[Any, int]]) -> None:
    """Fill, in place, the entries of each ``(array, axis)`` (numpy array or CPU tensor) that the other
    processes computed: this process computed the indices ``rows`` along ``axis``, each other process its own.
    After the call every process holds the whole arrays (the same values). Alone: nothing to do.

    Example::

        gather_rows([0, 2], [(base, 0), (knocked, 2)])    # base [N], knocked [E, W, N]
    """
    if world().size == 1:
        return
    rows = [int(r) for r in rows]
    mine = (rows, [_rows_view(a, ax)[rows] for a, ax in arrays])       # advanced indexing: copies
    for rank, (their_rows, values) in enumerate(_all_gather(mine)):
        if rank == world().rank or not their_rows:
            continue
        for (a, ax), v in zip(arrays, values):
            _rows_view(a, ax)[their_rows] = v


def barrier() -> None:
    """Wait until every process of the group gets here (alone: return)."""
    if world().size > 1:
        gather_items([None])


def in_lockstep() -> bool:
    """True in a group of more than one process that all run the same code (a notebook's kernels, the workers
    of ``mfutils.run.parallel.in_processes``, a script under accelerate launch); False alone and in a chain
    runner (``coordinate_only``). Example: ``in_lockstep()`` -> False in a plain Python session."""
    return _LOCKSTEP and world().size > 1


def coordinate_only() -> None:
    """Mark this process as a coordinator (the chain runner): its group carries messages only, so its file writes
    are rank 0's alone and wait for no other process. Example: ``coordinate_only()`` before the runner writes."""
    global _LOCKSTEP
    _LOCKSTEP = False


def leave() -> None:
    """Leave the process group (if any) and forget this process's place; ``world()`` joins again from the
    environment. Example: ``leave()`` at the end of a test worker."""
    global _WORLD
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = None
