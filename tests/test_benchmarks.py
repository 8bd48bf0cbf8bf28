"""benchmarks.run --quick: it runs, writes every section, and its equality checks pass (never its timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:          # benchmarks/ is not part of the installed package
    sys.path.insert(0, str(REPO))

from benchmarks.run import SECTIONS  # noqa: E402


def test_quick_benchmark_writes_every_section_and_passes_its_equality_checks(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    env = dict(os.environ, MF_OUT=str(tmp_path / "out"), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--models", "random:qwen2_5_vl",
                           "--samples", "4", "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = out.read_text()
    for section in SECTIONS:
        assert f"## {section}" in text, section
    assert "random:qwen2_5_vl" in text and "--quick run" in text
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["checks"] and all(c["passed"] for c in doc["checks"]), [c for c in doc["checks"] if not c["passed"]]
    assert text.count("| PASS |") == len(doc["checks"]) and "FAIL" not in text
    assert "ALL EQUALITY CHECKS PASSED" in text
    r = doc["models"]["random:qwen2_5_vl"]
    # machine-independent cost figures: prefix reuse and attribution + verification do less work
    assert r["sweep"]["fe"]["prefix"] < r["sweep"]["fe"]["naive"]
    assert r["heads"]["fe"]["fast"] < r["heads"]["fe"]["exhaustive_full"]
    assert doc["machine"]["torch"] and doc["machine"]["cores"] >= 1


@pytest.mark.parametrize("config", ["small"])
def test_gpu_script_runs_its_small_config_on_cpu(config: str, tmp_path: Path) -> None:
    env = dict(os.environ, OUT=str(tmp_path), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_llava_sweep", "--config", config, "--device", "cpu",
                           "--samples", "4"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "gpu_sweep.json").read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == doc
    assert doc["dtype"] == "float32" and doc["n_layers"] == 2 and doc["n_samples"] == 4
    assert doc["max_abs_logit_diff"] <= 1e-4                      # prefix reuse equals the naive sweep
    assert doc["knockout_effect_across_layers"] > 1e-4            # and the knockouts act
    assert doc["fe_prefix"] < doc["fe_naive"]
