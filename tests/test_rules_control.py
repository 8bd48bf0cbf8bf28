"""The rules of C6-C9 (mfutils.present.rules_control), original and amended, on constructed documents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mfutils.core.paths import results_dir
from mfutils.present import report, rules_control as rc
from mfutils.present.rules_common import NA, NOT, PARTLY, REPRODUCED

from control_docs import doc04, doc05, doc06, null, prop, pval, summ  # noqa: F401  (shared builders)


@pytest.fixture(scope="module")
def th() -> dict[str, float]:
    claims = report.load_claims()
    return {**claims["thresholds"], **claims["amendments"]["thresholds"]}


def test_c6_reads_its_rule_unchanged_with_n_and_intervals(th: dict[str, float]) -> None:
    v, text = rc.c6_original({"04": doc04()}, th)
    assert v == REPRODUCED and "n=400" in text and "[0.43, 0.53]" in text and "k=2" in text
    assert rc.c6_original({"04": doc04(drop=0.2, lo=0.1)}, th)[0] == PARTLY
    assert rc.c6_original({"04": doc04(drop=0.2, lo=-0.1)}, th)[0] == NOT
    assert report.RULES["C6"].amended is None


def test_c9_original_and_amended(th: dict[str, float]) -> None:
    # the original rule on the original keys: 0.48 does not exceed the 10 sets' 95th percentile 0.50 -> partly
    assert rc.c9_original({"04": doc04()}, th)[0] == PARTLY
    assert rc.c9_original({"04": doc04(old_p95=0.3)}, th)[0] == REPRODUCED
    assert rc.c9_original({"04": doc04(old_mean=0.6, old_p95=0.7)}, th)[0] == NOT
    # amended (A1): p <= 0.05 and at least twice the random mean
    v, text = rc.c9_amended({"04": doc04(count=0)}, th)
    assert v == REPRODUCED and "200 random sets" in text and "61 non-identified" in text and "resolution 0.005" in text
    assert rc.c9_amended({"04": doc04(count=20)}, th)[0] == PARTLY            # p = 21/201 > 0.05, above the interval
    assert rc.c9_amended({"04": doc04(count=0, ctrl_drop=0.05, ctrl_mean=0.03)}, th)[0] == PARTLY   # < 2x the mean
    assert rc.c9_amended({"04": doc04(count=100, ctrl_drop=0.035, ctrl_mean=0.03, ctrl_half=0.01)}, th)[0] == NOT
    assert (report.RULES["C9"].amended, report.RULES["C9"].amendment) == (rc.c9_amended, "A1")


def test_c8_original_and_amended(th: dict[str, float]) -> None:
    assert rc.c8_original({"05": doc05()}, th)[0] == PARTLY                   # 0.13 >= 0.10 and above 0.11
    assert rc.c8_original({"05": doc05(rnd=0.2)}, th)[0] == NOT
    v, text = rc.c8_amended({"05": doc05(rate=0.5, count=0)}, th)
    assert v == REPRODUCED and "n=74" in text and "alpha=2.0" in text and "damage" in text and "(n=30)" in text
    assert rc.c8_amended({"05": doc05(rate=0.2, count=3)}, th)[0] == PARTLY
    assert rc.c8_amended({"05": doc05(rate=0.5, count=60)}, th)[0] == NOT      # p = 61/201: not specific
    assert rc.c8_amended({"05": doc05(rate=0.05, count=0)}, th)[0] == NOT
    assert rc.c8_amended({"05": doc05(n_eval=15)}, th)[0] == NA               # fewer than min_failed held out
    assert report.RULES["C8"].amendment == "A2+A8"


def test_c7_original_and_amended(th: dict[str, float]) -> None:
    r = {"04": doc04(), "06": doc06(max_drop=0.03)}
    assert rc.c7_original(r, th)[0] == NOT                                    # 0.23 on every prompt
    v, text = rc.c7_amended(r, th)
    assert v == REPRODUCED and "118/300" in text and "no held-out prompt in image_only" in text and "(n=82)" in text
    assert rc.c7_amended({**r, "06": doc06(max_drop=0.1)}, th)[0] == PARTLY
    assert rc.c7_amended({**r, "06": doc06(max_drop=0.2)}, th)[0] == NOT
    assert rc.c7_amended({"04": doc04(lo=-0.01), "06": doc06()}, th)[0] == NA   # C6's interval includes 0
    assert rc.c7_amended({"06": doc06()}, th)[0] == NA                          # no 04 document
    assert rc.c7_amended({**r, "06": doc06(cats=())}, th)[0] == NA              # no held-out prompt at all
    assert report.RULES["C7"].amendment == "A6"


def _write(model: str, name: str, doc: dict[str, Any]) -> None:
    (results_dir(model) / f"{name}.json").write_text(json.dumps(doc))


def test_report_shows_the_original_verdict_beside_the_amended_one_for_a_seen_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MF_OUT", str(tmp_path))
    _write("tiny", "04_block_heads", doc04())
    _write("tiny", "05_amplification", doc05(rate=0.12, count=90))
    _write("tiny", "06_capability_retention", doc06(max_drop=0.03))
    v = {x.claim: x for x in report.assess("tiny")}
    assert (v["C9"].verdict, v["C9"].original_verdict, v["C9"].amendment) == (REPRODUCED, PARTLY, "A1")
    assert (v["C8"].verdict, v["C8"].original_verdict) == (NOT, PARTLY)
    assert (v["C7"].verdict, v["C7"].original_verdict) == (REPRODUCED, NOT)
    assert v["C6"].verdict == REPRODUCED and v["C6"].original_verdict is None
    # a model whose results were not seen is judged by the amended rules alone
    _write("random:llava", "04_block_heads", doc04())
    w = report.verdict("random:llava", "C9")
    assert w.verdict == REPRODUCED and w.original_verdict is None


def test_null_numbers_do_not_break_the_amended_rules(th: dict[str, float]) -> None:
    # a random model can follow nothing: drops and p-values are undefined (NaN written as null)
    nan_null = {"mean": None, "lo": None, "hi": None, "sd": None, "p95": None, "n": 0}
    nan_p = {"p": None, "count": 0, "n": 0, "resolution": None}
    b = doc04()
    b["relative_drop"] = {"mean": None, "lo": None, "hi": None, "n": 32}
    b["control"].update({"identified_relative_drop": {"mean": None, "lo": None, "hi": None, "n": 32},
                         "null": nan_null, "empirical_p": nan_p, "relative_drops": [None] * 200})
    for q in b["control"]["per_instruction"].values():
        q.update({"identified_relative_drop": {"mean": None, "lo": None, "hi": None, "n": 16}, "null": nan_null,
                  "empirical_p": nan_p})
    assert rc.c9_amended({"04": b}, th)[0] == NOT
    a = doc05()
    a["held_out"].update({"alpha": None, "recovery": {"rate": None, "lo": None, "hi": None, "k": 0, "n": 74}})
    a["held_out"]["random"].update({"null": nan_null, "empirical_p": nan_p})
    assert rc.c8_amended({"05": a}, th)[0] == NOT
    c = doc06()
    c["held_out"]["max_drop_identified"] = None
    c["held_out"]["random"].update({"max_null": nan_null, "empirical_p": nan_p})
    assert rc.c7_amended({"04": doc04(), "06": c}, th)[0] == NOT
