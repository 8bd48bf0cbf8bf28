"""Where things live in the repository, resolved from the package location, never from the cwd.

Public API
----------
repo_root() -> Path                 the repository root (override with the MF_ROOT environment variable)
output_root() -> Path               where figures/ and results/ go: repo_root(), or MF_OUT when set (tests)
checkpoint_dir(name="tiny-llava")   the shipped tiny model's folder
figures_dir(model) / results_dir(model)   per-model output folders (created on demand)
model_slug(model) -> str            a file-system-safe name for a model ("random:llava" -> "random-llava")
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["repo_root", "output_root", "checkpoint_dir", "figures_dir", "results_dir", "model_slug", "notebooks_dir"]


def repo_root() -> Path:
    env = os.environ.get("MF_ROOT")
    return Path(env).resolve() if env else Path(__file__).resolve().parent.parent


def output_root() -> Path:
    env = os.environ.get("MF_OUT")
    return Path(env).resolve() if env else repo_root()


def checkpoint_dir(name: str = "tiny-llava") -> Path:
    return repo_root() / "checkpoints" / name


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def model_slug(model: str) -> str:
    """``"tiny"`` -> ``"tiny"``; ``"random:qwen2_5_vl"`` -> ``"random-qwen2_5_vl"``; paths -> last part."""
    if "/" in model or os.sep in model:
        model = Path(model.rstrip("/")).name or model
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", model).strip("-") or "model"


def figures_dir(model: str, create: bool = True) -> Path:
    p = output_root() / "figures" / model_slug(model)
    if create:
        p.mkdir(parents=True, exist_ok=True)
    return p


def results_dir(model: str, create: bool = True) -> Path:
    p = output_root() / "results" / model_slug(model)
    if create:
        p.mkdir(parents=True, exist_ok=True)
    return p
