"""The verdict rules of paper/claims.yaml, applied by mfutils.present.report, on constructed results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mfutils.present import report
from mfutils.present.rules_common import Rule

from control_docs import doc04, doc05, doc06
from mfutils.core.paths import figures_dir, output_root, results_dir


def _curve(values: list[float], half_width: float = 0.02, n: int = 100) -> dict:
    lo, hi = [v - half_width for v in values], [v + half_width for v in values]
    return {"start": list(range(len(values))), "inssd": values, "lo": lo, "hi": hi, "flip": [0.0] * len(values),
            "n": n, "ratio_of_means": {"value": values, "lo": lo, "hi": hi}}


def _flow(shallow: float, deep: float, failed_deep: float, n_failed: int = 50) -> dict:
    L = 8
    c_in = _curve([shallow] * 4 + [0.0] * 4)
    c_last = _curve([0.0] * 4 + [deep] * 4)
    ko = {e: {s: c_in for s in ("all", "follow_image", "follow_text", "succeeded", "failed")}
          for e in ("image->instruction", "context->instruction", "image+context->instruction")}
    ko["instruction->last"] = {s: c_last for s in ("all", "follow_image", "follow_text", "succeeded")}
    ko["instruction->last"]["failed"] = ko["instruction->last"]["failed_arbitration"] = _curve([0.0] * 4 + [failed_deep] * 4)
    ko["image+context->constraint"] = {"all": _curve([0.0] * 8)}
    rate = {"rate": [0.5] * 9, "lo": [0.4] * 9, "hi": [0.6] * 9, "n": 100}
    dla = {"mean": [0.1] * 8, "lo": [0.05] * 8, "hi": [0.2] * 8, "n": 100}
    mlp = {"mean": [-0.1] * 8, "lo": [-0.2] * 8, "hi": [-0.05] * 8, "n": 100}
    summed = {"mean": 0.4, "lo": 0.3, "hi": 0.5, "n": 100}
    return {"n_layers": L, "window": 1, "n": {"test": 100, "failed": n_failed, "system": 50, "instruction_last": 50,
                                              "failed_test": 0, "failed_fail_pool": n_failed,
                                              "failed_arbitration": n_failed, "failed_perception": 0},
            "knockout": ko, "controls": {"system": {"image+context->system": {"all": _curve([0.0] * 8)}}},
            "ldar": {"anchor_last": {**rate, "rate": [0.5] * 5 + [0.97] * 4, "lo": [0.4] * 5 + [0.95] * 4},
                     "anchor_mean": rate, "last": rate, "random": {**rate, "picked": {"image": 100}}},
            "dla": {"attn": {"follow_image": dla, "follow_text": dla}, "mlp": {"follow_image": mlp, "follow_text": mlp},
                    "deep_sum": {"attn": {"follow_image": summed}, "mlp": {"follow_image": {**summed, "mean": -0.4}}}},
            "stability": {"fractions": [0.2, 1.0], "corr": {"image->instruction": [0.95, 1.0]}, "n": {"image->instruction": 100},
                          "ratio_of_means": {"corr": {"image->instruction": [0.95, 1.0]}, "lo": {"image->instruction": [0.9, 1.0]},
                                             "hi": {"image->instruction": [0.99, 1.0]}, "n_draws": 200}}}


def _write(model: str, name: str, doc: dict) -> None:
    (results_dir(model) / f"{name}.json").write_text(json.dumps(doc))


@pytest.fixture
def out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MF_OUT", str(tmp_path))
    return "random:llava"


def _verdicts(model: str) -> dict[str, str]:
    return {v.claim: v.verdict for v in report.assess(model)}


def test_missing_results_are_reported_as_not_measured(out: str) -> None:
    assert set(_verdicts(out).values()) == {"not measured"}


def test_flow_rules(out: str) -> None:
    _write(out, "02_information_flow", _flow(shallow=-0.5, deep=-0.8, failed_deep=-0.1))
    v = _verdicts(out)
    assert v["C1"] == "reproduced" and v["C2"] == "reproduced" and v["C3"] == "reproduced"
    assert v["C4"] == "reproduced" and v["C10"] == "reproduced" and v["C11"] == "reproduced"
    assert v["C12"] == "reproduced"
    _write(out, "02_information_flow", _flow(shallow=-0.01, deep=-0.01, failed_deep=-0.01, n_failed=5))
    v = _verdicts(out)
    assert v["C1"] == "not reproduced" and v["C2"] == "not reproduced" and v["C10"] == "not applicable"
    assert v["C11"] == "not reproduced"


def test_head_rules(out: str) -> None:
    _write(out, "03_head_identification", {"n_identify": 100, "n_layers": 8, "n_heads": 8, "k": 3,
                                           "top_share_of_score": 0.3, "spearman": 0.8, "top_overlap": 0.67})
    # C6 0.66 [0.5, 0.8]; C9: the identified drop beyond every one of 200 random sets (A1) and the 10 old ones
    d04 = doc04(drop=0.66, lo=0.5, old_mean=0.05, old_p95=0.09, count=0, ctrl_drop=0.66, ctrl_mean=0.05)
    _write(out, "04_block_heads", d04)
    # C8: held-out recovery 0.5 of 74 failed samples, no random set as strong (A2); in-sample 0.5 too
    _write(out, "05_amplification", doc05(rate=0.5, count=0, best=0.5, rnd=0.05))
    # C7: a 0.2 drop on the held-out prompts (A6) and on all prompts is beyond retention_partly
    _write(out, "06_capability_retention", doc06(max_drop=0.2, old_max=0.2))
    v = _verdicts(out)
    assert (v["C5"], v["C6"], v["C8"], v["C9"]) == ("reproduced",) * 4
    assert v["C7"] == "not reproduced"  # a 0.2 drop is beyond retention_partly


def test_report_file_has_every_claim(out: str) -> None:
    path = report.write_report(out)
    text = path.read_text()
    assert all(f"| C{i} |" in text for i in range(1, 13))


def test_null_numbers_do_not_break_the_rules(out: str) -> None:
    # a random model can follow nothing: the relative drop is then undefined (NaN written as null)
    nothing = {"rate": 0.0, "lo": 0.0, "hi": 0.1, "k": 0, "n": 32}
    d04 = doc04()
    d04.update({"base": {"all": nothing}, "identified": {"all": nothing},
                "relative_drop": {"mean": None, "lo": None, "hi": None, "n": 32},
                "random_relative_drop": {"mean": None, "sd": None, "p95": None, "values": []}})
    d04["control"].update({"identified_relative_drop": {"mean": None, "lo": None, "hi": None, "n": 32},
                           "relative_drops": [None] * 200,
                           "empirical_p": {"p": None, "count": 0, "n": 0, "resolution": None},
                           "null": {"mean": None, "lo": None, "hi": None, "sd": None, "p95": None, "n": 0}})
    _write(out, "04_block_heads", d04)
    v = _verdicts(out)
    assert v["C6"] == "not reproduced" and v["C9"] == "not reproduced"


def test_claims_file_and_rules_name_the_same_claims() -> None:
    assert list(report.load_claims()["claims"]) == list(report.RULES)
    assert set(report.FIGURES) <= set(report.RULES)


def test_a_bug_in_a_rule_raises_but_an_absent_measurement_is_not_measured(out: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # no results file: "not measured"
    assert report.verdict(out, "C5").verdict == "not measured"
    # the file exists but lacks the key that holds the measurement: "not measured", naming file and key
    _write(out, "03_head_identification", {"n_identify": 100, "n_layers": 8, "n_heads": 8, "k": 3})
    v = report.verdict(out, "C5")
    assert v.verdict == "not measured" and "03_head_identification.json" in v.measured
    assert "top_share_of_score" in v.measured
    # a value of the wrong type is a bug in whatever wrote it: the rule raises
    _write(out, "03_head_identification", {"n_identify": 100, "n_layers": 8, "n_heads": "8", "k": 3,
                                           "top_share_of_score": 0.3, "spearman": 0.8, "top_overlap": 0.67})
    with pytest.raises(TypeError):
        report.verdict(out, "C5")
    # a rule that reads a threshold that does not exist (a KeyError that is no absent measurement) raises
    rule = report.RULES["C5"].original
    monkeypatch.setitem(report.RULES, "C5", Rule(("03",), lambda r, th: rule(r, {**th, "top_share_full": th["nope"]})))
    _write(out, "03_head_identification", {"n_identify": 100, "n_layers": 8, "n_heads": 8, "k": 3,
                                           "top_share_of_score": 0.3, "spearman": 0.8, "top_overlap": 0.67})
    with pytest.raises(KeyError, match="nope"):
        report.assess(out)
    # an IndexError inside a rule raises too
    monkeypatch.setitem(report.RULES, "C5", Rule(("03",), lambda r, th: ([][0], "")))
    with pytest.raises(IndexError):
        report.verdict(out, "C5")


def test_verdict_is_assess_for_one_claim(out: str) -> None:
    _write(out, "02_information_flow", _flow(shallow=-0.5, deep=-0.8, failed_deep=-0.1))
    by_claim = {v.claim: v for v in report.assess(out)}
    for cid in report.RULES:
        assert report.verdict(out, cid) == by_claim[cid]
    with pytest.raises(ValueError, match="unknown claim 'C99'"):
        report.verdict(out, "C99")


def test_verdict_figures_are_relative_to_the_output_root(out: str) -> None:
    from mfutils.core.paths import figures_dir

    (figures_dir(out) / "03_head_scores.png").write_bytes(b"")
    v = report.verdict(out, "C5")
    assert v.figure == "figures/random-llava/03_head_scores.png"


# --- the combined report of the shipped models (paper/REPORT.md) ---------------------------------------------

def _heads03(n_layers: int, n_heads: int, identified: list[list[int]], share: float, lo: float, hi: float) -> dict:
    return {"n_identify": 120, "n_layers": n_layers, "n_heads": n_heads, "k": len(identified), "identified": identified,
            "top_share_of_score": share, "spearman": 0.8, "top_overlap": 0.67,
            "intervals": {"n_boot": 1000, "top_share_of_score": {"value": share, "lo": lo, "hi": hi, "n": 120},
                          "spearman": {"value": 0.8, "lo": 0.7, "hi": 0.9, "n": 120},
                          "top_overlap": {"value": 0.67, "lo": 0.33, "hi": 1.0, "n": 120, "count": 2, "k": 3}}}


def _row(text: str, first_cell: str) -> list[str]:
    """The cells of the Markdown table row whose first cell is ``first_cell``."""
    line = next(x for x in text.splitlines() if x.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split(" | ")]


def test_combined_report_puts_the_shipped_models_side_by_side(out: str) -> None:
    from mfutils.model.loading import SHIPPED

    assert set(SHIPPED) >= {"smol", "tiny"}
    _write("tiny", "02_information_flow", _flow(shallow=-0.5, deep=-0.8, failed_deep=-0.1))
    _write("smol", "02_information_flow", _flow(shallow=-0.01, deep=-0.01, failed_deep=-0.01, n_failed=5))
    path = report.write_report("tiny")
    assert path == report.write_shipped_report() == output_root() / "paper" / "REPORT.md"
    text = path.read_text()
    assert "| claim | paper | `smol` | `tiny` | changes |" in text
    assert all(len(_row(text, f"C{i}")) == 5 for i in range(1, 13))  # the first row of each claim: side by side
    c1 = _row(text, "C1")
    assert c1[2].startswith("[**not reproduced**](#model-smol)<br>") and c1[3].startswith("[**reproduced**](#model-tiny)<br>")
    for cell in c1[2:4]:                         # under each verdict, the measurement that decided it, with its n
        assert "strongest shallow" in cell and "(n=" in cell and "; " not in cell.split("<br>", 1)[1], cell
    assert c1[4] == "yes"
    assert _row(text, "C5")[2:] == ["[**not measured**](#model-smol)", "[**not measured**](#model-tiny)", "—"]
    # one section per shipped model, smol first; rules and amendments once, at the end
    assert text.index("## Model `smol`") < text.index("## Model `tiny`") < text.index("## Rules")
    assert text.count("## Rules") == 1 and text.count("## Amendments") == 1
    assert text.index("## Rules") < text.index("## Amendments")
    # figure links stay relative to paper/
    (figures_dir("tiny") / "02_ldar.png").write_bytes(b"")
    assert "[02_ldar](../figures/tiny/02_ldar.png)" in report.write_shipped_report().read_text()


def test_a_shipped_model_without_results_reads_not_measured(out: str) -> None:
    _write("tiny", "04_block_heads", doc04(drop=0.66, lo=0.5))
    text = report.write_report("smol").read_text()   # nothing at all for smol
    for i in (*range(1, 13), 14):
        assert f"| C{i} | " in text and "[**not measured**](#model-smol)" in _row(text, f"C{i}")[2]
    section = text.split("## Model `smol`")[1].split("## Model `tiny`")[0]
    assert "Summary: not measured: 13" in section and "no results file under `results/smol/`" in section
    # each amendment names the models it had seen: smol was seen for A8-A15 only, tiny for all of them
    assert "had been seen when amendments A8, A9, A10, A11, A12, A13, A14, A15 were written" in section
    tiny = text.split("## Model `tiny`")[1].split("## Rules")[0]
    assert "had been seen when amendments A1, A2" in tiny and "| C6 | **reproduced** |" in tiny
    contrast = text.split("## Contrast")[1].split("## Model")[0]
    assert _row(contrast, "layers x heads") == ["layers x heads", "not measured", "not measured"]
    assert _row(contrast, "relative MFR drop with them blocked (C6), 95% interval")[1:] == \
        ["not measured", "0.66 [0.50, 0.71] (n=400)"]


def test_contrast_table_reads_the_results(out: str) -> None:
    # smol: 30 layers, the strongest instruction->last window at layer 21; tiny: the 8-layer fake flow
    values = [0.0] * 30
    values[21], values[3] = -0.6, -0.3
    flow30 = {"n_layers": 30, "window": 1, "knockout": {"instruction->last": {"all": _curve(values, 0.05, n=300)}}}
    _write("smol", "02_information_flow", flow30)
    _write("smol", "03_head_identification", _heads03(30, 9, [[20, 4], [21, 0], [25, 8]], 0.37, 0.31, 0.42))
    _write("smol", "04_block_heads", doc04(drop=0.61, lo=0.52))
    _write("tiny", "02_information_flow", _flow(shallow=-0.5, deep=-0.8, failed_deep=-0.1))
    text = report.write_shipped_report().read_text()
    contrast = text.split("## Contrast")[1].split("## Model")[0]
    assert _row(contrast, "layers x heads")[1:] == ["30 x 9", "8 x (not measured)"]
    assert _row(contrast, "strongest instruction->last knockout: where (C2)")[1:] == \
        ["layer 21 of 0-29 (relative depth 0.72, deep half)", "layer 4 of 0-7 (relative depth 0.57, deep half)"]
    assert _row(contrast, "its INSSD, ratio of means (A3), 95% interval")[1:] == \
        ["-0.60 [-0.65, -0.55] (n=300)", "-0.80 [-0.82, -0.78] (n=100)"]
    assert _row(contrast, "identified heads (layer, head) (C5)")[1:] == \
        ["(20,4), (21,0), (25,8): top 3 of 270", "not measured"]
    assert _row(contrast, "their share of the positive score mass (C5), 95% interval")[1] == \
        "0.37 [0.31, 0.42] (n=120); uniform 0.01"
    assert _row(contrast, "relative MFR drop with them blocked (C6), 95% interval")[1:] == \
        ["0.61 [0.52, 0.66] (n=400)", "not measured"]
    # the verdicts of the partial smol flow document are "not measured" where a key is absent, not an error
    assert "[**not measured**](#model-smol)" in _row(text, "C1")[2]


def test_a_random_model_still_gets_its_own_report(out: str) -> None:
    _write(out, "02_information_flow", _flow(shallow=-0.5, deep=-0.8, failed_deep=-0.1))
    path = report.write_report(out)
    assert path == results_dir(out) / "REPORT.md"
    text = path.read_text()
    assert text.startswith(f"# Claims report — model `{out}`") and "## Model `" not in text
    assert "| claim | paper | verdict | measured | figure |" in text and "| C1 |" in text
    assert not (output_root() / "paper" / "REPORT.md").exists()
