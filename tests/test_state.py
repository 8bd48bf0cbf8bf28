"""The chain's records (mfutils.run.state) and printed paths (core.paths.display_path), without running the chain."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nbformat
import pytest

from mfutils.core.paths import display_path, figures_dir, repo_root, results_dir
from mfutils.run import state


@pytest.fixture
def out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MF_OUT", str(tmp_path))
    return tmp_path


def _strings(x: Any) -> list[str]:
    if isinstance(x, str):
        return [x]
    if isinstance(x, dict):
        return [s for v in x.values() for s in _strings(v)]
    if isinstance(x, list):
        return [s for v in x for s in _strings(v)]
    return []


def test_display_path_is_relative_under_the_output_root_or_the_repository(out: Path) -> None:
    assert display_path(results_dir("tiny") / "x.json") == os.path.join("results", "tiny", "x.json")
    assert display_path(repo_root() / "checkpoints" / "tiny-llava") == os.path.join("checkpoints", "tiny-llava")
    assert display_path("/somewhere/else/x.json") == "/somewhere/else/x.json"       # outside both: as given
    assert display_path("notebooks/00_model.ipynb") == "notebooks/00_model.ipynb"   # already relative


def _executed_notebook(out: Path) -> Path:
    """An executed copy as papermill leaves it: absolute input and output paths in its metadata."""
    src = repo_root() / "notebooks" / "03_head_identification.ipynb"
    dst = figures_dir("tiny") / "notebooks" / src.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell("print(1)", metadata={"papermill": {"status": "completed"},
                                                                   "tags": ["parameters"]})]
    book.metadata["papermill"] = {"input_path": str(src), "output_path": str(dst), "parameters": {"model": "tiny"},
                                  "environment_variables": {}, "exception": None}
    nbformat.write(book, dst)
    return dst


def test_executed_notebook_metadata_holds_no_absolute_path(out: Path) -> None:
    dst = _executed_notebook(out)
    res = results_dir("tiny") / "03_head_identification.json"
    res.write_text(json.dumps({"k": 3}))
    provenance = {"notebook": dst.name, "model": state.model_identity("tiny"), "dataset": None,
                  "parameters": {"model": "tiny", "manifest": str(res)}}
    state.stamp_outputs([res], provenance, dst)
    book = nbformat.read(dst, as_version=4)
    assert book.metadata["papermill"]["input_path"] == os.path.join("notebooks", "03_head_identification.ipynb")
    assert book.metadata["papermill"]["output_path"] == os.path.join("figures", "tiny", "notebooks", dst.name)
    assert book.metadata["mfutils"]["model"]["path"] == os.path.join("checkpoints", "tiny-llava")
    absolute = [s for s in _strings(book.metadata) + _strings([c.metadata for c in book.cells]) if os.path.isabs(s)]
    assert absolute == [], absolute
    assert book.cells[0].metadata["tags"] == ["parameters"] and book.cells[0].source == "print(1)"
    assert json.loads(res.read_text())["provenance"]["notebook"] == dst.name       # the results file is stamped


def test_a_failed_notebook_gets_relative_metadata_too(out: Path) -> None:
    dst = _executed_notebook(out)
    state.relative_metadata(dst)
    meta = nbformat.read(dst, as_version=4).metadata
    assert not any(os.path.isabs(s) for s in _strings(meta)) and "mfutils" not in meta


def test_widgets_are_interactive_code() -> None:
    pkg = Path(state.__file__).resolve().parents[1]
    assert (pkg / "present" / "widgets").is_dir() and list((pkg / "present" / "widgets").glob("*.py"))
    assert state.code_fingerprint() != state.code_fingerprint(state.INTERACTIVE_MODULES)
    assert state.interactive_uses(repo_root() / "notebooks" / "07_explorer.ipynb") == ["present/widgets"]
    assert state.interactive_uses(repo_root() / "notebooks" / "03_head_identification.ipynb") == []


def test_fingerprint_changes_with_each_input() -> None:
    nb = repo_root() / "notebooks" / "03_head_identification.ipynb"
    ident = {"name": "tiny", "weights": {"model.safetensors": "0" * 64}}
    fp, parts = state.fingerprint(nb, {"model": "tiny"}, ident, previous="")
    assert set(parts) == {"source", "params", "files", "code", "model", "previous"}
    assert state.fingerprint(nb, {"model": "tiny"}, ident, previous="") == (fp, parts)
    assert state.fingerprint(nb, {"model": "tiny", "smoke": True}, ident, previous="")[0] != fp
    assert state.fingerprint(nb, {"model": "tiny"}, ident, previous="x")[0] != fp
