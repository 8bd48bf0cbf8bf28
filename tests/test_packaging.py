"""pyproject.toml and environment.yml pin the same exact versions; no torchvision anywhere."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _pins(reqs: list[str]) -> dict[str, str]:
    out = {}
    for r in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)", r.strip())
        assert m, f"requirement {r!r} is not an exact pin (name==version)"
        out[m.group(1).lower()] = m.group(2)
    return out


def test_pyproject_and_environment_pin_the_same_versions() -> None:
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    py_pins = _pins(proj["dependencies"] + proj["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    env_pins = _pins([r for r in pip_section if not r.startswith("-e")])
    assert py_pins == env_pins
    assert "python=3.11" in env["dependencies"]
    assert env["channels"] == ["conda-forge"]


def test_no_torchvision_and_torch_is_pinned() -> None:
    text = (ROOT / "pyproject.toml").read_text() + (ROOT / "environment.yml").read_text()
    assert "torchvision" not in text.lower()
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "torch==2.13.0" in proj["dependencies"]


def test_makefile_and_ci_use_the_readme_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make reproduce" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    mk = (ROOT / "Makefile").read_text()
    for target in ("venv:", "reproduce:", "test:", "lab:", "retrain:"):
        assert f"\n{target}" in mk, target
