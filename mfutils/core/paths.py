"""Where things live in the repository, resolved from the package location, never from the cwd.

Public API
----------
repo_root() -> Path                 the repository root (override with the MF_ROOT environment variable)
output_root() -> Path               where figures/ and results/ go: repo_root(), or MF_OUT when set (tests)
checkpoint_dir(name="tiny-llava")   the shipped tiny model's folder
figures_dir(model) / results_dir(model)   per-run output folders (created on demand): ``<model>`` for the shipped
                                    chain, ``<model>--<run key>`` for any other data, a smoke run or custom parameters
run_key() -> str                    the run key of this process (``MF_RUN``; "" for the shipped chain)
output_name(model) -> str           the output folders' name: ``model_slug(model)``, then ``--<run key>`` when set
model_slug(model) -> str            a file-system-safe name for a model ("random:llava" -> "random-llava")
display_path(path) -> str           ``path`` relative to the output root or the repository when under one, else as given
atomic_output(path)                 context manager: write to a temporary sibling, rename over ``path`` on success
atomic_write_text(path, text)       write a text file atomically (a kill never leaves it half-written)
atomic_write_bytes(path, data)      the same for bytes
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mfutils.core.processes import barrier, in_lockstep, is_main

__all__ = ["repo_root", "output_root", "checkpoint_dir", "figures_dir", "results_dir", "model_slug", "notebooks_dir",
           "RUN_ENV", "run_key", "output_name",
           "display_path", "atomic_output", "atomic_write_text", "atomic_write_bytes"]


def repo_root() -> Path:
    env = os.environ.get("MF_ROOT")
    return Path(env).resolve() if env else Path(__file__).resolve().parents[2]


def output_root() -> Path:
    env = os.environ.get("MF_OUT")
    return Path(env).resolve() if env else repo_root()


def checkpoint_dir(name: str = "tiny-llava") -> Path:
    return repo_root() / "checkpoints" / name


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def model_slug(model: str) -> str:
    """``"tiny"`` -> ``"tiny"``; ``"random:qwen2_5_vl"`` -> ``"random-qwen2_5_vl"``; paths -> last part."""
    if "/" in model or os.sep in model:
        model = Path(model.rstrip("/")).name or model
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", model).strip("-") or "model"


RUN_ENV = "MF_RUN"


def run_key() -> str:
    """What this run is beyond its model, as ``mfutils.run.chain`` sets it for a chain and its kernels (``MF_RUN``):
    "" for the shipped chain (the world at the shipped profile), else e.g. "smoke" or "mc2-evaluate_final-smoke"."""
    return os.environ.get(RUN_ENV, "").strip()


def output_name(model: str) -> str:
    """The name of ``model``'s output folders in this run: ``model_slug(model)``, with ``--<run key>`` appended for
    any run but the shipped chain, so that such a run never writes over the shipped model's figures and results.

    Example: with ``MF_RUN=smoke``, ``output_name("smol")`` -> ``"smol--smoke"``.
    """
    key = run_key()
    return f"{model_slug(model)}--{key}" if key else model_slug(model)


def figures_dir(model: str, create: bool = True) -> Path:
    p = output_root() / "figures" / output_name(model)
    if create:
        p.mkdir(parents=True, exist_ok=True)
    return p


def results_dir(model: str, create: bool = True) -> Path:
    p = output_root() / "results" / output_name(model)
    if create:
        p.mkdir(parents=True, exist_ok=True)
    return p


def display_path(path: Path | str) -> str:
    """``path`` as printed and recorded: relative to ``output_root()`` or, failing that, ``repo_root()`` when it
    lies under one of them (the same on every clone), else ``str(path)`` unchanged.

    Example::

        print(f"wrote {display_path(results_dir('tiny') / 'x.json')}")     # wrote results/tiny/x.json
    """
    p = Path(path)
    if p.is_absolute():
        for base in (output_root(), repo_root()):
            if p.is_relative_to(base):
                return str(p.relative_to(base))
    return str(path)


@contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it is renamed over ``path`` (``os.replace`` is
    atomic on one file system), on an exception it is deleted. A reader never sees a half-written file, and
    a run killed mid-write leaves the previous version (or nothing) in place.

    In a group of processes (``mfutils.core.processes``) only the main one writes: the others get a path in
    a temporary folder that is deleted on exit (every process runs the same code; their results are equal),
    and every process then waits until the main one's file is in place (``in_lockstep``), so each can read it.

    Example::

        with atomic_output("results/tiny/x.npz") as tmp:
            np.savez(tmp, a=a)
    """
    path = Path(path)
    if not is_main():
        with tempfile.TemporaryDirectory(prefix="mf-not-main-") as scratch:
            yield Path(scratch) / path.name
        if in_lockstep():
            barrier()                     # rank 0's file is in place: this process may read it
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
        if in_lockstep():
            barrier()
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see ``atomic_output``); returns the path."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path.

    Example::

        atomic_write_text(results_dir("tiny") / "doc.json", json.dumps(doc))
    """
    return atomic_write_bytes(path, text.encode("utf-8"))
