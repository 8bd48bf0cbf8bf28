"""Versioned datasets of a chain run: notebook 01 writes a manifest, later notebooks load and verify it.

The manifest (``results/<model>/data_manifest.json``) records, for each named split of
``mfutils.data.world.SPLITS``, its size, seed and sha256 checksum, and the world's ``DATASET_VERSION``. A later
notebook regenerates the split from its seed and refuses to go on if the checksum differs (the world's
code changed since notebook 01 ran).

With ``dataset="mc2"`` the same split names are built from an MC2 file, MC2's own ``evaluate_final.json`` or an
authors' per-model file (``mfutils.data.mc2_files``: the format is read from the fields; ``mfutils.data.mc2.
build_splits``, filtered per model by an injected ``mc2.Keep``) and the manifest records the file's path,
sha256 and format (with an authors' file its question form, instruction sentences and suffixes, the unused
fields and the records with a word on both sides), the COCO root, whether the per-model filter was asked for and
ran, and each split's sample keys (record, instruction, option order) with its size and the size asked for, so
later notebooks rebuild exactly the same samples without running the filter again. A split smaller than asked
warns (``SplitSizeWarning``); one below ``MIN_SPLIT_SAMPLES`` = 8 samples stops (``SplitTooSmallError``). This
module never runs a model: the entry point that filters for one is ``mfutils.study.splits.write_manifest(...,
mm=mm)``.

Public API
----------
DEFAULT_SIZES, SMOKE_SIZES, MC2_SIZES   samples per split for full and smoke runs, and for MC2
POSITION_SIZES, POSITION_SMOKE_SIZES    the instruction-position splits' part of the first two
write_split_manifest(model, sizes, dataset="world", mc2_json="", coco_root="", keep=None, filtered_for=None,
                     form="open", model_filter=None, question_form="question3")
                                  -> dict   generate every split, write the manifest (atomic)
manifest_path(model) -> Path      results/<model>/data_manifest.json
load_split(model, name) -> list[Sample]     regenerated and verified against the manifest
manifest_dataset(model) -> str              "world" or "mc2": what notebook 01 built for ``model``
DATASETS                                    ("world", "mc2")
MIN_SPLIT_SAMPLES                           8: the smallest MC2 split that may come out smaller than asked
DatasetMismatchError, SplitSizeWarning, SplitTooSmallError

Example::

    write_split_manifest("tiny", DEFAULT_SIZES)    # notebook 01 (through mfutils.study.splits.write_manifest)
    samples = load_split("tiny", "test")           # notebooks 02-06
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from mfutils.core.paths import atomic_write_text, results_dir
from mfutils.data import mc2
from mfutils.data.mc2_files import MODEL_FILTER_DEFAULT
from mfutils.data.sample import Sample, dataset_checksum
from mfutils.data.world import DATASET_VERSION, POSITIONS, SPLITS, make_split

__all__ = ["DEFAULT_SIZES", "SMOKE_SIZES", "POSITION_SIZES", "POSITION_SMOKE_SIZES", "write_split_manifest", "load_split", "DatasetMismatchError", "manifest_path",
           "manifest_dataset", "DATASETS", "MC2_SIZES", "MIN_SPLIT_SAMPLES", "SplitSizeWarning", "SplitTooSmallError"]

DATASETS = ("world", "mc2")

# Sized for the default model (smol: a sample-forward costs about 14 tiny ones) so that its chain fits in 30 minutes
# on 2 cores; the tiny model runs 256 / 400 / 200 / 200 / 300 / 2000 (mfutils.run.profiles).
DEFAULT_SIZES: dict[str, int] = {"identify": 128, "test": 200, "test_system": 100, "test_instruction_last": 100,
                                 "capability": 150, "fail_pool": 1000}
SMOKE_SIZES: dict[str, int] = {"identify": 24, "test": 32, "test_system": 16, "test_instruction_last": 16,
                               "capability": 24, "fail_pool": 64}
# Where the instruction stands (notebook 08; A8, A9 of paper/claims.yaml): per position a pilot (the behaviour that
# sized the pool), an identification split (head scores), a test split (knockout curves; C6 and C9 at position
# first) and a pool (MFR per position x instruction at n = 500 each; the failures of C8 and C10 on smol).
POSITION_SIZES: dict[str, int] = {f"{kind}_{pos}": n for pos in POSITIONS
                                  for kind, n in (("pilot", 200), ("identify", 64), ("test", 200), ("pool", 1000))}
POSITION_SMOKE_SIZES: dict[str, int] = {f"{kind}_{pos}": n for pos in POSITIONS
                                        for kind, n in (("pilot", 8), ("identify", 8), ("test", 16), ("pool", 32))}
DEFAULT_SIZES.update(POSITION_SIZES)
SMOKE_SIZES.update(POSITION_SMOKE_SIZES)


# MC2 has 2,000 records (1,000 per half); the fail pool is the test half (failures are found there).
MC2_SIZES: dict[str, int] = {"identify": 256, "test": 400, "test_system": 200, "test_instruction_last": 200,
                             "capability": 300, "fail_pool": 1000}


# An MC2 split (filtered per model, or of a small file) may come out smaller than asked: a warning; below this
# many samples (and below the size asked) no analysis of the chain has enough to say anything: an error.
MIN_SPLIT_SAMPLES = 8


class DatasetMismatchError(RuntimeError):
    """A split regenerated now differs from the one notebook 01 recorded."""


class SplitSizeWarning(UserWarning):
    """An MC2 split has fewer samples than asked (the filter or the file left fewer records)."""


class SplitTooSmallError(ValueError):
    """An MC2 split has fewer than ``MIN_SPLIT_SAMPLES`` samples (and fewer than asked)."""


def manifest_path(model: str) -> Path:
    """Where notebook 01 writes the manifest of ``model``: ``results/<model>/data_manifest.json``."""
    return results_dir(model) / "data_manifest.json"


def _write(path: Any, manifest: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(manifest, indent=1))


def write_split_manifest(model: str, sizes: dict[str, int], dataset: str = "world", mc2_json: str = "",
                         coco_root: str = "", *, keep: mc2.Keep | None = None, filtered_for: str | None = None,
                         form: str = "open", model_filter: bool | None = None,
                         question_form: str = "question3") -> dict[str, Any]:
    """Generate every split at ``sizes`` and record seed (world) or sample keys (MC2), size and checksum
    (written atomically). ``dataset="mc2"`` needs ``mc2_json`` (either format of ``mfutils.data.mc2_files``) and
    ``coco_root``; with ``keep`` (a ``mfutils.data.mc2.Keep``) the MC2 samples are filtered by it
    (``mfutils.data.mc2.build_splits``), the split sizes are upper bounds and ``filtered_for`` names the model in
    the manifest. ``model_filter``: what the caller asked of the per-model filter (None: the file format's default,
    ``mc2_files.MODEL_FILTER_DEFAULT``), recorded beside whether it ran. ``question_form``: the question field of
    an authors' file. An MC2 split smaller than asked is a ``SplitSizeWarning`` (both numbers; both are in the
    manifest); one with fewer than ``MIN_SPLIT_SAMPLES`` samples (and fewer than asked) a ``SplitTooSmallError``.

    Example::

        write_split_manifest("tiny", DEFAULT_SIZES)
        write_split_manifest(m, MC2_SIZES, "mc2", json_path, coco, keep=model_keep(mm), filtered_for=mm.name)
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; use one of {DATASETS}")
    if dataset == "mc2":
        return _write_mc2_manifest(model, sizes, mc2_json, coco_root, keep, filtered_for, form, model_filter,
                                   question_form)
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; known: {sorted(SPLITS)}")
    manifest: dict[str, Any] = {"dataset": "world", "dataset_version": DATASET_VERSION, "splits": {}}
    for name, n in sizes.items():
        samples = make_split(name, n)
        manifest["splits"][name] = {"n": n, "seed": SPLITS[name]["seed"], "categories": list(SPLITS[name]["categories"]),  # type: ignore[call-overload]
                                    "variant": SPLITS[name]["variant"], "sha256": dataset_checksum(samples)}
    _write(manifest_path(model), manifest)
    return manifest


def _shortfall(name: str, info: dict[str, Any], file_info: dict[str, Any]) -> str:
    """Why an MC2 split has fewer samples than asked: the records of its half and what dropped them."""
    half = mc2._SPLITS[name][0]
    parts = [f"the {half} half holds {info['halves'][half]} of the file's {file_info['n_records']} records"]
    members = set(mc2._halves(file_info["n_records"])[half])
    drops = [d for d in info.get("unscorable", []) if int(d["record"]) in members]
    if drops:
        causes: dict[str, int] = {}
        for d in drops:
            causes[str(d.get("cause", "other"))] = causes.get(str(d.get("cause", "other")), 0) + 1
        parts.append(f"{len(drops)} unscorable for this tokenizer ({', '.join(f'{k} {v}' for k, v in causes.items())})")
    rep = info.get("filter", {}).get(half)
    if rep:
        parts.append(f"the per-model filter kept {rep['n_kept_records']} of the {rep['n_records']} records it probed")
    if name == "fail_pool" and file_info.get("format") == "authors":
        parts.append("an authors' file has one instruction, so fail_pool takes the test half's records that test "
                     "does not use")
    return "; ".join(parts)


def _check_sizes(splits: dict[str, list[Sample]], sizes: dict[str, int], info: dict[str, Any],
                 file_info: dict[str, Any]) -> None:
    for name, samples in splits.items():
        n, asked = len(samples), sizes[name]
        if n >= asked:
            continue
        why = _shortfall(name, info, file_info)
        if n < MIN_SPLIT_SAMPLES:
            fix = "give a larger file"
            if name == "fail_pool" and file_info.get("format") == "authors":
                fix += ", ask for fewer test samples (split_sizes)"
            if info.get("model_filter"):
                fix += ", or turn the per-model filter off (model_filter=False)"
            raise SplitTooSmallError(f"MC2 split {name!r} has {n} samples, {asked} were asked for, fewer than the "
                                     f"minimum {MIN_SPLIT_SAMPLES}: {why}. To go on: {fix}")
        warnings.warn(f"MC2 split {name!r} has {n} samples, {asked} were asked for ({why})", SplitSizeWarning,
                      stacklevel=4)


def _write_mc2_manifest(model: str, sizes: dict[str, int], mc2_json: str, coco_root: str, keep: mc2.Keep | None,
                        filtered_for: str | None, form: str, model_filter: bool | None,
                        question_form: str) -> dict[str, Any]:
    if not mc2_json or not coco_root:
        raise ValueError("dataset='mc2' needs mc2_json=<path to evaluate_final.json or an authors' per-model file> "
                         "and coco_root=<COCO 2014 folder>")
    records, file_info = mc2.read_records(mc2_json, question_form=question_form, stacklevel=5)
    images = mc2.find_images(records, coco_root)
    splits, info = mc2.build_splits(records, images, sizes, keep=keep, form=form)
    _check_sizes(splits, sizes, info, file_info)
    fmt = file_info["format"]
    manifest: dict[str, Any] = {
        "dataset": "mc2", "mc2_json": str(Path(mc2_json).expanduser().resolve()), "mc2_sha256": mc2.file_sha256(mc2_json),
        "format": fmt, "coco_root": str(Path(coco_root).expanduser().resolve()), "n_records": len(records),
        "form": form, "filtered_for": filtered_for if info["model_filter"] else None,
        "model_filter": {"asked": model_filter, "default": MODEL_FILTER_DEFAULT[fmt], "applied": info["model_filter"]},
        "file": {k: v for k, v in file_info.items() if k not in ("format", "n_records")},
        "build": info, "splits": {}}
    if fmt == "authors":
        manifest["question_form"] = question_form
    for name, samples in splits.items():
        keys = [[s.index, s.category.removeprefix("follow_"), (s.meta or {}).get("order", "")] for s in samples]
        manifest["splits"][name] = {"n": len(samples), "requested": sizes[name], "keys": keys,
                                    "sha256": dataset_checksum(samples)}
    _write(manifest_path(model), manifest)
    return manifest


def manifest_dataset(model: str) -> str:
    """``"world"`` or ``"mc2"``: the dataset notebook 01 built for ``model`` (raises if 01 has not run)."""
    return str(_read_manifest(model).get("dataset", "world"))


def _read_manifest(model: str) -> dict[str, Any]:
    path = manifest_path(model)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run notebooks/01_data_construction.ipynb for model={model!r} "
                                "first (make reproduce runs it)")
    return json.loads(path.read_text())


def _load_mc2_split(model: str, name: str, manifest: dict[str, Any]) -> list[Sample]:
    entry = manifest["splits"][name]
    got_sha = mc2.file_sha256(manifest["mc2_json"]) if _exists(manifest["mc2_json"]) else None
    if got_sha != manifest["mc2_sha256"]:
        raise DatasetMismatchError(
            f"the MC2 file {manifest['mc2_json']} is {'missing' if got_sha is None else 'changed (sha256 ' + got_sha[:12] + '...)'}"
            f" since notebook 01 built the splits of {model!r} (sha256 {manifest['mc2_sha256'][:12]}...): rerun the chain from 01")
    records = mc2.read_records(manifest["mc2_json"], question_form=manifest.get("question_form", "question3"),
                               warn=False)[0]
    used = sorted({int(k[0]) for k in entry["keys"]})
    found = mc2.find_images([records[i] for i in used], manifest["coco_root"])
    images: list[Any] = [None] * len(records)
    for i, p in zip(used, found):
        images[i] = p
    samples = mc2.split_samples(name, records, images, entry["keys"], form=manifest.get("form", "open"))
    if dataset_checksum(samples) != entry["sha256"]:
        raise DatasetMismatchError(f"MC2 split {name!r} rebuilt now differs from the manifest {manifest_path(model)} "
                                   "(mfutils.data.mc2 changed since notebook 01 ran): rerun the chain from 01")
    return samples


def _exists(p: str) -> bool:
    return Path(p).is_file()


def load_split(model: str, name: str) -> list[Sample]:
    """The split ``name`` as notebook 01 recorded it for ``model``; raises if missing or changed.

    Example::

        samples = load_split("tiny", "test")           # world or MC2 samples, as notebook 01 built them
    """
    path = manifest_path(model)
    manifest = _read_manifest(model)
    if name not in manifest["splits"]:
        raise KeyError(f"split {name!r} is not in {path}; it has {sorted(manifest['splits'])}")
    if manifest.get("dataset", "world") == "mc2":
        return _load_mc2_split(model, name, manifest)
    entry = manifest["splits"][name]
    samples = make_split(name, entry["n"])
    got = dataset_checksum(samples)
    if manifest.get("dataset_version") != DATASET_VERSION or got != entry["sha256"]:
        raise DatasetMismatchError(
            f"split {name!r} regenerated now has sha256 {got[:12]}..., the manifest {path} says "
            f"{entry['sha256'][:12]}... (dataset version {manifest.get('dataset_version')} vs {DATASET_VERSION}): "
            "the world's code changed since notebook 01 ran; rerun the chain from 01")
    return samples
