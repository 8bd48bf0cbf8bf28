"""A failed notebook never replaces the executed copy of the last complete run, nor any results file it did not
write: it is kept beside as ``<stem>.FAILED.ipynb``, and a later complete run removes that copy."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import fake_repo
from mfutils.run.outputs import executed_paths

ROOT = Path(__file__).resolve().parents[1]

NOTEBOOK = {
    "cells": [
        {"cell_type": "code", "id": "params", "metadata": {"tags": ["parameters"]}, "execution_count": None,
         "outputs": [], "source": "model: str = 'tiny'\nsmoke: bool = False"},
        {"cell_type": "code", "id": "work", "metadata": {}, "execution_count": None, "outputs": [],
         "source": "import os\nfrom mfutils.study.results import write_results\n"
                   "assert os.environ.get('MF_TEST_FAIL') != '1', 'this run fails on purpose'\n"
                   "print('complete run')\n"
                   "write_results({'x': 1}, model, 'doc')"},
    ],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_executed_paths() -> None:
    running, failed = executed_paths(Path("figures/smol/notebooks/02_information_flow.ipynb"))
    assert running.name == ".02_information_flow.running.ipynb" and failed.name == "02_information_flow.FAILED.ipynb"
    assert running.parent == failed.parent == Path("figures/smol/notebooks")


@pytest.mark.chain
def test_a_failed_run_leaves_the_last_complete_run_as_it_was(tmp_path: Path) -> None:
    out, env = fake_repo(tmp_path, NOTEBOOK)
    cmd = [sys.executable, "-m", "mfutils", "reproduce", "--model", "tiny"]

    def run(*extra: str, fail: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(cmd + list(extra), cwd=ROOT, env={**env, "MF_TEST_FAIL": "1" if fail else "0"},
                              capture_output=True, text=True, timeout=600)

    assert run().returncode == 0
    executed = out / "figures" / "tiny" / "notebooks" / "00_test.ipynb"
    failed_copy = executed.with_name("00_test.FAILED.ipynb")
    assert "complete run" in executed.read_text()
    before = {**_tree(out / "figures" / "tiny"), **_tree(out / "results" / "tiny")}

    res = run("--force", fail=True)            # the inputs are unchanged: force the rerun
    assert res.returncode == 1 and "FAILED in 00_test.ipynb" in res.stderr, res.stderr[-2000:]
    assert "00_test.FAILED.ipynb" in res.stderr and "is unchanged" in res.stderr
    assert "this run fails on purpose" in failed_copy.read_text()
    after = {**_tree(out / "figures" / "tiny"), **_tree(out / "results" / "tiny")}
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    # the failed copy is new; the run's state file drops the failed notebook's record (it must rerun); nothing else
    assert changed <= {"notebooks/00_test.FAILED.ipynb", "chain_state.json"}, changed
    assert not list(executed.parent.glob(".*running*"))

    assert run().returncode == 0
    assert not failed_copy.exists() and "complete run" in executed.read_text()

    # a smoke run, failing or not, never touches the shipped folders: it writes figures/tiny--smoke, results/tiny--smoke
    shipped = {**_tree(out / "figures" / "tiny"), **_tree(out / "results" / "tiny"), **_tree(out / "paper")}
    assert run("--smoke", fail=True).returncode == 1
    assert (out / "figures" / "tiny--smoke" / "notebooks" / "00_test.FAILED.ipynb").exists()
    assert run("--smoke").returncode == 0
    assert (out / "results" / "tiny--smoke" / "doc.json").exists()
    assert {**_tree(out / "figures" / "tiny"), **_tree(out / "results" / "tiny"), **_tree(out / "paper")} == shipped


def test_the_reliability_table_names_tests_that_exist() -> None:
    """docs/reliability.md: at least 25 kinds of bad input, each row naming a test file (and function) that exists."""
    import re

    rows = [l for l in (ROOT / "docs" / "reliability.md").read_text().splitlines()
            if l.startswith("| ") and not l.startswith("| kind") and not set(l) <= set("|- ")]
    assert len(rows) >= 25, len(rows)
    for row in rows:
        refs = re.findall(r"`?(test_\w+\.py)(?:::(\w+))?", row)
        assert refs, f"a row names no test: {row}"
        for file, func in refs:
            text = (ROOT / "tests" / file).read_text()
            assert not func or f"def {func}(" in text, f"{file} has no {func}"
