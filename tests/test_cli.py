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
