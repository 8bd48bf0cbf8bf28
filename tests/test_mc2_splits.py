"""MC2 splits with an injected model filter (``mc2.Keep``): the data layer builds them without a model; the
study layer's ``model_keep`` and ``splits.write_manifest`` supply the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mfutils.data import mc2
from mfutils.data.sample import Sample

SIZES = {"identify": 4, "test": 4, "capability": 4, "fail_pool": 4}


def _records(n: int) -> list[dict[str, str]]:
    return [{"image_id": str(i + 1), "task": ("color", "count")[i % 2], "question": "what color ?",
             "answer_vision": "red", "answer_text": "blue", "context": "a blue star ."} for i in range(n)]


def test_build_splits_without_keep_uses_every_record() -> None:
    recs = _records(20)
    splits, info = mc2.build_splits(recs, [np.zeros((8, 8, 3), dtype=np.uint8)] * len(recs), SIZES)
    assert info == {"form": "open", "model_filter": False, "halves": {"identify": 10, "test": 10}}
    halves = mc2._halves(len(recs))
    assert [s.index for s in splits["identify"]] == halves["identify"][:4]
    assert [s.index for s in splits["test"]] == halves["test"][:4]


@pytest.mark.parametrize("filters", [True, False])
def test_build_splits_keeps_what_keep_accepts(filters: bool) -> None:
    recs = _records(40)
    calls: list[tuple[list[int], int]] = []

    def keep(probe: list[Sample], limit: int) -> tuple[list[Sample], list[dict[str, Any]], dict[str, Any] | None]:
        calls.append(([s.index for s in probe], limit))
        dropped = [{"record": s.index, "task": s.attribute, "reason": "odd"} for s in probe if s.index % 2]
        ok = [s for s in probe if s.index % 2 == 0]
        return (ok[:limit], dropped, {"n_records": len(ok[:limit])}) if filters else (ok, dropped, None)

    splits, info = mc2.build_splits(recs, [np.zeros((8, 8, 3), dtype=np.uint8)] * len(recs), SIZES, keep=keep)
    halves = mc2._halves(len(recs))
    assert [c[0] for c in calls] == [halves["identify"], halves["test"]]          # one probe per record, in order
    assert [c[1] for c in calls] == [32, 32]                                      # max(4 * need, 32)
    assert list(info) == ["form", "model_filter", "halves", "unscorable"] + (["filter"] if filters else []) + [
        "unscorable_by_cause"]
    assert info["model_filter"] is filters and len(info["unscorable"]) == 20
    assert info["unscorable_by_cause"] == {"other": 20}            # the stub's drops name no cause
    assert all(s.index % 2 == 0 for ss in splits.values() for s in ss)
    assert [s.index for s in splits["test"]] == [r for r in halves["test"] if r % 2 == 0][:4]


def test_model_keep_and_the_manifest_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from mfutils.data.datasets import SplitTooSmallError, load_split
    from mfutils.model.loading import random_model
    from mfutils.study.mc2_eval import model_keep, scorable
    from mfutils.study.splits import write_manifest

    recs = _records(8)
    mm = random_model("llava", words=["red", "blue", "what", "color", "?", "a", "star", "."], n_layers=1)
    probe = mc2.record_samples(recs, [np.zeros((8, 8, 3), dtype=np.uint8)] * 8, instructions=("image",))
    ok, dropped, report = model_keep(mm, model_filter=False)(probe, 32)
    assert (ok, dropped, report) == (*scorable(mm, probe), None)
    monkeypatch.setenv("MF_OUT", str(tmp_path / "out"))
    for r in recs:
        Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{r['image_id']}.jpg")
    (tmp_path / "mc2.json").write_text(__import__("json").dumps(recs))
    sizes = {"identify": 2, "test": 2}
    # the random model knows none of the 8 records from each modality alone: the filtered splits are empty, an
    # error that says so (a split far below its size is never silent)
    with pytest.raises(SplitTooSmallError, match=r"split 'identify' has 0 samples, 2 were asked for.*the per-model "
                       r"filter kept 0 of the 4 records it probed.*model_filter=False"):
        write_manifest("random:llava", sizes, dataset="mc2", mc2_json=str(tmp_path / "mc2.json"),
                       coco_root=str(tmp_path), mm=mm)
    man = write_manifest("random:llava", sizes, dataset="mc2", mc2_json=str(tmp_path / "mc2.json"),
                         coco_root=str(tmp_path), mm=mm, model_filter=False)
    assert man["filtered_for"] is None and man["build"]["model_filter"] is False and "filter" not in man["build"]
    assert man["model_filter"] == {"asked": False, "default": True, "applied": False}
    for name in sizes:
        assert len(load_split("random:llava", name)) == man["splits"][name]["n"] == sizes[name]
    plain = write_manifest("random:llava", sizes, dataset="mc2", mc2_json=str(tmp_path / "mc2.json"),
                           coco_root=str(tmp_path))
    assert plain["filtered_for"] is None and plain["build"]["model_filter"] is False
    assert [len(e["keys"]) for e in plain["splits"].values()] == [2, 2]
