"""The notebook chain: run ``notebooks/NN_*.ipynb`` in order with papermill; resumable, checked, traceable.

Each notebook is executed with ``--cwd notebooks`` semantics and the chain's parameters (``model``, ``smoke``
and any ``-p name=value``); its executed copy goes to ``figures/<model>/notebooks/`` (never over the source).

Resuming. After a notebook finishes, the chain records in ``results/<model>/chain_state.json`` the
notebook's *fingerprint* (a hash of its source cells, its parameters, the mfutils source code, the model's
weights and the fingerprint of the notebook before it; ``mfutils.run.state``) and the sha256 of every file it
wrote. A later run
skips a notebook only when its fingerprint is unchanged and every recorded output is present with the same
hash; from the first notebook that must run, every later notebook runs too. Before a notebook starts, its
record and those after it are removed, so a run killed half-way never leaves a record that vouches for
half-written outputs (the results themselves are written atomically by ``mfutils.core.paths.atomic_output``).
``force=True`` (``make reproduce FORCE=1``) recomputes everything.

Provenance. Every JSON results file a notebook writes gets a ``"provenance"`` block (git commit, package
versions, model path and weights sha256, dataset checksums, parameters, the notebook, its wall time), and
the executed notebook gets the same under ``metadata.mfutils``. ``results/<model>/PROVENANCE.json`` lists
every output file (JSON or not) with its sha256 and the notebook that wrote it. Comparing two runs for
determinism means comparing results with their ``provenance`` blocks removed (``state.strip_provenance``).
Paths that the chain prints or records are relative to the output root (``mfutils.core.paths.display_path``),
in the executed notebooks' metadata too.

Public API
----------
PLANNED                              the notebooks of the study in order, with what each shows
built_notebooks() -> list[Path]      the source notebooks present in notebooks/
describe_chain(model, dataset, mc2_json) -> str   built vs planned, one line each, for the data in use
notebook_parameters(nb) -> dict      the notebook's parameters: name -> (type name, default, help)
check_parameters(params, nbs)        raise ChainParameterError for an unknown name, a value of the wrong type
                                     or a number out of range (``mfutils.run.args.parameter_problem``)
parse_parameter(text) -> (name, value)   ``"n_test=200"`` -> ``("n_test", 200)`` (Python literals; else a string)
run_chain(model, smoke, only, force, params) -> int   run the chain; returns a process exit code
kernel_name() -> str                 the Jupyter kernel the chain uses

Example::

    run_chain(model="tiny", smoke=True)                 # resumes where a killed run stopped
    run_chain(model="tiny", params={"n_test": 200}, force=True)
"""

from __future__ import annotations

import ast
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mfutils.core import processes as group
from mfutils.core.paths import (RUN_ENV, atomic_write_text, display_path, figures_dir, notebooks_dir,
                                 results_dir, run_key)
from mfutils.run import state as records
from mfutils.run.args import parameter_problem
from mfutils.run.outputs import built_notebooks, executed_paths, run_key_for
from mfutils.run.parallel import primary_error

__all__ = ["PLANNED", "built_notebooks", "describe_chain", "run_chain", "kernel_name", "store_checked_outputs",
           "notebook_parameters", "check_parameters", "parse_parameter", "ChainParameterError"]

PLANNED: tuple[tuple[str, str], ...] = (
    ("00_model", "the default model: its card and baseline modality-following ratios"),
    ("01_data_construction", "the synthetic world: samples, token groups, splits and checksums"),
    ("02_information_flow", "knockout sweep, saliency, LDAR, attention vs MLP (C1-C4, C10-C12)"),
    ("03_head_identification", "per-head scores, exhaustive vs attribution patching (C5)"),
    ("04_block_heads", "blocking the top 5% of heads vs random heads (C6, C9)"),
    ("05_amplification", "amplifying the identified heads on failed samples (C8)"),
    ("06_capability_retention", "general capability after blocking (C7)"),
    ("07_explorer", "interactive explorer (ipywidgets): sample browser, knockout explorer, head board, attention "
                    "view; writes no results"),
    ("08_instruction_position", "where the instruction stands: MFR per position, twins, knockout and heads per "
                                "position, failures of the shifted position (C14; C10 and C6/C9 there)"),
)

class ChainParameterError(ValueError):
    """A chain parameter that no notebook takes, or a value of the wrong type."""


# What notebooks 00 and 01 show with dataset="mc2" (the others' lines do not name a dataset)
_MC2_LINES = {
    "00_model": "the model {model}: modality-following ratios on MC2 ({file}) and its image-only and text-only "
                "accuracy",
    "01_data_construction": "MC2 records ({file}): token groups, the per-model filter, splits and checksums (the "
                            "synthetic world's gallery for reference)",
}


def describe_chain(model: str | None = None, dataset: str = "world", mc2_json: str = "") -> str:
    """The chain, one line per notebook, built or not, describing the data in use: the synthetic world, or
    ``dataset="mc2"`` (file ``mc2_json``) for notebooks 00 and 01.

    Example: ``print(describe_chain("tiny", "mc2", "/data/evaluate_final.json"))``
    """
    built = {p.stem for p in built_notebooks()}
    lines = ["notebook chain (make reproduce)" + (f", dataset MC2 ({Path(mc2_json).name or 'no file given'})"
                                                  if dataset == "mc2" else "") + ":"]
    for stem, what in PLANNED:
        if stem == "00_model" and model is not None and dataset != "mc2":
            what = what.replace("the default model", f"the model {model}")
        if dataset == "mc2" and stem in _MC2_LINES:
            what = _MC2_LINES[stem].format(model=model or "in use", file=Path(mc2_json).name or "no file given")
        lines.append(f"  [{'built' if stem in built else 'NOT BUILT YET'}] {stem}: {what}")
    extra = sorted(built - {s for s, _ in PLANNED})
    lines += [f"  [built] {s}" for s in extra]
    return "\n".join(lines)


def kernel_name() -> str:
    """``mfutils`` (installed by ``make venv`` into the venv, absolute interpreter path) or ``python3``."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    return "mfutils" if "mfutils" in specs else "python3"


# ------------------------------------------------------------------------------------------------
# Parameters
# ------------------------------------------------------------------------------------------------
def notebook_parameters(nb: Path) -> dict[str, dict[str, str]]:
    """The ``parameters`` cell of ``nb``: name -> {"type": inferred type name, "default": ..., "help": ...}.

    Example::

        notebook_parameters(Path("notebooks/03_head_identification.ipynb"))["share"]["type"]   # 'float'
    """
    import papermill as pm

    return {name: {"type": str(p.get("inferred_type_name", "None")), "default": str(p.get("default", "")),
                   "help": str(p.get("help", ""))} for name, p in pm.inspect_notebook(str(nb)).items()}


def _type_ok(value: Any, type_name: str) -> bool:
    t = type_name.replace(" ", "")
    if t in ("None", "", "Any"):
        return True
    options = [o for o in t.replace("Optional[", "").rstrip("]").split("|")] if "|" in t or "Optional" in t else [t]
    for o in options:
        if o == "None" and value is None:
            return True
        if o == "bool" and isinstance(value, bool):
            return True
        if o == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if o == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if o == "str" and isinstance(value, str):
            return True
        if o.startswith(("list", "tuple")) and isinstance(value, (list, tuple)):
            return True
        if o.startswith("dict") and isinstance(value, dict):
            return True
    return False


def check_parameters(params: Mapping[str, Any], notebooks: Sequence[Path]) -> None:
    """Raise ``ChainParameterError`` if a parameter is taken by no notebook of ``notebooks`` or has a value
    whose type differs from the type hint of the ``parameters`` cell of a notebook that takes it, or a number
    out of range (a count below 1, a negative seed, a share outside (0, 1]: ``mfutils.run.args``).

    Example::

        check_parameters({"share": "big"}, built_notebooks())   # ChainParameterError naming share and float
    """
    known: dict[str, list[tuple[str, str]]] = {}
    for nb in notebooks:
        for name, p in notebook_parameters(nb).items():
            known.setdefault(name, []).append((nb.stem, p["type"]))
    for name, value in params.items():
        if name not in known:
            raise ChainParameterError(
                f"no notebook of the chain takes a parameter {name!r}. Known parameters: {', '.join(sorted(known))} "
                "(see `papermill --help-notebook notebooks/<notebook>.ipynb`)")
        for stem, type_name in known[name]:
            if not _type_ok(value, type_name):
                raise ChainParameterError(
                    f"parameter {name}={value!r} is a {type(value).__name__}, but notebook {stem} declares "
                    f"{name}: {type_name}. Pass a {type_name}, e.g. -p {name}=<{type_name} literal> "
                    "(strings need no quotes; numbers and True/False are read as Python literals)")
        problem = parameter_problem(name, value)   # a count below 1, a negative seed, a share outside (0, 1], ...
        if problem:
            raise ChainParameterError(problem)


def parse_parameter(text: str) -> tuple[str, Any]:
    """``"name=value"`` -> ``(name, value)``; the value is a Python literal when it parses as one, else a string.

    Example::

        parse_parameter("share=0.1")   # ('share', 0.1)
    """
    if "=" not in text:
        raise ChainParameterError(f"parameter {text!r} must look like name=value, e.g. -p share=0.1")
    name, raw = text.split("=", 1)
    name = name.strip()
    if not name.isidentifier():
        raise ChainParameterError(f"parameter name {name!r} in {text!r} is not a valid Python name")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return name, value


# ------------------------------------------------------------------------------------------------
# The chain
# ------------------------------------------------------------------------------------------------
def run_chain(model: str = "smol", smoke: bool = False, only: Sequence[str] | None = None, force: bool = False,
              params: Mapping[str, Any] | None = None) -> int:
    """Execute the built notebooks in order, skipping those whose inputs and outputs are unchanged since
    their last complete run (unless ``force``); stop at the first failure (its executed copy shows where).

    ``only``: notebook name prefixes to run (others are neither run nor skipped-checked). ``params``: extra
    papermill parameters, checked against each notebook's ``parameters`` cell before anything runs; they
    override the model's profile (``mfutils.run.profiles``), which overrides the notebooks' defaults.

    In a group of processes (started by ``mf reproduce --processes N``, torchrun or ``accelerate launch``;
    ``mfutils.run.parallel``), rank 0 decides what runs and writes everything; every rank executes each
    notebook that runs in its own kernel, one rank of a group per notebook, and the analyses spread their
    batches over those kernels. A failure in any rank ends the run with that rank's error.
    """
    key = run_key_for(smoke, params or {})
    saved = os.environ.get(RUN_ENV)
    os.environ[RUN_ENV] = key              # this runner and every kernel it starts write under output_name(model)
    try:
        return _run_chain(model, smoke, only, force, params)
    finally:
        if saved is None:
            os.environ.pop(RUN_ENV, None)
        else:
            os.environ[RUN_ENV] = saved


def _run_chain(model: str, smoke: bool, only: Sequence[str] | None, force: bool,
               params: Mapping[str, Any] | None) -> int:
    if group.world().size > 1:
        group.coordinate_only()           # the runners' group carries orders; only the kernels run in lockstep
    if group.world().size > 1 and not group.is_main():
        return _follow_chain()
    try:
        rc = _lead_chain(model, smoke, only, force, params)
    except BaseException:
        _tell_followers({"end": 1})
        raise
    _tell_followers({"end": rc})
    return rc


def _tell_followers(order: dict[str, Any]) -> list[dict[str, Any]]:
    """Rank 0: send ``order`` (a notebook to run, or {"end": exit code}) to every rank; alone: nothing."""
    if group.world().size == 1:
        return []
    return group.gather_items([order])


def _run_notebook(nb: Path, dst: Path, params: Mapping[str, Any], kernel: str, port: int | None) -> dict[str, Any]:
    """Execute ``nb`` into ``dst`` (papermill); in a group, its kernel is this rank of a new group at ``port``.
    Returns {"ok", "rank", "ename", "evalue", "secondary"} (secondary: the error says only that a peer failed)."""
    import papermill as pm

    saved = dict(os.environ)
    if port is not None:
        from mfutils.run.parallel import kernel_env

        env = kernel_env(port)
        os.environ.clear()
        os.environ.update(env)
    try:
        pm.execute_notebook(str(nb), str(dst), parameters=dict(params), kernel_name=kernel,
                            cwd=str(notebooks_dir()), progress_bar=False, log_output=False)
        return {"ok": True, "rank": group.world().rank}
    except pm.PapermillExecutionError as exc:
        return {"ok": False, "rank": group.world().rank, "ename": exc.ename, "evalue": exc.evalue,
                "secondary": exc.ename == "ProcessGroupError"}
    finally:
        if port is not None:
            os.environ.clear()
            os.environ.update(saved)


def _follow_chain() -> int:
    """Rank > 0: run each notebook rank 0 sends, in a scratch folder, until it says the chain ends."""
    import tempfile

    kernel = kernel_name()
    with tempfile.TemporaryDirectory(prefix=f"mf-rank{group.world().rank}-") as scratch:
        while True:
            order = group.gather_items([None])[0]
            if "end" in order:
                return int(order["end"])
            nb = Path(order["notebook"])
            status = _run_notebook(nb, Path(scratch) / nb.name, order["params"], kernel, order["port"])
            group.gather_items([status])


def _lead_chain(model: str, smoke: bool, only: Sequence[str] | None, force: bool,
                params: Mapping[str, Any] | None) -> int:
    """The chain in rank 0 (or alone): see ``run_chain``."""
    from mfutils.core.provenance import environment, sha256_file

    nbs = built_notebooks()
    if only:
        nbs = [p for p in nbs if any(p.stem.startswith(o) for o in only)]
    from mfutils.run.profiles import profile

    parameters: dict[str, Any] = {"model": model, "smoke": bool(smoke), **dict(params or {})}
    check_parameters(parameters, nbs)
    known = {name for nb in nbs for name in notebook_parameters(nb)}
    parameters = {**{k: v for k, v in profile(model).items() if k in known}, **parameters}
    identity = records.model_identity(model)  # fails early, with the fix, for an unknown or missing model
    fig_dir, res_dir = figures_dir(model), results_dir(model)
    out_dir = fig_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = res_dir / records.STATE_FILE
    state = records.new_state(model) if force else records.read_state(state_path, model)
    print(describe_chain(model, str(parameters.get("dataset", "world")), str(parameters.get("mc2_json", ""))),
          flush=True)
    if run_key():
        print(f"outputs: {display_path(fig_dir)}/ and {display_path(res_dir)}/ (not the shipped model's folders: this "
              f"run is {run_key()!r})", flush=True)
    kernel = kernel_name()
    env = environment()
    n_proc = group.world().size
    timings: dict[str, float] = {}
    previous_fp = ""
    must_run = bool(force)
    skipped: list[str] = []
    for nb in nbs:
        dst = out_dir / nb.name
        nb_params = {k: v for k, v in parameters.items() if k in notebook_parameters(nb)}
        fp, parts = records.fingerprint(nb, nb_params, identity, previous_fp)
        previous_fp = fp
        record = state["notebooks"].get(nb.stem)
        if not must_run:
            if record is None:
                reason = "no record of a complete run"
            elif record.get("fingerprint") != fp:
                names = {"source": "its source cells", "params": "its parameters", "code": "the mfutils code",
                         "files": "a data file named by a parameter",
                         "model": "the model", "previous": "an earlier notebook's inputs"}
                changed = [names[k] for k, v in parts.items() if record.get("inputs", {}).get(k) != v]
                reason = " and ".join(changed or ["its inputs"]) + " changed"
            else:
                ok, reason = records.outputs_intact(record)
                if ok:
                    skipped.append(nb.stem)
                    print(f"\n--  {nb.name}: SKIPPED, unchanged since its complete run of "
                          f"{record.get('finished', '?')} ({len(record.get('outputs', {}))} outputs verified by sha256)",
                          flush=True)
                    continue
            must_run = True
            print(f"\n    resuming at {nb.name}: {reason}", flush=True)
        # invalidate this notebook's record and every later one before running it
        stems = [p.stem for p in nbs]
        for later in stems[stems.index(nb.stem):]:
            state["notebooks"].pop(later, None)
        atomic_write_text(state_path, json.dumps(state, indent=1))

        where = f", processes={n_proc}" if n_proc > 1 else ""
        print(f"\n==> {nb.name}  (model={model}, smoke={smoke}, kernel={kernel}{where}) -> {display_path(dst)}",
              flush=True)
        before = records.snapshot([fig_dir, res_dir])
        t0 = time.time()
        port = None
        if n_proc > 1:
            from mfutils.run.parallel import free_port

            port = int(os.environ.get("MF_KERNEL_PORT") or free_port())
            _tell_followers({"notebook": str(nb), "params": nb_params, "port": port})
        # executed into a temporary sibling: the copy a reader opens is replaced only by a complete run
        running, failed_copy = executed_paths(dst)
        statuses = [_run_notebook(nb, running, nb_params, kernel, port)]
        if n_proc > 1:
            statuses = group.gather_items(statuses)
        failed = primary_error([s for s in statuses if not s["ok"]])     # the failure that started it
        if failed is not None:
            if running.exists():
                os.replace(running, failed_copy)
                records.relative_metadata(failed_copy)
            rank = f" (process {failed['rank']} of {n_proc})" if n_proc > 1 else ""
            kept = (f"; the last complete run's copy {display_path(dst)} is unchanged" if dst.exists() else "")
            copy = (f"see the failed run's executed copy {display_path(failed_copy)}{kept}" if failed["rank"] == 0 else
                    f"process {failed['rank']}'s executed copy is not kept; {display_path(failed_copy)} shows process 0's")
            print(f"FAILED in {nb.name}{rank}: {failed['ename']}: {failed['evalue']}\n  {copy}", file=sys.stderr)
            return 1
        os.replace(running, dst)
        failed_copy.unlink(missing_ok=True)          # an earlier failure of this notebook is superseded
        wall = round(time.time() - t0, 1)
        timings[nb.stem] = wall
        after = records.snapshot([fig_dir, res_dir])
        outputs = sorted(p for p, sig in after.items() if before.get(p) != sig)
        provenance = {"notebook": nb.name, "parameters": nb_params, "model": identity,
                      "dataset": records.dataset_identity(model), "git_commit": env["git_commit"],
                      "packages": env["packages"], "python": env["python"], "platform": env["platform"],
                      "torch_threads": env["torch_threads"], "processes": n_proc, "wall_s": wall,
                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        records.stamp_outputs(outputs, provenance, dst)
        state["notebooks"][nb.stem] = {"fingerprint": fp, "inputs": parts, "finished": provenance["finished"], "wall_s": wall,
                                       "outputs": {display_path(p): sha256_file(p) for p in outputs if p.exists()}}
        atomic_write_text(state_path, json.dumps(state, indent=1))
        _write_timings(out_dir / "chain_timings.json", model, smoke, {nb.stem: wall})
        print(f"    done in {wall} s ({len(outputs)} files written)", flush=True)

    records.write_provenance_index(res_dir, state, identity, env)
    _write_timings(out_dir / "chain_timings.json", model, smoke, timings)
    built = {p.stem for p in built_notebooks()}
    missing = [s for s, _ in PLANNED if s not in built]
    ran = len(nbs) - len(skipped)
    print(f"\nran {ran} notebook(s), skipped {len(skipped)} unchanged"
          + (f" ({', '.join(skipped)}; make reproduce FORCE=1 recomputes them)" if skipped else "")
          + f"; executed copies in {display_path(out_dir)}")
    if missing:
        print("NOT BUILT YET (nothing was run or reported for them): " + ", ".join(missing))
    from mfutils.present.report import write_report

    path = write_report(model)
    print(f"wrote {display_path(path)}")
    return 0


def _write_timings(path: Path, model: str, smoke: bool, seconds: dict[str, float]) -> None:
    """Merge ``seconds`` into the chain's timings file, after every notebook: a run that stops half-way, then
    resumes, keeps the times of the notebooks it finished (a run of the other size starts the file afresh)."""
    previous = json.loads(path.read_text()) if path.exists() else {}
    kept = previous.get("seconds", {}) if previous.get("smoke") == smoke else {}
    atomic_write_text(path, json.dumps({"model": model, "smoke": smoke, "seconds": {**kept, **seconds}}, indent=1))
