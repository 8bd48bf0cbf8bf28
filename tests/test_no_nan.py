"""No NaN in any results file: a smoke chain through `mf reproduce` (the path users take) on an authors' per-model
MC2 file, which holds one instruction only, runs through every notebook without a traceback and writes null with a
reason where a measurement is absent; the world and the official MC2 file are scanned by the chain tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from authors_file import write_authors_file
from mfutils.run.chain import built_notebooks
from mfutils.study.results import non_finite

ROOT = Path(__file__).resolve().parents[1]


def scan_results(out: Path) -> dict[str, list[str]]:
    """Every results JSON under ``out`` that holds NaN or Infinity, with where."""
    return {str(p.relative_to(out)): bad for p in sorted((out / "results").rglob("*.json")) if (bad := non_finite(p))}


@pytest.mark.chain
def test_a_per_model_file_runs_the_whole_chain_through_mf_reproduce(tmp_path: Path) -> None:
    coco = tmp_path / "coco"
    coco.mkdir()
    path = write_authors_file(coco, "text", n=240)
    out = tmp_path / "out"
    env = {**os.environ, "MF_OUT": str(out), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "mfutils", "reproduce", "--model", "random:llava", "--smoke",
                          "--dataset", "mc2", "--mc2-json", str(path), "--coco-root", str(coco)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert scan_results(out) == {}
    name = "random-llava--mc2-" + path.stem + "-smoke"       # figures/ and results/ of this run (run_key_for)
    assert not (out / "results" / "random-llava").exists()
    doc = json.loads((out / "results" / name / "00_model.json").read_text())
    assert doc["accuracy"]["follow_image"]["rate"] is None and "no follow_image samples" in doc["accuracy"]["follow_image"]["why"]
    executed = out / "figures" / name / "notebooks"
    for nb in built_notebooks():
        cells = json.loads((executed / nb.name).read_text())["cells"]
        assert not [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"], nb.name
