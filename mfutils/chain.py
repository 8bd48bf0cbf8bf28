"""The notebook chain: run ``notebooks/NN_*.ipynb`` in order with papermill, say truthfully what ran.

Each notebook is executed with ``--cwd notebooks`` semantics and the parameters ``model`` and ``smoke``;
its executed copy goes to ``figures/<model>/notebooks/`` (never over the source). After the chain, the
claims report is written by ``mfutils.report`` when the analysis notebooks exist; until then the chain
says which parts of the study are not built yet.

Public API
----------
PLANNED                          the notebooks of the study in order, with what each shows
built_notebooks() -> list[Path]  the source notebooks present in notebooks/
describe_chain() -> str          built vs planned, one line each
run_chain(model, smoke, only) -> int   run the chain; returns a process exit code
kernel_name() -> str             the Jupyter kernel the chain uses
store_checked_outputs(model) -> list[str]   copy the outputs of ``# NBVAL_CHECK_OUTPUT`` cells from the
                                 executed copies into the source notebooks (after a deliberate change)

Example::

    run_chain(model="tiny", smoke=True)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Sequence

from .paths import figures_dir, notebooks_dir, repo_root

__all__ = ["PLANNED", "built_notebooks", "describe_chain", "run_chain", "kernel_name", "store_checked_outputs"]

PLANNED: tuple[tuple[str, str], ...] = (
    ("00_model", "the default model: its card and baseline modality-following ratios"),
    ("01_data_construction", "the synthetic world: samples, token groups, splits and checksums"),
    ("02_information_flow", "knockout sweep, saliency, LDAR, attention vs MLP (C1-C4, C10-C12)"),
    ("03_head_identification", "per-head scores, exhaustive vs attribution patching (C5)"),
    ("04_block_heads", "blocking the top 5% of heads vs random heads (C6, C9)"),
    ("05_amplification", "amplifying the identified heads on failed samples (C8)"),
    ("06_capability_retention", "general capability after blocking (C7)"),
    ("07_explorer", "interactive explorer (ipywidgets)"),
)


def _rel(p: Path) -> str:
    try:
        return str(p.relative_to(repo_root()))
    except ValueError:
        return str(p)


def built_notebooks() -> list[Path]:
    return sorted(p for p in notebooks_dir().glob("[0-9][0-9]_*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def describe_chain() -> str:
    built = {p.stem for p in built_notebooks()}
    lines = ["notebook chain (make reproduce):"]
    for stem, what in PLANNED:
        lines.append(f"  [{'built' if stem in built else 'NOT BUILT YET'}] {stem}: {what}")
    extra = sorted(built - {s for s, _ in PLANNED})
    lines += [f"  [built] {s}" for s in extra]
    return "\n".join(lines)


def kernel_name() -> str:
    """``mfutils`` (installed by ``make venv`` into the venv, absolute interpreter path) or ``python3``."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    return "mfutils" if "mfutils" in specs else "python3"


def run_chain(model: str = "tiny", smoke: bool = False, only: Sequence[str] | None = None) -> int:
    """Execute the built notebooks in order; stop at the first failure (its executed copy shows where)."""
    import papermill as pm

    nbs = built_notebooks()
    if only:
        nbs = [p for p in nbs if any(p.stem.startswith(o) for o in only)]
    out_dir = figures_dir(model) / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    print(describe_chain(), flush=True)
    kernel = kernel_name()
    timings: dict[str, float] = {}
    for nb in nbs:
        dst = out_dir / nb.name
        print(f"\n==> {nb.name}  (model={model}, smoke={smoke}, kernel={kernel}) -> {_rel(dst)}", flush=True)
        t0 = time.time()
        try:
            pm.execute_notebook(str(nb), str(dst), parameters={"model": model, "smoke": bool(smoke)},
                                kernel_name=kernel, cwd=str(notebooks_dir()), progress_bar=False,
                                log_output=False)
        except pm.PapermillExecutionError as exc:
            print(f"FAILED in {nb.name}: {exc.ename}: {exc.evalue}\n  see the executed copy {dst}", file=sys.stderr)
            return 1
        timings[nb.stem] = round(time.time() - t0, 1)
        print(f"    done in {timings[nb.stem]} s", flush=True)
    timings_path = out_dir / "chain_timings.json"
    if only and timings_path.exists():  # a partial rerun updates the timings of the notebooks it ran
        previous = json.loads(timings_path.read_text())
        if previous.get("smoke") == smoke:
            timings = {**previous["seconds"], **timings}
    timings_path.write_text(json.dumps({"model": model, "smoke": smoke, "seconds": timings}, indent=1))
    built = {p.stem for p in built_notebooks()}
    missing = [s for s, _ in PLANNED if s not in built]
    print(f"\nran {len(timings)} notebook(s) in {sum(timings.values()):.0f} s; executed copies in {_rel(out_dir)}")
    if missing:
        print("NOT BUILT YET (nothing was run or reported for them): " + ", ".join(missing))
    try:
        from .report import write_report
    except ImportError:
        print("paper/REPORT.md was NOT written: the claims report (mfutils.report) is not built yet.")
    else:
        path = write_report(model)
        print(f"wrote {_rel(path)}")
    return 0


_MARK = "# NBVAL_CHECK_OUTPUT"


def _unmarked(source: str) -> str:
    """A cell's source without the nbval marker line (so marking a cell needs no rerun)."""
    return "\n".join(line for line in source.strip().splitlines() if line.strip() != _MARK)


def store_checked_outputs(model: str = "tiny") -> list[str]:
    """Copy the outputs of the cells marked ``# NBVAL_CHECK_OUTPUT`` from the executed copies of the last
    full run (``figures/<model>/notebooks/``) into the source notebooks, which keep no other outputs.
    nbval compares those cells in ``make test``. Returns the notebooks changed."""
    import nbformat

    changed = []
    for src in built_notebooks():
        executed = figures_dir(model, create=False) / "notebooks" / src.name
        if not executed.exists():
            continue
        nb, ex = nbformat.read(src, as_version=4), nbformat.read(executed, as_version=4)
        ex_by_source = {_unmarked(c.source): c for c in ex.cells if c.cell_type == "code"}
        touched = False
        for cell in nb.cells:
            if cell.cell_type == "code" and cell.source.lstrip().startswith(_MARK):
                done = ex_by_source.get(_unmarked(cell.source))
                if done is None:
                    raise ValueError(f"{executed} has no cell matching a checked cell of {src.name}: rerun the chain")
                cell.outputs, cell.execution_count = done.outputs, 1
                touched = True
        if touched:
            nbformat.write(nb, src)
            changed.append(src.name)
    return changed
