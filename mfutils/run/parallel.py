"""Many processes: start a group of workers from a notebook or for the chain.

The analyses spread their batches over the processes of a group and gather the per-sample results
(``mfutils.core.processes``); this module starts such groups.

- **From a notebook kernel (or any Python session)**: ``in_processes(fn, *args, processes=N)`` runs
  ``fn(*args)`` in N processes through accelerate's ``notebook_launcher`` (fork; torch.distributed's elastic
  launcher) and returns rank 0's result. Each process sees the objects of the session as they were at the call
  (fork), so ``fn`` may use a model loaded before. On GPUs, load the model inside ``fn`` (CUDA cannot be used in
  a forked process once the session has used it) on ``rank_device()``.
- **The chain**: ``mf reproduce --processes N`` re-runs itself under ``torchrun`` (``launch_argv``); so does
  ``accelerate launch --multi_gpu --num_processes N -m mfutils reproduce`` (and accelerate's multi-node flags).
  Each runner process executes every notebook in its own kernel, as one rank of a new group per notebook
  (``kernel_env``); rank 0's runner decides what runs, and only it writes.

When one process fails, the run ends with that process's error (``RankError``, naming the rank); the other
processes, which then fail in a gather, are stopped, and none is left behind.

Public API
----------
in_processes(fn, *args, processes=2, threads=None, **kwargs) -> Any   fn in N processes; rank 0's result
rank_device() -> str               the device of this process: cuda:<local rank> when there are GPUs, else cpu
launch_argv(processes, argv) -> list[str]   the torchrun command that runs ``mf <argv>`` in N processes
kernel_env(port) -> dict[str, str]  the environment for this rank's notebook kernel (its own group at ``port``)
free_port() -> int                 a TCP port that is free now on this machine
primary_error(records) -> dict     of the processes' error records, the one that started the failure
RankError                          a process of the group failed: its rank, error type and message

Example::

    from mfutils.run.parallel import in_processes
    sweep = in_processes(knockout_sweep, mm, samples, MAIN_EDGES, k=5, processes=2)   # == knockout_sweep(...)
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickle
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mfutils.core import processes as group

__all__ = ["in_processes", "rank_device", "launch_argv", "kernel_env", "free_port", "primary_error", "RankError"]

class RankError(RuntimeError):
    """A process of a group failed; the message names its rank and its error (the first that was not a
    failed gather, which only says that some peer had died)."""


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it). Example: ``free_port()`` -> 41213."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_device() -> str:
    """``cuda:<local rank mod GPUs>`` in a group on a machine with GPUs, ``cuda`` alone with GPUs, else ``cpu``.

    Example: ``load_model(name, device=rank_device())`` inside a function run by ``in_processes``.
    """
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    w = group.world()
    return f"cuda:{w.local_rank % torch.cuda.device_count()}" if w.size > 1 else "cuda"


def _entry(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], folder: str,
           threads: int) -> None:
    """One process of ``in_processes``: join the group, run, leave; rank 0 writes the result, a failing rank
    its error (``error-<rank>.json``), into ``folder``."""
    import torch

    group.leave()                     # a forked child must not keep the parent's place ("alone")
    torch.set_num_threads(threads)
    rank = -1
    try:
        rank = group.world().rank
        out = fn(*args, **kwargs)
        if rank == 0:
            with open(Path(folder) / "result.pkl", "wb") as f:
                pickle.dump(out, f)
    except BaseException as exc:
        record = {"rank": rank, "type": type(exc).__name__, "message": str(exc),
                  "secondary": isinstance(exc, group.ProcessGroupError), "traceback": traceback.format_exc()}
        (Path(folder) / f"error-{rank}.json").write_text(json.dumps(record))
        raise
    finally:
        group.leave()


def primary_error(records: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The error that started a failure: the lowest rank whose error is not a failed gather (else the lowest)."""
    if not records:
        return None
    ordered = sorted(records, key=lambda r: (bool(r.get("secondary")), int(r.get("rank", 0))))
    return ordered[0]


def in_processes(fn: Callable[..., Any], *args: Any, processes: int = 2, threads: int | None = None,
                 **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` in ``processes`` processes that form one group (gloo); returns rank 0's
    result (every rank computes the same, see ``mfutils.core.processes``). ``threads``: torch threads per
    process (default: this session's threads divided among the processes, at least 1). The launch is
    accelerate's ``notebook_launcher`` (fork). If a process fails: ``RankError`` with its rank and message.

    Example::

        scores = in_processes(head_scores_exhaustive, mm, data, processes=2)      # [L, H], as alone
    """
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise ValueError(f"processes must be an integer >= 1, got {processes!r}")
    if processes == 1:
        return fn(*args, **kwargs)
    if group.world().size > 1:
        raise RuntimeError("in_processes was called inside a group of processes: call it from a single process "
                           "(a notebook kernel or a plain Python session)")
    import torch
    from accelerate import notebook_launcher

    per = threads or max(1, torch.get_num_threads() // processes)
    quiet = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.distributed")]
    levels = [q.level for q in quiet]
    with tempfile.TemporaryDirectory(prefix="mf-processes-") as folder:
        try:
            for q in quiet:
                q.setLevel(logging.CRITICAL)
            with contextlib.redirect_stdout(io.StringIO()):   # accelerate's "Launching training on 2 CUDAs." (sic)
                notebook_launcher(_entry, args=(fn, args, kwargs, folder, per), num_processes=processes,
                                  use_port=str(free_port()))
        except Exception as exc:  # noqa: BLE001 - replaced by the failing rank's own error when there is one
            records = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("error-*.json"))]
            first = primary_error(records)
            if first is None:
                raise RankError(f"a group of {processes} processes failed before any reported an error: {exc}") from exc
            raise RankError(f"process {first['rank']} of {processes} failed: {first['type']}: {first['message']}\n"
                            f"{first['traceback']}") from None
        finally:
            for q, level in zip(quiet, levels):
                q.setLevel(level)
        with open(Path(folder) / "result.pkl", "rb") as f:
            return pickle.load(f)


def launch_argv(n: int, argv: Sequence[str]) -> list[str]:
    """The command that runs ``python -m mfutils <argv>`` in ``n`` processes on this machine (torchrun,
    standalone rendezvous on a free port).

    Example: ``launch_argv(2, ["reproduce", "--model", "tiny"])``
    """
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
            "-m", "mfutils", *argv]


# torchrun's variables that belong to the runner's own group, not to the kernel's
_RUNNER_ONLY = ("TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_ERROR_FILE", "TORCHELASTIC_RUN_ID",
                "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS")


def kernel_env(port: int) -> dict[str, str]:
    """The environment of this runner's notebook kernel: the runner's rank and size, its own group at
    ``MASTER_ADDR:port``, the runner's pid to watch (``MF_PARENT_PID``), progress bars only in rank 0.

    Example: ``os.environ.update(kernel_env(free_port()))`` before starting the kernel.
    """
    w = group.world()
    env = {k: v for k, v in os.environ.items() if k not in _RUNNER_ONLY}
    env.update({"RANK": str(w.rank), "WORLD_SIZE": str(w.size), "LOCAL_RANK": str(w.local_rank),
                "LOCAL_WORLD_SIZE": str(w.local_size), "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
                "MASTER_PORT": str(port), "MF_PARENT_PID": str(os.getpid())})
    if w.rank != 0:
        env["TQDM_DISABLE"] = "1"
    return env
