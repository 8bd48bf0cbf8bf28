"""The command line: --help on every command, eval's JSON line, info."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

COMMANDS = ["info", "train", "card", "eval", "reproduce", "store-checked"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mfutils", *args], capture_output=True, text=True, env=ENV, timeout=300)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command: str | None) -> None:
    out = _run(*([command] if command else []), "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: mf" in out.stdout


def test_eval_json_last_line_on_a_random_model() -> None:
    out = _run("eval", "--model", "random:llava", "--n", "8", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for cat in ("follow_image", "follow_text", "image_only", "text_only", "agree"):
        assert res[cat]["n"] == 8 and 0.0 <= res[cat]["rate"] <= 1.0 and res[cat]["lo"] <= res[cat]["hi"]


def test_eval_unknown_model_fails_with_a_message() -> None:
    out = _run("eval", "--model", "nope", "--n", "4")
    assert out.returncode != 0
    assert "unknown model 'nope'" in out.stderr


def test_info_lists_the_chain() -> None:
    out = _run("info")
    assert out.returncode == 0, out.stderr
    assert "00_model" in out.stdout and "random:qwen2_5_vl" in out.stdout


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MC2 = next((c for c in [os.environ.get("MF_MC2_JSON", ""),
                        os.path.join(_ROOT, "..", "shared", "mc2", "evaluate_final.json"),
                        os.path.join(_ROOT, "shared", "mc2", "evaluate_final.json")] if c and os.path.exists(c)),
           os.path.join(_ROOT, "..", "shared", "mc2", "evaluate_final.json"))


def test_eval_mc2_needs_its_paths() -> None:
    out = _run("eval", "--model", "random:llava", "--dataset", "mc2")
    assert out.returncode == 2 and "--mc2-json" in out.stderr and "--coco-root" in out.stderr


@pytest.mark.skipif(not os.path.exists(MC2), reason="the MC2 file is not at ../shared/mc2/evaluate_final.json (or MF_MC2_JSON)")
def test_eval_mc2_on_stand_in_images(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    from PIL import Image

    records = json.load(open(MC2))[:6]
    for r in records[:5]:
        Image.fromarray(np.full((20, 20, 3), 90, dtype=np.uint8)).save(tmp_path / f"COCO_val2014_{r['image_id']}.jpg")
    # one image missing: a one-line error naming it, no traceback
    out = _run("eval", "--model", "random:internvl", "--dataset", "mc2", "--mc2-json", MC2, "--coco-root",
               str(tmp_path), "--n", "6")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"1 of 6 MC2 images are missing under {tmp_path}: {records[5]['image_id']} (record 5)" in out.stderr
    # the random model's word-level vocabulary does not know MC2's answers: none of the 5 records x 2
    # instructions can be scored, which is an error, not a table of NaN rates
    out = _run("eval", "--model", "random:internvl", "--dataset", "mc2", "--mc2-json", MC2, "--coco-root",
               str(tmp_path), "--n", "5", "--json")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "none of the 10 samples of the 5 MC2 records can be scored by random:internvl" in out.stderr
    assert not out.stdout.strip().endswith("}"), "no JSON result line for a run that scored nothing"
