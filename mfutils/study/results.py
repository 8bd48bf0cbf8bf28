"""The results files: every result document and array file is written and read here, atomically.

Documents are JSON under ``results/<model>/<name>.json`` (``mfutils.core.paths.results_dir``): numpy and torch
values become plain numbers and lists, NaN and inf become null, keys keep their order. Arrays are
``.npz`` files beside them.

Public API
----------
jsonable(x) -> JSON-able value                       tensors/arrays -> lists, numpy scalars -> Python, NaN -> None
write_results(doc, model_name, name) -> Path         results/<model>/<name>.json (doc: a mapping or has .to_doc())
absent(why, **known) -> dict                         an absent measurement: numbers null, ``why`` the reason
non_finite(path) -> list[str]                        where a JSON file holds NaN or Infinity (never in a results file)
read_results(model_name, name) -> dict               the document (null stays None); "run notebooks/<name> first"
write_arrays(arrays, model_name, name) -> Path       results/<model>/<name>.npz (compressed)
results_path(model_name, name, suffix=".json") -> Path
Document                                             base of result dataclasses: ``to_doc()`` = fields in order;
                                                     also a read-only mapping of them
OPTIONAL                                             field metadata: the key is left out while the value is None

Example::

    write_results({"k": 3, "rate": float("nan")}, "tiny", "04_block_heads")    # {"k": 3, "rate": null}
    read_results("tiny", "04_block_heads")["k"]                                 # 3
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mfutils.core.paths import atomic_output, atomic_write_text, results_dir

__all__ = ["jsonable", "write_results", "read_results", "write_arrays", "results_path", "Document", "OPTIONAL", "absent",
           "non_finite"]

OPTIONAL = {"optional": True}


def jsonable(x: Any) -> Any:
    """``x`` with tensors and arrays as (nested) lists, numpy scalars as Python ones, non-finite floats as None.

    Example: ``jsonable({"a": np.float32(0.5), "b": torch.tensor([1.0, float("nan")])})`` ->
    ``{"a": 0.5, "b": [1.0, None]}``.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


class Document(Mapping[str, Any]):
    """Base of the result dataclasses: ``to_doc()`` is the JSON document, one key per field in field order
    (values as they are; ``write_results`` makes them JSON-able), and the result reads as that read-only
    mapping too (``result["k"]``). A field declared with ``field(default=None, metadata=OPTIONAL)`` is left
    out while it is None. Subclasses that rename keys override ``to_doc``.

    Example::

        @dataclass
        class Result(Document):
            model: str
            extra: dict | None = field(default=None, metadata=OPTIONAL)
    """

    def to_doc(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)  # type: ignore[arg-type]
                if not (f.metadata.get("optional") and getattr(self, f.name) is None)}

    def __getitem__(self, key: str) -> Any:
        return self.to_doc()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_doc())

    def __len__(self) -> int:
        return len(self.to_doc())


def results_path(model_name: str, name: str, suffix: str = ".json", create: bool = True) -> Path:
    """``results/<model slug>/<name><suffix>``. Example: ``results_path("tiny", "03_head_identification")``."""
    return results_dir(model_name, create=create) / f"{name}{suffix}"


def absent(why: str, **known: Any) -> dict[str, Any]:
    """An absent measurement as every writer records it: its numbers null, ``why`` the reason in words, and what
    is known about it (``n=0``, ...). Rules and plots read a dict with ``why`` as not measured.

    Example: ``absent("no follow_text samples in this run's data", k=0, n=0)`` ->
    ``{"rate": None, "lo": None, "hi": None, "k": 0, "n": 0, "why": "no follow_text samples in this run's data"}``.
    """
    base: dict[str, Any] = {"rate": None, "lo": None, "hi": None}
    base.update({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in known.items()})
    base["why"] = why
    return base


def write_results(doc: Mapping[str, Any] | Any, model_name: str, name: str) -> Path:
    """Write ``doc`` (a mapping, or a result with ``to_doc()``) to ``results/<model>/<name>.json`` atomically;
    NaN and inf become null. Returns the path.

    Example::

        write_results(block_experiment(mm, data, scores), "tiny", "04_block_heads")
    """
    if hasattr(doc, "to_doc"):
        doc = doc.to_doc()
    return atomic_write_text(results_path(model_name, name),
                             json.dumps(jsonable(doc), indent=1, allow_nan=False))


def non_finite(path: Path | str) -> list[str]:
    """The places in a JSON file that hold NaN or Infinity (``"a.b[3]"``), which a results file never may.

    Example: ``assert non_finite(results_path("tiny", "00_model")) == []``.
    """
    doc = json.loads(Path(path).read_text(), parse_constant=lambda c: _NonFinite(c))
    found: list[str] = []

    def walk(x: Any, where: str) -> None:
        if isinstance(x, _NonFinite):
            found.append(where or "(top)")
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{where}.{k}" if where else str(k))
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, f"{where}[{i}]")

    walk(doc, "")
    return found


class _NonFinite(str):
    """A NaN / Infinity constant as ``json.loads`` met it (``non_finite``)."""


def read_results(model_name: str, name: str) -> dict[str, Any]:
    """``results/<model>/<name>.json`` as a dict (null stays None); a missing file says which notebook writes it.

    Example: ``read_results("tiny", "04_block_heads")["k"]``.
    """
    path = results_path(model_name, name, create=False)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run notebooks/{name}.ipynb for model={model_name!r} first")
    return json.loads(path.read_text())


def write_arrays(arrays: Mapping[str, Any], model_name: str, name: str) -> Path:
    """Write ``arrays`` (name -> array or tensor) to ``results/<model>/<name>.npz`` (compressed) atomically.

    Example::

        write_arrays({"margins": m}, "tiny", "02_margins")          # np.load(path)["margins"]
    """
    path = results_path(model_name, name, suffix=".npz")
    data = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in arrays.items()}
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **data)
    return path
