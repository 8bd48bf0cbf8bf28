"""The rules read from notebook 08 (where the instruction stands): C14 (ours; A9) and C10 within a position pool (A8);
C6 / C9 on the shifted test split (A9) are in ``report_position``. ``RULES``: claim id -> ``rules_common.Rule``.

Public API
----------
RULES                                   {"C14": Rule}
c14(results, th) -> (verdict, text)     A9's rule on ``08_instruction_position.json``
c10_position(doc08, th) -> (verdict, text)   A8's C10 on the failure pool of ``doc08`` (a position's pool)
uses_position_pool(doc) -> bool         whether a notebook 05 / 08 document read a position's pool (A8; rules_common)

Example::

    verdict, text = c14({"08": read_results("smol", "08_instruction_position")}, thresholds)
"""

from __future__ import annotations

from typing import Any

from mfutils.present.rules_common import (NA, NOT, PARTLY, REPRODUCED, Rule, describe, fmt, num, significant,
                                          strongest, uses_position_pool)

__all__ = ["RULES", "c14", "c10_position", "uses_position_pool"]


def _ci(e: dict[str, Any], value: str = "value", nd: int = 2) -> str:
    return f"{fmt(e[value], nd)} [{fmt(e['lo'], nd)}, {fmt(e['hi'], nd)}]"


def c14(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    """A9: (a) follow-image MFR first - standard below 0 (Newcombe); (b) S_first - S_standard below 0; (c) S_direct
    likewise (bootstrap intervals over pairs)."""
    d = r["08"]
    if not d["applicable"]:
        return NA, f"not measured: {d['why']}"
    a, cmp = d["c14_a"]["first"], d["effect"]["compare"]["first"]
    beh = d["behaviour"]["positions"]
    f, s = beh["first"]["follow_image"], beh["standard"]["follow_image"]
    eff = d["effect"]["per_position"]
    text = (f"(a) follow-image MFR {fmt(f['rate'], 3)} at first (n={f['n']}) vs {fmt(s['rate'], 3)} at standard "
            f"(n={s['n']}): difference {_ci(a, 'diff', 3)} (Newcombe 95%); (b) instruction effect S {fmt(eff['first']['S']['mean'])} "
            f"vs {fmt(eff['standard']['S']['mean'])} log-odds, difference {_ci(cmp['S'])} (bootstrap, "
            f"n={cmp['S']['n1']} and {cmp['S']['n2']} pairs); (c) read at the answer position S_direct difference "
            f"{_ci(cmp['S_direct'])}; baseline B difference {_ci(cmp['B'])}")
    a_ok, b_ok, c_ok = num(a["hi"]) < 0, num(cmp["S"]["hi"]) < 0, num(cmp["S_direct"]["hi"]) < 0   # null: not below 0
    text += f" [(a) {a_ok}, (b) {b_ok}, (c) {c_ok}]"
    if not a_ok:
        return NOT, text
    return (REPRODUCED if b_ok and c_ok else PARTLY if b_ok or c_ok else NOT), text


def _rom(curve: dict[str, Any]) -> dict[str, Any]:
    if not curve.get("n"):
        return {"start": [], "inssd": [], "lo": [], "hi": [], "n": 0}
    e = curve["ratio_of_means"]
    return {"start": curve["start"], "inssd": e["value"], "lo": e["lo"], "hi": e["hi"], "n": curve["n"]}


def c10_position(d: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    """A8: C10's deep clause on the succeeded and failed samples of one position's pool (ratio of means, A3; A4's
    condition); the shallow clause where its edges exist at that position, "not testable" where they do not."""
    fc, L = d["failure"], d["n_layers"]
    n = fc["n"]
    head = (f"A8, pool {fc['pool']} (instruction position {fc['position']}), ratio of means (A3): failed n={n['failed']} "
            f"(arbitration {n['failed_arbitration']}), succeeded n={n['succeeded']}")
    if n["failed"] == 0 or not fc["edges"]:
        return NA, head + "; no failed samples"
    ko = fc["edges"]
    d_s = strongest(_rom(ko["instruction->last"]["succeeded"]), L, True)
    d_f = strongest(_rom(ko["instruction->last"]["failed"]), L, True)
    shallow_edges = [e for e in ("image->instruction", "context->instruction") if fc["present"][e]]

    def shallow(sub: str) -> dict[str, float] | None:
        es = [e for e in (strongest(_rom(ko[x][sub]), L, False) for x in shallow_edges) if e]
        return min(es, key=lambda e: e["mean"]) if es else None

    s_s, s_f = (shallow("succeeded"), shallow("failed")) if shallow_edges else (None, None)
    text = (f"{head}; deep instruction->last: succeeded {describe(d_s)}, failed {describe(d_f)}; shallow transfer into "
            "the instruction: " + (f"succeeded {describe(s_s)}, failed {describe(s_f)}" if shallow_edges else
                                   "not testable (image->instruction and context->instruction do not exist at this "
                                   "position)"))
    if n["failed_arbitration"] < th["position_min_failed"] or d_s is None or d_f is None:
        return NA, text + f" (arbitration failures: {n['failed_arbitration']}, at least {th['position_min_failed']:g} needed)"
    if not significant(d_s, th["effect"]):
        return NA, text + " (the succeeded samples' deep effect is not significant: nothing to compare with, A4)"
    deep_ok = d_f["mean"] > 0.5 * d_s["mean"]
    if not shallow_edges:
        return (PARTLY if deep_ok else NOT), text
    shallow_ok = s_s is not None and s_f is not None and s_f["mean"] <= 0.5 * s_s["mean"] and s_s["mean"] < 0
    return (REPRODUCED if deep_ok and shallow_ok else PARTLY if deep_ok else NOT), text


RULES: dict[str, Rule] = {"C14": Rule(("08",), c14)}
