"""The flow analyses' inputs and outputs: a Prepared gives the list path's numbers in input order, the failure
search decides through measure.follow.follows, and the notebook-02 document is a typed mapping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mfutils.study.information_flow as flow_doc
from mfutils.data.sample import Sample
from mfutils.data.world import make_split
from mfutils.measure.answers import targets_for
from mfutils.measure.follow import follows
from mfutils.measure.prepared import Batch, Prepared, prepare
from mfutils.model.groups import encode
from mfutils.model.loading import MLLM, random_model
from mfutils.study.dla import dla
from mfutils.study.flow_batches import flow_batches, gather, subset_or_data
from mfutils.study.information_flow import FlowDocument, find_failures
from mfutils.study.knockout import SweepResult, knockout_sweep
from mfutils.study.lens import ldar
from mfutils.study.results import write_arrays, write_results
from mfutils.study.saliency import saliency

EDGES = ["image->last", "instruction->last", "image+context->system"]


@pytest.fixture(scope="module")
def mm() -> MLLM:
    return random_model("llava", n_layers=3, seed=1)


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return make_split("test", 5) + make_split("test_system", 2)      # different lengths: sorting reorders


def _in_order(mm: MLLM, samples: list[Sample], batch_size: int) -> Prepared:
    """A Prepared with the list path's batches (consecutive slices)."""
    idx = [list(range(i, min(i + batch_size, len(samples)))) for i in range(0, len(samples), batch_size)]
    return Prepared(samples, [Batch(ix, encode(mm, [samples[i].prompt for i in ix]).to(mm.device),
                                    targets_for(mm, [samples[i] for i in ix])) for ix in idx])


def _analyses(mm: MLLM, data: list[Sample] | Prepared) -> dict[str, np.ndarray]:
    sweep = knockout_sweep(mm, data, EDGES, k=1, batch_size=3, progress=False)
    r = dla(mm, data, batch_size=3, progress=False)
    lens = ldar(mm, data, batch_size=3, progress=False)
    sal = saliency(mm, data, batch_size=3, progress=False)
    return {"base": sweep.base, "knocked": sweep.knocked, "follows": sweep.follows, "attn": r.attn, "mlp": r.mlp,
            "total": r.total, "after": r.after, "categories": r.categories,
            **{f"agree_{k}": v for k, v in lens["agree"].items()}, **{f"sal_{k}": v for k, v in sal.items()}}


def test_a_prepared_gives_the_list_numbers_in_input_order(mm: MLLM, samples: list[Sample]) -> None:
    ref = _analyses(mm, samples)
    same = _analyses(mm, _in_order(mm, samples, 3))                  # the same batches: bit for bit
    for k in ref:
        np.testing.assert_array_equal(same[k], ref[k], err_msg=k)
    data = prepare(mm, samples, batch_size=3)
    assert [b.index for b in data.batches] != [[0, 1, 2], [3, 4, 5], [6]]   # sorted by length: other batches
    other = _analyses(mm, data)
    for k in ref:
        if ref[k].dtype.kind in "fc":
            np.testing.assert_allclose(other[k], ref[k], atol=1e-5, err_msg=k)
        else:
            np.testing.assert_array_equal(other[k], ref[k], err_msg=k)


def test_filtered_analyses_fall_back_to_their_own_batches(mm: MLLM, samples: list[Sample]) -> None:
    mixed = samples[:3] + [s for s in make_split("capability", 4) if s.other_answer is None][:2]
    data = prepare(mm, mixed, batch_size=4)
    keep = [s for s in mixed if s.other_answer is not None]
    assert subset_or_data(data, keep) is keep
    assert subset_or_data(prepare(mm, keep, batch_size=4), keep) is not keep
    np.testing.assert_array_equal(dla(mm, data, progress=False).total, dla(mm, keep, progress=False).total)
    assert ldar(mm, data, progress=False)["last"]["n"] == len(keep)


def test_flow_batches_and_gather_keep_input_order(mm: MLLM, samples: list[Sample]) -> None:
    done = flow_batches(mm, samples, 3, lambda idx, enc, t: np.array(idx) * 10, "index")
    assert [i for i, _ in done] == [[0, 1, 2], [3, 4, 5], [6]]
    assert flow_batches(mm, samples[:2], 3, lambda idx, enc, t: t, "no targets", targets=False)[0][1] is None
    assert gather([([2, 0], np.array([20, 0])), ([1], np.array([10]))]).tolist() == [0, 10, 20]
    rows = gather([([1], np.ones((2, 1))), ([0], np.zeros((2, 1)))], axis=1)
    assert rows.tolist() == [[0.0, 1.0], [0.0, 1.0]]


def test_find_failures_decides_through_follows(mm: MLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = make_split("fail_pool", 12)
    conflict = [s for s in pool if s.other_answer is not None]
    ok = follows(mm, conflict)
    failures = [s for s, f in zip(conflict, ok.tolist()) if not f]
    assert failures, "the random model should fail some conflict samples"
    assert find_failures(mm, pool, batch_size=5) == failures
    calls: list[int] = []

    def counted(model, data, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(data))
        return follows(model, data, **kwargs)

    monkeypatch.setattr(flow_doc, "follows", counted)
    assert find_failures(mm, pool, batch_size=1, cap=1) == failures[:1]
    assert sum(calls) == conflict.index(failures[0]) + 1          # stops at the first failure
    with pytest.raises(ValueError, match="batch_size"):
        find_failures(mm, pool, batch_size=0)


def _doc() -> FlowDocument:
    return FlowDocument(model="m", n_layers=2, window=1, n={"test": 3}, knockout={"e": {"all": {"n": 1}}},
                        controls={}, ldar={"last": {"rate": [1.0, float("nan")]}}, dla={}, subspace={},
                        saliency={"e": [0.5]}, stability={"corr": {}})


def test_flow_document_is_a_typed_mapping(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MF_OUT", str(tmp_path))
    doc = _doc()
    assert list(doc) == ["model", "n_layers", "window", "n", "knockout", "controls", "ldar", "dla", "subspace",
                         "saliency", "stability", "stride"]
    assert doc["knockout"] is doc.knockout and len(doc) == 12 and "n" in doc and doc.get("x") is None
    with pytest.raises(KeyError):
        doc["to_doc"]
    assert doc.to_doc() == dict(doc)
    back = json.loads(write_results(doc, "m", "02_information_flow").read_text())
    assert list(back) == list(doc) and back["ldar"]["last"]["rate"] == [1.0, None]
    assert write_results(doc.to_doc(), "m", "x").read_text() == (tmp_path / "results" / "m" /
                                                                 "02_information_flow.json").read_text()


def test_sweep_arrays_round_trip_through_the_results_module(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MF_OUT", str(tmp_path))
    sweep = SweepResult(edges=["a->b"], windows=[(0, 1), (1, 2)], base=np.array([1.0, -2.0]),
                        knocked=np.array([[[0.5, np.nan], [1.0, -1.0]]]), follows=np.array([True, False]),
                        categories=np.array(["follow_image", "follow_text"]), tags=np.array(["test", "test"]),
                        n_layers=2, info={"k": 1})
    for back in (SweepResult.load(write_arrays(sweep.to_arrays(), "m", "sweep")),
                 SweepResult.load(sweep.save(tmp_path / "direct.npz"))):
        assert back.edges == sweep.edges and back.windows == sweep.windows and back.info == sweep.info
        np.testing.assert_array_equal(back.knocked, sweep.knocked)
        np.testing.assert_array_equal(back.follows, sweep.follows)
        assert torch.equal(torch.from_numpy(back.base), torch.from_numpy(sweep.base))
