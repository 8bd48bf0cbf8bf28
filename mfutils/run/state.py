"""The chain's records: notebook fingerprints, the resume state, output hashes and provenance stamps.

A notebook's *fingerprint* hashes its source cells, its parameters, the files those parameters name, the
mfutils source code, the model's weights and the fingerprint of the notebook before it. The chain
(``mfutils.run.chain``) skips a notebook only when its fingerprint is unchanged and every output recorded in
``results/<model>/chain_state.json`` is present with the same sha256. Paths in every record and stamp are
relative to the output root (``mfutils.core.paths.display_path``), so they read the same on every clone.

Public API
----------
STATE_FILE, PROVENANCE_FILE          the chain's bookkeeping files in results/<model>/
INTERACTIVE_MODULES                  mfutils paths (no ".py"; a folder counts with all under it) that compute no
                                     results: they enter the code hash only of the notebooks that import them
fingerprint(nb, params, identity, previous) -> (fp, parts)   a notebook's fingerprint and its parts' hashes
code_fingerprint(include=()) -> str  hash of the mfutils sources (interactive modules only where included)
interactive_uses(nb) -> list[str]    the interactive modules a notebook imports
model_identity(model) -> dict        the model's name, folder and weights sha256 (or how it was built)
dataset_identity(model) -> dict | None   the split manifest's dataset, version and per-split checksums
strip_provenance(doc) -> doc         a results document without its provenance block (for comparisons)
snapshot(dirs) -> {Path: (mtime_ns, size)}   the output files under ``dirs`` (bookkeeping excluded)
new_state(model) / read_state(path, model) -> dict   the resume record (a fresh one if absent or stale)
outputs_intact(record) -> (bool, reason)   every recorded output present with its sha256
stamp_outputs(outputs, provenance, executed)   provenance into JSON results and the executed notebook
relative_metadata(executed)          the executed notebook's metadata with repository-relative paths
write_provenance_index(res_dir, state, identity, env)   results/<model>/PROVENANCE.json

Example::

    fp, parts = fingerprint(Path("notebooks/03_head_identification.ipynb"), {"model": "tiny"},
                            model_identity("tiny"), previous="")
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mfutils.core.paths import atomic_write_text, display_path, output_root, results_dir
from mfutils.core.provenance import sha256_file

__all__ = ["STATE_FILE", "PROVENANCE_FILE", "BOOKKEEPING", "INTERACTIVE_MODULES", "fingerprint", "code_fingerprint",
           "interactive_uses", "model_identity", "dataset_identity", "strip_provenance", "snapshot", "new_state",
           "read_state", "outputs_intact", "stamp_outputs", "relative_metadata", "write_provenance_index"]

STATE_FILE = "chain_state.json"
PROVENANCE_FILE = "PROVENANCE.json"
_STATE_VERSION = 1
# Files of the output folders that are the chain's own bookkeeping, never a notebook's output.
BOOKKEEPING = frozenset({STATE_FILE, PROVENANCE_FILE, "chain_timings.json"})

# Modules that compute nothing a results file holds (paths inside mfutils, without ".py"; a folder counts
# with everything under it): they count only for the notebooks that use them.
INTERACTIVE_MODULES = ("present/widgets",)


# ------------------------------------------------------------------------------------------------
# Fingerprints
# ------------------------------------------------------------------------------------------------
def _source_fingerprint(nb: Path) -> str:
    """Hash of the code and markdown sources of ``nb`` (outputs and execution counts ignored)."""
    import nbformat

    book = nbformat.read(nb, as_version=4)
    h = hashlib.sha256()
    for cell in book.cells:
        h.update(cell.cell_type.encode())
        h.update(b"\0")
        h.update(cell.source.encode())
        h.update(b"\0")
        h.update(json.dumps(sorted(cell.get("metadata", {}).get("tags", []))).encode())
    return h.hexdigest()


def _is_under(rel: str, prefix: str) -> bool:
    return rel == f"{prefix}.py" or rel.startswith(f"{prefix}/")


def code_fingerprint(include: Sequence[str] = ()) -> str:
    """Hash of the mfutils package sources: a change in the code that computes results invalidates them.
    The interactive modules (``INTERACTIVE_MODULES``) count only where ``include`` names them."""
    h = hashlib.sha256()
    pkg = Path(__file__).resolve().parents[1]
    for p in sorted(pkg.rglob("*.py")):
        rel = p.relative_to(pkg).as_posix()
        if any(_is_under(rel, m) and m not in include for m in INTERACTIVE_MODULES):
            continue
        h.update(rel.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def interactive_uses(nb: Path) -> list[str]:
    """The ``INTERACTIVE_MODULES`` whose import path (or module name after ``import``) occurs in ``nb``."""
    text = nb.read_text()
    return [m for m in INTERACTIVE_MODULES
            if f"mfutils.{m.replace('/', '.')}" in text or f"import {m.rsplit('/', 1)[-1]}" in text]


def _parameter_files(params: Mapping[str, Any]) -> dict[str, str]:
    """sha256 of every parameter that names a file (e.g. ``mc2_json``): a changed file at the same path is a
    changed input. Folders (``coco_root``) are not hashed; their files are checked by the notebooks."""
    out = {}
    for name, value in sorted(params.items()):
        if isinstance(value, str) and value and Path(value).expanduser().is_file():
            out[name] = sha256_file(Path(value).expanduser())
    return out


def fingerprint(nb: Path, params: Mapping[str, Any], identity: Mapping[str, Any],
                previous: str) -> tuple[str, dict[str, str]]:
    """``(fingerprint, {part: sha256})`` of notebook ``nb`` run with ``params`` on the model ``identity``,
    after a notebook whose fingerprint was ``previous``. Parts: source, params, files, code, model, previous."""
    inputs = {"source": _source_fingerprint(nb), "params": dict(params), "files": _parameter_files(params),
              "code": code_fingerprint(interactive_uses(nb)), "model": dict(identity), "previous": previous}
    parts = {k: hashlib.sha256(json.dumps(v, sort_keys=True, default=str).encode()).hexdigest()
             for k, v in inputs.items()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(), parts


# ------------------------------------------------------------------------------------------------
# Identities
# ------------------------------------------------------------------------------------------------
def model_identity(model: str) -> dict[str, Any]:
    """What a result was computed with: ``{"name", "path", "weights": {file: sha256}}`` for a checkpoint
    folder, ``{"name", "built": ...}`` for a random model (no file). Never loads the model.

    Example::

        model_identity("tiny")["weights"]["model.safetensors"][:12]
    """
    if model.startswith("random:"):
        return {"name": model, "built": "random initialisation, seed 0, in mfutils.model.loading.random_model (no file)"}
    from mfutils.model.loading import resolve_model_path as _resolve_path  # load_model's resolution (never downloads)

    path = _resolve_path(model)
    weights = {p.name: sha256_file(p) for p in sorted(path.glob("*.safetensors"))} or \
              {p.name: sha256_file(p) for p in sorted(path.glob("*.bin"))}
    return {"name": model, "path": display_path(path), "weights": weights}  # relative: the same on every clone


def dataset_identity(model: str) -> dict[str, Any] | None:
    """The split manifest of notebook 01 for ``model``: file, dataset, version, per-split n / seed / sha256
    (and MC2's file, images and filter); None before notebook 01 ran."""
    path = results_dir(model, create=False) / "data_manifest.json"
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    splits = manifest.get("splits", {})
    ident = {"manifest": display_path(path), "dataset": manifest.get("dataset", "world"),
             "dataset_version": manifest.get("dataset_version"),
             "splits": {k: {kk: v.get(kk) for kk in ("n", "seed", "sha256") if kk in v} for k, v in splits.items()}}
    for key in ("mc2_json", "mc2_sha256", "coco_root", "form", "filtered_for"):  # MC2: the file, images, filter
        if key in manifest:
            ident[key] = manifest[key]
    return ident


def strip_provenance(doc: Any) -> Any:
    """``doc`` without its top-level ``"provenance"`` block (what differs between two identical runs)."""
    if isinstance(doc, dict):
        return {k: v for k, v in doc.items() if k != "provenance"}
    return doc


# ------------------------------------------------------------------------------------------------
# Outputs and the resume record
# ------------------------------------------------------------------------------------------------
def snapshot(dirs: Sequence[Path]) -> dict[Path, tuple[int, int]]:
    """``{file: (mtime_ns, size)}`` under ``dirs``, bookkeeping and half-written (``.partial``) files excluded."""
    snap: dict[Path, tuple[int, int]] = {}
    for d in dirs:
        if d.exists():
            for p in d.rglob("*"):
                if p.is_file() and p.name not in BOOKKEEPING and ".partial" not in p.name:
                    st = p.stat()
                    snap[p] = (st.st_mtime_ns, st.st_size)
    return snap


def new_state(model: str) -> dict[str, Any]:
    """An empty resume record for ``model``."""
    return {"version": _STATE_VERSION, "model": model, "notebooks": {}}


def read_state(path: Path, model: str) -> dict[str, Any]:
    """The resume record at ``path``; a fresh one when it is missing, unreadable, of another version or model."""
    if path.exists():
        try:
            state = json.loads(path.read_text())
            if state.get("version") == _STATE_VERSION and state.get("model") == model:
                return state
        except json.JSONDecodeError:
            pass
    return new_state(model)


def outputs_intact(record: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether every output of a notebook's record exists under the output root with its recorded sha256."""
    root = output_root()
    for rel, sha in record.get("outputs", {}).items():
        p = root / rel
        if not p.exists():
            return False, f"output {rel} is missing"
        if sha256_file(p) != sha:
            return False, f"output {rel} changed since it was written"
    return True, ""


def _relative(x: Any) -> Any:
    """``x`` with every string that is an absolute path under the output root or the repository made relative."""
    if isinstance(x, str):
        return display_path(x) if os.path.isabs(x) else x
    if isinstance(x, Mapping):
        return {k: _relative(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_relative(v) for v in x]
    return x


def _write_notebook(executed: Path, provenance: Mapping[str, Any] | None) -> None:
    import nbformat

    book = nbformat.read(executed, as_version=4)
    if provenance is not None:
        book.metadata["mfutils"] = dict(provenance)
    book.metadata = nbformat.from_dict(_relative(book.metadata))    # papermill's input_path / output_path
    for cell in book.cells:
        cell.metadata = nbformat.from_dict(_relative(cell.metadata))
    atomic_write_text(executed, nbformat.writes(book))


def relative_metadata(executed: Path) -> None:
    """Rewrite the executed notebook so that no path in its metadata (notebook or cells) is absolute when it
    lies under the output root or the repository (papermill records ``input_path`` / ``output_path``
    absolute): the executed copies are read on a web page, where this machine's folders mean nothing."""
    if executed.exists():
        _write_notebook(executed, None)


def stamp_outputs(outputs: Sequence[Path], provenance: Mapping[str, Any], executed: Path) -> None:
    """Add the provenance block to JSON results (atomically) and to the executed notebook's metadata (whose
    paths are made relative, see ``relative_metadata``)."""
    for p in outputs:
        if p.suffix == ".json" and p.name not in BOOKKEEPING:
            try:
                doc = json.loads(p.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(doc, dict):
                doc["provenance"] = dict(provenance)
                atomic_write_text(p, json.dumps(doc, indent=1, allow_nan=False))
    if executed.exists():
        _write_notebook(executed, provenance)


def write_provenance_index(res_dir: Path, state: Mapping[str, Any], identity: Mapping[str, Any],
                           env: Mapping[str, Any]) -> None:
    """``res_dir/PROVENANCE.json``: every recorded output with its sha256 and notebook, the model, the code."""
    files = {rel: {"sha256": sha, "notebook": stem}
             for stem, rec in state["notebooks"].items() for rel, sha in rec.get("outputs", {}).items()}
    doc = {"model": identity, "git_commit": env["git_commit"], "packages": env["packages"],
           "notebooks": {stem: {"finished": rec.get("finished"), "wall_s": rec.get("wall_s")}
                         for stem, rec in state["notebooks"].items()},
           "files": dict(sorted(files.items()))}
    atomic_write_text(res_dir / PROVENANCE_FILE, json.dumps(doc, indent=1))
