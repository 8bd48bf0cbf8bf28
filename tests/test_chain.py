"""The whole chain end to end with smoke=True: on the default model and on the tiny random model of every
architecture adapter (random weights: smoke only; they test the code path, not the claims)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mfutils.run.chain import PLANNED, built_notebooks, run_chain
from mfutils.core.paths import checkpoint_dir, model_slug
from mfutils.model.loading import SHIPPED


@pytest.mark.parametrize("model", ["tiny", "random:llava", "random:qwen2_vl", "random:qwen2_5_vl", "random:internvl"])
def test_chain_smoke(model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if model == "tiny" and not (checkpoint_dir() / "model.safetensors").exists():
        pytest.fail("the shipped model checkpoints/tiny-llava is missing: run `make retrain`")
    monkeypatch.setenv("MF_OUT", str(tmp_path))
    assert run_chain(model=model, smoke=True) == 0
    slug = model_slug(model) + "--smoke"           # a smoke run never writes the shipped model's folders
    assert not (tmp_path / "figures" / model_slug(model)).exists() and not (tmp_path / "results" / model_slug(model)).exists()
    for nb in built_notebooks():
        executed = tmp_path / "figures" / slug / "notebooks" / nb.name
        assert executed.exists(), executed
        cells = json.loads(executed.read_text())["cells"]
        assert not any(o.get("output_type") == "error" for c in cells for o in c.get("outputs", []))
    assert list((tmp_path / "figures" / slug).glob("*.png")), "no figure was written"
    from mfutils.study.results import non_finite
    nan = {p.name: non_finite(p) for p in (tmp_path / "results" / slug).glob("*.json") if non_finite(p)}
    assert nan == {}, f"NaN or Infinity in results files: {nan}"
    timings = json.loads((tmp_path / "figures" / slug / "notebooks" / "chain_timings.json").read_text())
    assert set(timings["seconds"]) == {nb.stem for nb in built_notebooks()}
    built = {nb.stem for nb in built_notebooks()}
    analyses_built = all(stem in built for stem, _ in PLANNED[2:7])
    shipped = model in SHIPPED
    report = tmp_path / f"results/{slug}/REPORT.md"      # a smoke run's own report, even of a shipped model
    assert not (tmp_path / "paper" / "REPORT.md").exists(), "a smoke run must not write the shipped report"
    if analyses_built:
        text = report.read_text()
        for cid in [f"C{i}" for i in range(1, 13)]:
            assert f"| {cid} |" in text
        assert "not measured" not in text
