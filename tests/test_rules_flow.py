"""The amended rules of notebook 02 (mfutils.present.rules_flow; amendments A3, A4, A5 of paper/claims.yaml) on
constructed results: they read the ratio of means and the baselines, the original rules keep their keys."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from mfutils.present import rules_flow
from mfutils.present.report import load_claims
from mfutils.present.rules_common import NA, NOT, PARTLY, REPRODUCED

L = 8


def _est(values: list[float], half: float = 0.02) -> dict[str, list[float]]:
    return {"value": values, "lo": [v - half for v in values], "hi": [v + half for v in values]}


def _curve(mor: list[float], rom: list[float] | None = None, n: int = 100) -> dict[str, Any]:
    """A knockout summary: the mean of ratios ``mor`` (the original keys) and the ratio of means ``rom``."""
    rom = mor if rom is None else rom
    return {"start": list(range(L)), "inssd": mor, "lo": [v - 0.02 for v in mor], "hi": [v + 0.02 for v in mor],
            "flip": [0.0] * L, "n": n, "median": _est(rom), "ratio_of_means": _est(rom),
            "strata": {"small_margin": 1.0, "small": {"n": 10, "mean_of_ratios": _est(mor), "ratio_of_means": _est(rom)},
                       "large": {"n": n - 10, "mean_of_ratios": _est(mor), "ratio_of_means": _est(rom)}}}


def _rate(values: list[float], half: float = 0.02, n: int = 100) -> dict[str, Any]:
    return {"rate": values, "lo": [v - half for v in values], "hi": [v + half for v in values], "n": n}


def _flow(shallow: float = -0.5, deep: float = -0.8, failed_deep: float = -0.1, succeeded_deep: float | None = None,
          n_failed: int = 50) -> dict[str, Any]:
    shallow_c = _curve([shallow] * 4 + [0.0] * 4)
    deep_c = _curve([0.0] * 4 + [deep] * 4)
    subsets = ("all", "follow_image", "follow_text", "succeeded", "failed", "failed_arbitration", "failed_perception")
    ko = {e: {s: shallow_c for s in subsets}
          for e in ("image->instruction", "context->instruction", "image+context->instruction", "image->last")}
    ko["instruction->last"] = {s: deep_c for s in subsets}
    sd = deep if succeeded_deep is None else succeeded_deep
    ko["instruction->last"]["succeeded"] = _curve([0.0] * 4 + [sd] * 4)
    for s in ("failed", "failed_arbitration", "failed_perception"):
        ko["instruction->last"][s] = _curve([0.0] * 4 + [failed_deep] * 4, n=n_failed)
    ko["image+context->constraint"] = {"all": _curve([0.0] * L)}
    per_layer = {"mean": [0.1] * L, "lo": [0.05] * L, "hi": [0.2] * L, "n": 100}
    mlp = {"mean": [-0.1] * L, "lo": [-0.2] * L, "hi": [-0.05] * L, "n": 100}
    summed = {"mean": 0.4, "lo": 0.3, "hi": 0.5, "n": 100}
    return {"n_layers": L, "window": 1,
            "n": {"test": 100, "failed": n_failed, "system": 50, "instruction_last": 50, "failed_test": min(10, n_failed),
                  "failed_fail_pool": n_failed - min(10, n_failed), "failed_arbitration": n_failed * 2 // 5,
                  "failed_perception": n_failed - n_failed * 2 // 5},
            "knockout": ko, "controls": {"system": {"image+context->system": {"all": _curve([0.0] * L)}}},
            "ldar": {"anchor_last": _rate([0.5] * 5 + [0.97] * 4), "anchor_mean": _rate([0.5] * 9),
                     "last": _rate([0.5] * 8 + [1.0]),
                     "random": {**_rate([0.5] * 9), "groups": ["image", "context"], "picked": {"image": 60, "context": 40}}},
            "dla": {"attn": {"follow_image": per_layer, "follow_text": per_layer},
                    "mlp": {"follow_image": mlp, "follow_text": mlp},
                    "deep_sum": {"layers": [4, 7], "attn": {"follow_image": summed, "follow_text": summed},
                                 "mlp": {"follow_image": {**summed, "mean": -0.4, "lo": -0.5, "hi": -0.3},
                                         "follow_text": summed}}},
            "stability": {"fractions": [0.2, 1.0], "corr": {"image->instruction": [0.5, 1.0]}, "n_draws": 10,
                          "n": {"image->instruction": 100},
                          "ratio_of_means": {"corr": {"image->instruction": [0.95, 1.0]},
                                             "lo": {"image->instruction": [0.9, 1.0]},
                                             "hi": {"image->instruction": [0.99, 1.0]}, "n_draws": 200}}}


@pytest.fixture(scope="module")
def th() -> dict[str, float]:
    claims = load_claims()
    return {**claims["thresholds"], **claims["amendments"]["thresholds"]}


def _judge(flow: dict[str, Any], cid: str, th: dict[str, float]) -> tuple[tuple[str, str], tuple[str, str]]:
    rule = rules_flow.RULES[cid]
    amended = rule.amended(copy.deepcopy({"02": flow}), th) if rule.amended else None
    return rule.original({"02": flow}, th), amended  # type: ignore[return-value]


def test_every_amended_rule_is_registered_with_an_amendment_of_claims_yaml() -> None:
    claims = load_claims()["amendments"]["list"]
    expect = {"C1": "A3", "C2": "A3", "C3": "A5", "C4": None, "C10": "A3+A4+A8", "C11": "A3", "C12": "A3"}
    for cid, aid in expect.items():
        rule = rules_flow.RULES[cid]
        assert rule.amendment == aid and (rule.amended is None) == (aid is None), cid
        for a in (aid or "").split("+") if aid else ():
            assert cid in claims[a]["claims"], (cid, a)
    assert all(c in claims["A3"]["claims"] for c in ("C1", "C2", "C10", "C11", "C12"))


def test_amended_rules_read_the_ratio_of_means(th: dict[str, float]) -> None:
    flow = _flow()
    for cid in ("C1", "C2", "C11"):
        (ov, _), (av, text) = _judge(flow, cid, th)
        assert ov == av == REPRODUCED, cid
        assert "ratio of means" in text
    # a mean of ratios blown up by tiny margins while the ratio of means sees no effect: the original rules say
    # reproduced, the amended ones not
    for edge in ("image->instruction", "context->instruction"):
        for s in flow["knockout"][edge]:
            flow["knockout"][edge][s] = _curve([-5.0] * 4 + [0.0] * 4, [-0.01] * 4 + [0.0] * 4)
    (ov, _), (av, _) = _judge(flow, "C1", th)
    assert (ov, av) == (REPRODUCED, NOT)


def test_c10_is_not_applicable_without_a_significant_succeeded_effect(th: dict[str, float]) -> None:
    (ov, _), (av, text) = _judge(_flow(), "C10", th)
    assert ov == av == REPRODUCED
    assert "by source test 10, fail_pool 40" in text and "arbitration 20 (share 0.40 [" in text
    # no deep effect in succeeded samples: the original rule says not reproduced, A4 not applicable
    (ov, _), (av, text) = _judge(_flow(succeeded_deep=-0.01), "C10", th)
    assert (ov, av) == (NOT, NA) and "nothing to compare" in text
    # too few failures: not applicable under both
    (ov, _), (av, _) = _judge(_flow(n_failed=5), "C10", th)
    assert ov == av == NA
    # failures with a deep effect as strong as the succeeded ones: the deep part fails
    (ov, _), (av, _) = _judge(_flow(failed_deep=-0.8), "C10", th)
    assert ov == av == NOT


def test_c3_compares_the_anchor_with_the_random_token_baseline(th: dict[str, float]) -> None:
    flow = _flow()
    (ov, otext), (av, text) = _judge(flow, "C3", th)
    assert ov == av == REPRODUCED
    assert "random non-instruction token 0.500 [0.480, 0.520] (n=100)" in text and "trivially 1" in text
    assert "last position 0.500 [0.480, 0.520] (n=100)" in text
    # the baseline as high as the anchor: the anchor's interval is not above it
    flow["ldar"]["random"] = {**_rate([0.97] * 9), "groups": ["image"], "picked": {"image": 100}}
    (ov, _), (av, text) = _judge(flow, "C3", th)
    assert (ov, av) == (REPRODUCED, NOT) and "interval above it: False" in text
    flow["ldar"]["anchor_last"] = _rate([0.5] * 5 + [0.8] * 4)
    flow["ldar"]["random"] = {**_rate([0.5] * 9), "groups": ["image"], "picked": {"image": 100}}
    assert _judge(flow, "C3", th)[1][0] == PARTLY


def test_c4_and_c12_texts_carry_n_and_intervals(th: dict[str, float]) -> None:
    (v4, t4), _ = _judge(_flow(), "C4", th)
    assert v4 == REPRODUCED
    assert "summed attention attribution 0.40 [0.30, 0.50] (n=100" in t4
    assert "summed MLP attribution -0.40 [-0.50, -0.30] (n=100" in t4
    (ov, _), (av, text) = _judge(_flow(), "C12", th)
    assert (ov, av) == (NOT, REPRODUCED)                       # 0.5 (mean of ratios) vs 0.95 (ratio of means)
    assert "0.95 [0.90, 0.99]" in text and "200 draws of 20 of n=100" in text


def test_every_number_of_an_amended_text_has_an_interval_or_a_count(th: dict[str, float]) -> None:
    flow = _flow()
    for cid in ("C1", "C2", "C3", "C10", "C11"):
        text = _judge(flow, cid, th)[1][1]
        assert "n=" in text and re.search(r"-?\d\.\d+ \[-?\d\.\d+, -?\d\.\d+\]", text), cid


def test_empty_subsets_and_missing_keys(th: dict[str, float]) -> None:
    flow = _flow()
    flow["knockout"]["instruction->last"]["succeeded"] = {"start": [], "inssd": [], "lo": [], "hi": [], "flip": [],
                                                          "n": 0}
    assert _judge(flow, "C10", th)[1][0] == NA                 # no succeeded sample: nothing to compare
    from mfutils.present.report import _tagged
    from mfutils.present.rules_common import MissingMeasurement

    old = _flow()
    del old["knockout"]["instruction->last"]["all"]["ratio_of_means"]
    with pytest.raises(MissingMeasurement):
        rules_flow.RULES["C2"].amended({"02": _tagged(old, "02_information_flow.json")}, th)   # type: ignore[misc]
    assert rules_flow.RULES["C2"].original({"02": _tagged(old, "02_information_flow.json")}, th)[0] == REPRODUCED
