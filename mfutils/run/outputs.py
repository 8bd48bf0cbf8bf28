"""Where a chain run writes: its run key (the folders of any run but the shipped chain), where a notebook executes
and where a failed execution is kept, and the checked outputs that nbval compares.

Public API
----------
built_notebooks() -> list[Path]             the chain's notebooks in order
run_key_for(smoke, params) -> str           "" for the shipped chain, else e.g. "smoke", "mc2-<file stem>", "p-<hash>"
executed_paths(dst) -> (running, failed)    where a notebook executes, and where a failed run's copy is kept
store_checked_outputs(model, smoke=False) -> list[str]   copy the outputs of ``# NBVAL_CHECK_OUTPUT`` cells from the
                                            executed copies into the source notebooks (after a deliberate change)

Example::

    run_key_for(True, {})                   # "smoke": outputs under figures/<model>--smoke/, results/<model>--smoke/
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mfutils.core.paths import display_path, figures_dir, model_slug, notebooks_dir

__all__ = ["built_notebooks", "run_key_for", "executed_paths", "store_checked_outputs"]


def built_notebooks() -> list[Path]:
    """The chain's notebooks, ``notebooks/NN_*.ipynb``, in order."""
    return sorted(p for p in notebooks_dir().glob("[0-9][0-9]_*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def run_key_for(smoke: bool, params: Mapping[str, Any]) -> str:
    """The run key of a chain (``core.paths.run_key``): "" for the shipped chain (the world, no ``-p`` parameter, not
    smoke); otherwise the data ("mc2-<file stem>"), "smoke", and "p-<hash>" of any other parameter given, joined by "-".
    Outputs then go to ``figures/<model>--<key>/`` and ``results/<model>--<key>/``.

    Example: ``run_key_for(True, {"dataset": "mc2", "mc2_json": "/d/evaluate_final.json"})`` ->
    ``"mc2-evaluate_final-smoke"``.
    """
    parts = []
    if str(params.get("dataset", "world")) == "mc2":
        parts.append("mc2-" + model_slug(Path(str(params.get("mc2_json") or "file")).stem))
    if smoke:
        parts.append("smoke")
    custom = {k: v for k, v in params.items() if k not in ("model", "smoke", "dataset", "mc2_json", "coco_root")}
    if custom:
        digest = hashlib.sha256(json.dumps(custom, sort_keys=True, default=str).encode()).hexdigest()[:8]
        parts.append(f"p-{digest}")
    return "-".join(parts)


def executed_paths(dst: Path) -> tuple[Path, Path]:
    """(where a notebook executes, where a failed execution is kept) for the executed copy ``dst``: a run writes
    ``.<stem>.running.ipynb`` and renames it over ``dst`` only when the notebook completes; a failed run's copy is
    kept as ``<stem>.FAILED.ipynb`` beside it, and ``dst`` (the last complete run's copy) stays as it was.

    Example: ``executed_paths(Path("figures/smol/notebooks/02_information_flow.ipynb"))[1].name`` ->
    ``"02_information_flow.FAILED.ipynb"``.
    """
    return dst.with_name(f".{dst.stem}.running.ipynb"), dst.with_name(f"{dst.stem}.FAILED.ipynb")


_MARK = "# NBVAL_CHECK_OUTPUT"


def _unmarked(source: str) -> str:
    """A cell's source without the nbval marker line (so marking a cell needs no rerun)."""
    return "\n".join(line for line in source.strip().splitlines() if line.strip() != _MARK)


def store_checked_outputs(model: str = "tiny", smoke: bool = False) -> list[str]:
    """Copy the outputs of the cells marked ``# NBVAL_CHECK_OUTPUT`` from the executed copies of the last
    run (``figures/<model>/notebooks/``, or with ``smoke`` the smoke run's ``figures/<model>--smoke/notebooks/``, what
    nbval's smoke-size notebooks compare against) into the source notebooks, which keep no other outputs.
    nbval compares those cells in ``make test``. Returns the notebooks changed."""
    import nbformat

    changed = []
    folder = figures_dir(model, create=False).parent / (f"{model_slug(model)}--smoke" if smoke else model_slug(model))
    for src in built_notebooks():
        executed = folder / "notebooks" / src.name
        if not executed.exists():
            continue
        nb, ex = nbformat.read(src, as_version=4), nbformat.read(executed, as_version=4)
        ex_by_source = {_unmarked(c.source): c for c in ex.cells if c.cell_type == "code"}
        touched = False
        for cell in nb.cells:
            if cell.cell_type == "code" and cell.source.lstrip().startswith(_MARK):
                done = ex_by_source.get(_unmarked(cell.source))
                if done is None:
                    raise ValueError(f"{display_path(executed)} has no cell matching a checked cell of {src.name}: "
                                     "rerun the chain")
                cell.outputs, cell.execution_count = done.outputs, 1
                touched = True
        if touched:
            nbformat.write(nb, src)
            changed.append(src.name)
    return changed
