"""Results files (mfutils.study.results): JSON-able conversion, atomic writes, documents of result dataclasses."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from mfutils.study.results import OPTIONAL, Document, jsonable, read_results, write_arrays, write_results


@dataclass
class _Result(Document):
    model: str
    rates: list[float]
    extra: dict | None = field(default=None, metadata=OPTIONAL)


def test_jsonable_converts_numpy_torch_and_non_finite() -> None:
    x = {"a": np.float32(0.5), "b": torch.tensor([1.0, float("nan")]), 3: np.int64(2), "c": (np.bool_(True), math.inf),
         "d": np.arange(4).reshape(2, 2)}
    assert jsonable(x) == {"a": 0.5, "b": [1.0, None], "3": 2, "c": [True, None], "d": [[0, 1], [2, 3]]}
    assert type(jsonable(np.int64(2))) is int and jsonable(True) is True


def test_write_and_read_results(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MF_OUT", str(tmp_path))
    r = _Result("random:llava", [0.5, float("nan")])
    doc = r.to_doc()
    assert list(doc) == ["model", "rates"]                             # None optional fields are left out
    assert doc["rates"][0] == 0.5 and math.isnan(doc["rates"][1])      # values as they are
    path = write_results(r, "random:llava", "04_block_heads")
    assert path.name == "04_block_heads.json" and path.parent.name == "random-llava"
    assert json.loads(path.read_text()) == {"model": "random:llava", "rates": [0.5, None]}
    r.extra = {"k": np.int64(3)}
    write_results(r.to_doc(), "random:llava", "04_block_heads")       # a mapping works too
    assert read_results("random:llava", "04_block_heads")["extra"] == {"k": 3}
    assert not list(path.parent.glob("*.partial*"))                    # nothing half-written is left
    with pytest.raises(FileNotFoundError, match="run notebooks/05_amplification.ipynb"):
        read_results("random:llava", "05_amplification")
    npz = write_arrays({"m": torch.arange(3.0), "f": np.array([True, False])}, "random:llava", "x")
    z = np.load(npz)
    assert npz.suffix == ".npz" and z["m"].tolist() == [0.0, 1.0, 2.0] and z["f"].tolist() == [True, False]


def test_documents_read_as_mappings() -> None:
    r = _Result("m", [1.0])
    assert r["model"] == "m" and list(r) == ["model", "rates"] and len(r) == 2 and "extra" not in r
    assert dict(r) == r.to_doc() and jsonable(r) == {"model": "m", "rates": [1.0]}
    r.extra = {}
    assert list(r) == ["model", "rates", "extra"]
    with pytest.raises(KeyError):
        r["nope"]


def test_absent_measurements_are_null_with_a_reason(tmp_path, monkeypatch) -> None:
    from mfutils.study.results import absent, non_finite, results_path, write_results

    monkeypatch.setenv("MF_OUT", str(tmp_path))
    a = absent("no follow_text samples in this run's data", k=0, n=0, rate=float("nan"))
    assert a == {"rate": None, "lo": None, "hi": None, "k": 0, "n": 0, "why": "no follow_text samples in this run's data"}
    path = write_results({"accuracy": {"follow_text": a}, "x": float("nan"), "y": [1.0, float("inf")]}, "m", "doc")
    assert non_finite(path) == []
    bad = results_path("m", "bad")
    bad.write_text('{"a": NaN, "b": [1, Infinity], "c": {"d": -Infinity}}')
    assert non_finite(bad) == ["a", "b[1]", "c.d"]
