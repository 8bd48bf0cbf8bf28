"""Provenance: what code, packages and machine produced a result.

Public API
----------
git_commit() -> str          HEAD, "+dirty" when tracked source files changed (chain outputs excepted), "unknown" outside git
sha256_file(path) -> str
environment() -> dict        package versions, python, platform, torch threads, git commit

Example::

    environment()["packages"]["transformers"]   # '5.23.0'
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from mfutils.core.paths import repo_root

__all__ = ["git_commit", "sha256_file", "environment"]

_PACKAGES = ("mfutils", "torch", "transformers", "tokenizers", "accelerate", "safetensors", "numpy", "pandas",
             "matplotlib", "seaborn", "papermill", "nbval", "ipywidgets", "pillow")


def git_commit() -> str:
    try:
        root = repo_root()
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        # the chain's own outputs (figures/, results/, paper/REPORT.md) change while it runs: not "dirty" code
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!figures", ":!results", ":!paper/REPORT.md"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def environment() -> dict[str, Any]:
    import torch

    pk: dict[str, str] = {}
    for name in _PACKAGES:
        try:
            pk[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pk[name] = "not installed"
    return {"python": sys.version.split()[0], "platform": platform.platform(), "torch_threads": torch.get_num_threads(),
            "git_commit": git_commit(), "packages": pk}
