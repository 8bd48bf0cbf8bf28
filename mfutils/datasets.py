"""Versioned datasets of a chain run: notebook 01 writes a manifest, later notebooks load and verify it.

The manifest (``results/<model>/data_manifest.json``) records, for each named split of
``mfutils.world.SPLITS``, its size, seed and sha256 checksum, and the world's ``DATASET_VERSION``. A later
notebook regenerates the split from its seed and refuses to go on if the checksum differs (the world's
code changed since notebook 01 ran).

Public API
----------
DEFAULT_SIZES, SMOKE_SIZES        samples per split for full and smoke runs
write_manifest(model, sizes) -> dict
load_split(model, name) -> list[Sample]     regenerated and verified against the manifest
DatasetMismatchError

Example::

    write_manifest("tiny", DEFAULT_SIZES)          # notebook 01
    samples = load_split("tiny", "test")           # notebooks 02-06
"""

from __future__ import annotations

import json
from typing import Any

from .paths import results_dir
from .world import DATASET_VERSION, SPLITS, Sample, dataset_checksum, make_split

__all__ = ["DEFAULT_SIZES", "SMOKE_SIZES", "write_manifest", "load_split", "DatasetMismatchError", "manifest_path"]

DEFAULT_SIZES: dict[str, int] = {"identify": 256, "test": 400, "test_system": 200, "test_instruction_last": 200,
                                 "capability": 300, "fail_pool": 2000}
SMOKE_SIZES: dict[str, int] = {"identify": 24, "test": 32, "test_system": 16, "test_instruction_last": 16,
                               "capability": 24, "fail_pool": 64}


class DatasetMismatchError(RuntimeError):
    """A split regenerated now differs from the one notebook 01 recorded."""


def manifest_path(model: str):  # -> Path
    return results_dir(model) / "data_manifest.json"


def write_manifest(model: str, sizes: dict[str, int]) -> dict[str, Any]:
    """Generate every split at ``sizes`` and record seed, size and checksum (written atomically)."""
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; known: {sorted(SPLITS)}")
    manifest: dict[str, Any] = {"dataset_version": DATASET_VERSION, "splits": {}}
    for name, n in sizes.items():
        samples = make_split(name, n)
        manifest["splits"][name] = {"n": n, "seed": SPLITS[name]["seed"], "categories": list(SPLITS[name]["categories"]),  # type: ignore[call-overload]
                                    "variant": SPLITS[name]["variant"], "sha256": dataset_checksum(samples)}
    path = manifest_path(model)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(path)
    return manifest


def load_split(model: str, name: str) -> list[Sample]:
    """The split ``name`` as notebook 01 recorded it for ``model``; raises if missing or changed."""
    path = manifest_path(model)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run notebooks/01_data_construction.ipynb for model={model!r} "
                                "first (make reproduce runs it)")
    manifest = json.loads(path.read_text())
    if name not in manifest["splits"]:
        raise KeyError(f"split {name!r} is not in {path}; it has {sorted(manifest['splits'])}")
    entry = manifest["splits"][name]
    samples = make_split(name, entry["n"])
    got = dataset_checksum(samples)
    if manifest.get("dataset_version") != DATASET_VERSION or got != entry["sha256"]:
        raise DatasetMismatchError(
            f"split {name!r} regenerated now has sha256 {got[:12]}..., the manifest {path} says "
            f"{entry['sha256'][:12]}... (dataset version {manifest.get('dataset_version')} vs {DATASET_VERSION}): "
            "the world's code changed since notebook 01 ran; rerun the chain from 01")
    return samples
