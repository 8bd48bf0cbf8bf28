"""The rules of the information-flow claims (notebook 02): C1, C2, C3, C4, C10, C11, C12. ``RULES``: claim id -> ``rules_common.Rule``.

Each ``cX_original`` is the rule as first written in paper/claims.yaml, on the keys it always read (the mean of
ratios ``inssd``/``lo``/``hi``); each ``cX_amended`` the rule after the amendment it is registered with:
A3 (C1, C2, C11, C12: the ratio of means ``ratio_of_means`` with its bootstrap interval), A4 (C10: A3's
estimator too, and not applicable without a significant succeeded deep effect), A5 (C3: against the
random-token baseline). C4 has no amendment; its text carries the summed attributions' intervals.

Public API
----------
RULES                                   claim id -> Rule(needs, original, amended, amendment)
c2_windows(flow, view) -> (deep, shallow)   C2's strongest instruction->last windows (``rules_common.strongest``
                                        dicts or None), read by ``report_compare`` for the contrast of the models
"""

from __future__ import annotations

import math
from typing import Any, Callable

from mfutils.measure.stats import wilson
from mfutils.present.rules_position import c10_position
from mfutils.present.rules_common import (MISSING, NA, NOT, PARTLY, REPRODUCED, Rule, describe, fmt, significant, strongest,
                                          uses_position_pool)

__all__ = ["RULES", "c2_windows"]

View = Callable[[dict[str, Any]], dict[str, Any]]
_ROM = "ratio of means (A3)"


def _mean_of_ratios(curve: dict[str, Any]) -> dict[str, Any]:
    """A knockout summary as the original rules read it: ``inssd``/``lo``/``hi``, the mean of ratios."""
    return curve


def _ratio_of_means(curve: dict[str, Any]) -> dict[str, Any]:
    """A knockout summary with the ratio of means and its interval in ``inssd``/``lo``/``hi`` (amendment A3),
    so that ``rules_common.strongest`` reads it; an empty summary (n = 0) stays empty."""
    if not curve.get("n"):
        return {"start": [], "inssd": [], "lo": [], "hi": [], "n": 0}
    e = curve["ratio_of_means"]
    return {"start": curve["start"], "inssd": e["value"], "lo": e["lo"], "hi": e["hi"], "n": curve["n"]}


def _c1(r: dict[str, Any], th: dict[str, float], view: View, label: str) -> tuple[str, str]:
    flow = r["02"]
    L, ko = flow["n_layers"], flow["knockout"]
    parts, all_sig, any_sig = [], True, False
    for edge in ("image->instruction", "context->instruction"):
        e_all = strongest(view(ko[edge]["all"]), L, deep=False)
        any_sig |= significant(e_all, th["effect"])
        for sub in ("follow_image", "follow_text"):
            e = strongest(view(ko[edge][sub]), L, deep=False)
            all_sig &= significant(e, th["effect"])
            parts.append(f"{edge} ({sub}): {describe(e)}")
    verdict = REPRODUCED if all_sig else PARTLY if any_sig else NOT
    return verdict, f"strongest shallow {label} — " + "; ".join(parts)


def c1_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    return _c1(r, th, _mean_of_ratios, "INSSD")


def c1_amended(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    return _c1(r, th, _ratio_of_means, f"INSSD, {_ROM}")


def c2_windows(flow: dict[str, Any], view: View = _ratio_of_means) -> tuple[dict[str, float] | None,
                                                                          dict[str, float] | None]:
    """(deep, shallow): the strongest deep and shallow window of the instruction->last knockout on all samples,
    as C2's rule reads them (``view``: A3's ratio of means by default, ``_mean_of_ratios`` for the original)."""
    c = view(flow["knockout"]["instruction->last"]["all"])
    return strongest(c, flow["n_layers"], True), strongest(c, flow["n_layers"], False)


def _c2(r: dict[str, Any], th: dict[str, float], view: View, label: str) -> tuple[str, str]:
    deep, shallow = c2_windows(r["02"], view)
    if not significant(deep, th["effect"]):
        v = NOT
    elif shallow is None or deep["mean"] <= shallow["mean"]:  # type: ignore[index]
        v = REPRODUCED
    else:
        v = PARTLY
    return v, f"instruction->last strongest deep {label} {describe(deep)}; strongest shallow {describe(shallow)}"


def c2_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    return _c2(r, th, _mean_of_ratios, "INSSD")


def c2_amended(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    return _c2(r, th, _ratio_of_means, f"INSSD, {_ROM}")


def _best_deep_anchor(flow: dict[str, Any]) -> tuple[float, str, int, float, float, int] | None:
    """(rate, read, hidden state, lo, hi, n) of the highest anchor LDAR at a deep hidden state (> L / 2)."""
    L = flow["n_layers"]
    best: tuple[float, str, int, float, float, int] | None = None
    for key in ("anchor_last", "anchor_mean"):
        cur = flow["ldar"][key]
        for i, (rate, lo, hi) in enumerate(zip(cur["rate"], cur["lo"], cur["hi"])):
            if i > L / 2 and rate is not None and not math.isnan(rate) and (best is None or rate > best[0]):
                best = (rate, key, i, lo, hi, cur["n"])
    return best


def c3_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    flow = r["02"]
    best = _best_deep_anchor(flow)
    if best is None:
        return NOT, "no deep LDAR value"
    rate = best[0]
    v = REPRODUCED if rate >= th["ldar_full"] else PARTLY if rate >= th["ldar_partly"] else NOT
    last = flow["ldar"]["last"]
    return v, (f"highest deep LDAR {fmt(rate, 3)} [{fmt(best[3], 3)}, {fmt(best[4], 3)}] ({best[1]}, hidden state {best[2]}, "
               f"n={best[5]}); at the last position the final-layer agreement is {fmt(last['rate'][-1], 3)}")


def _rate(cur: dict[str, Any], i: int) -> str:
    """``rate [lo, hi] (n=...)`` of an LDAR read at hidden state ``i``."""
    return f"{fmt(cur['rate'][i], 3)} [{fmt(cur['lo'][i], 3)}, {fmt(cur['hi'][i], 3)}] (n={cur['n']})"


def _interval(s: dict[str, Any]) -> str:
    """``mean [lo, hi]`` of a ``stats.summarize`` dict."""
    return f"{fmt(s['mean'])} [{fmt(s['lo'])}, {fmt(s['hi'])}]"


def c3_amended(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    flow = r["02"]
    ldar = flow["ldar"]
    last, rand = ldar["last"], ldar["random"]
    trivial = (f"final-layer agreement at the last position {_rate(last, -1)}: trivially 1, the lens of the last "
               "hidden state is the output")
    best = _best_deep_anchor(flow)
    if best is None:
        return NOT, "no deep LDAR value; " + trivial
    rate, read, i, lo, hi, n = best
    above = lo is not None and rand["hi"][i] is not None and lo > rand["hi"][i]
    v = (REPRODUCED if rate >= th["ldar_full"] and above else PARTLY if rate >= th["ldar_partly"] and above else NOT)
    groups = ", ".join(f"{g} {k}" for g, k in rand.get("picked", {}).items() if k)
    return v, (f"highest deep anchor LDAR {fmt(rate, 3)} [{fmt(lo, 3)}, {fmt(hi, 3)}] ({read}, hidden state {i}, n={n}); "
               f"baselines at hidden state {i}: random non-instruction token {_rate(rand, i)} (drawn from: {groups}), "
               f"interval above it: {above}; last position {_rate(last, i)}; {trivial}")


def c4_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    flow = r["02"]
    L = flow["n_layers"]
    a, m = flow["dla"]["attn"]["follow_image"], flow["dla"]["mlp"]["follow_image"]
    if not a.get("n") or len(a.get("mean") or []) < L:       # e.g. an MC2 file of the authors' with one instruction
        return MISSING, f"no follow-image samples in this run's data (n={a.get('n', 0)})"
    deep = [i for i in range(L) if i >= L / 2]
    a_sum, m_sum = sum(a["mean"][i] for i in deep), sum(m["mean"][i] for i in deep)
    a_sig = any(a["lo"][i] > 0 for i in deep)
    m_sig = any(m["hi"][i] < 0 for i in deep)
    attn_ok = a_sum > 0 and a_sig
    v = REPRODUCED if attn_ok and m_sum < 0 and m_sig else PARTLY if attn_ok else NOT
    sums = flow["dla"]["deep_sum"]
    sa, sm = sums["attn"]["follow_image"], sums["mlp"]["follow_image"]
    return v, (f"follow-image samples (n={a['n']}), deep layers {deep[0]}-{deep[-1]}: summed attention attribution "
               f"{_interval(sa)} (n={sa['n']}; a layer significantly > 0: {a_sig}), summed MLP attribution "
               f"{_interval(sm)} (n={sm['n']}; a layer significantly < 0: {m_sig}), in logits of "
               "W_U[instructed] - W_U[other]; sums: mean over samples of the per-sample sum, bootstrap 95% interval")


def _c10_parts(r: dict[str, Any], view: View) -> tuple[Any, Any, Any, Any, str]:
    flow = r["02"]
    L, ko = flow["n_layers"], flow["knockout"]
    d_s = strongest(view(ko["instruction->last"]["succeeded"]), L, True)
    d_f = strongest(view(ko["instruction->last"]["failed"]), L, True)

    def shallow(sub: str) -> dict[str, float] | None:
        es = [e for e in (strongest(view(ko[x][sub]), L, False) for x in ("image->instruction", "context->instruction"))
              if e]
        return min(es, key=lambda e: e["mean"]) if es else None

    s_s, s_f = shallow("succeeded"), shallow("failed")
    text = (f"deep instruction->last: succeeded {describe(d_s)}, failed {describe(d_f)}; shallow transfer into the instruction: "
            f"succeeded {describe(s_s)}, failed {describe(s_f)}")
    return d_s, d_f, s_s, s_f, text


def _shallow_ok(s_s: dict[str, float] | None, s_f: dict[str, float] | None) -> bool:
    return s_s is not None and s_f is not None and s_f["mean"] <= 0.5 * s_s["mean"] and s_s["mean"] < 0


def c10_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    n_f = r["02"]["n"]["failed"]
    d_s, d_f, s_s, s_f, text = _c10_parts(r, _mean_of_ratios)
    if n_f < th["min_failed"] or d_s is None or d_f is None:
        return NA, text + f" (failed samples: {n_f})"
    deep_ok = d_f["mean"] > 0.5 * d_s["mean"] and d_s["mean"] < 0
    return (REPRODUCED if deep_ok and _shallow_ok(s_s, s_f) else PARTLY if deep_ok else NOT), text


def _failure_counts(flow: dict[str, Any]) -> str:
    """The failed samples by source and by kind, with the arbitration share's Wilson interval."""
    n = flow["n"]
    k, n_f = n["failed_arbitration"], n["failed"]
    lo, hi = wilson(k, n_f)
    arb = strongest(_ratio_of_means(flow["knockout"]["instruction->last"]["failed_arbitration"]), flow["n_layers"], True)
    return (f"failed n={n_f}: by source test {n['failed_test']}, fail_pool {n['failed_fail_pool']}; by kind "
            f"arbitration {k} (share {fmt(k / n_f if n_f else math.nan)} [{fmt(lo)}, {fmt(hi)}]), perception "
            f"{n['failed_perception']}; deep instruction->last on arbitration failures {describe(arb)}")


def c10_amended(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    """A3 + A4, and A8: where notebook 08 read a position's pool (smol: ``pool_first``), C10 reads that pool."""
    d08 = r.get("08")
    if (d08 is not None and d08.get("applicable") and uses_position_pool(d08, "fail_split")
            and d08["fail_split"] == d08["failure"]["pool"]):
        return c10_position(d08, th)
    flow = r["02"]
    n_f = flow["n"]["failed"]
    d_s, d_f, s_s, s_f, text = _c10_parts(r, _ratio_of_means)
    text = f"{_ROM}: {text}; {_failure_counts(flow)}"
    if n_f < th["min_failed"] or d_s is None or d_f is None:
        return NA, text + f" (failed samples: {n_f})"
    if not significant(d_s, th["effect"]):
        return NA, text + " (the succeeded samples' deep effect is not significant: nothing to compare with, A4)"
    deep_ok = d_f["mean"] > 0.5 * d_s["mean"]
    return (REPRODUCED if deep_ok and _shallow_ok(s_s, s_f) else PARTLY if deep_ok else NOT), text


def _c11(r: dict[str, Any], th: dict[str, float], view: View, label: str) -> tuple[str, str]:
    flow = r["02"]
    L = flow["n_layers"]

    def strongest_any(curve: dict[str, Any]) -> dict[str, float] | None:
        es = [e for e in (strongest(view(curve), L, False), strongest(view(curve), L, True)) if e]
        return min(es, key=lambda e: e["mean"]) if es else None

    main = strongest_any(flow["knockout"]["image+context->instruction"]["all"])
    con = flow["knockout"].get("image+context->constraint") or flow["controls"]["system"]["image+context->constraint"]
    c_con = strongest_any(con["all"])
    c_sys = strongest_any(flow["controls"]["system"]["image+context->system"]["all"])
    text = (f"{label}image+context->instruction {describe(main)}; ->constraint {describe(c_con)}; "
            f"->system prompt {describe(c_sys)}")
    if not significant(main, th["effect"]):
        return NOT, text
    weaker = [c is None or c["mean"] > 0.5 * main["mean"] for c in (c_con, c_sys)]  # type: ignore[index]
    return (REPRODUCED if all(weaker) else PARTLY if any(weaker) else NOT), text


def c11_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    return _c11(r, th, _mean_of_ratios, "")


def c11_amended(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    return _c11(r, th, _ratio_of_means, f"{_ROM}: ")


def c12_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    flow = r["02"]
    st = flow["stability"]
    used = {e: c for e, c in st["corr"].items()
            if max((abs(x) for x in flow["knockout"].get(e, {}).get("all", {}).get("inssd", []) if x == x), default=0) >= th["effect"]}
    if not used:
        return NA, "no edge has an effect of at least the threshold, so there is no pattern to be stable"
    worst = min((min(c), e) for e, c in used.items())
    v = REPRODUCED if worst[0] >= th["stability_full"] else PARTLY if worst[0] >= th["stability_partly"] else NOT
    return v, (f"smallest correlation with the full curve {fmt(worst[0])} ({worst[1]}) over fractions "
               f"{st['fractions']} and {len(used)} edges with an effect")


def c12_amended(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    flow = r["02"]
    st, ko = flow["stability"], flow["knockout"]
    rom = st["ratio_of_means"]

    def effect(edge: str) -> float:
        values = _ratio_of_means(ko[edge]["all"])["inssd"] if edge in ko else []
        return max((abs(x) for x in values if x is not None and x == x), default=0.0)

    used = [e for e in rom["corr"] if effect(e) >= th["effect"]]
    if not used:
        return NA, (f"no edge has a {_ROM} effect of at least the threshold, so there is no pattern to be stable")
    rows = [(c, j, e) for e in used for j, c in enumerate(rom["corr"][e]) if c is not None and c == c]
    if not rows:
        return NA, f"no defined correlation for the {len(used)} edges with an effect"
    c, j, e = min(rows)
    frac, n = st["fractions"][j], st["n"][e]
    v = REPRODUCED if c >= th["stability_full"] else PARTLY if c >= th["stability_partly"] else NOT
    return v, (f"smallest correlation of the {_ROM} curve with the full curve {fmt(c)} [{fmt(rom['lo'][e][j])}, "
               f"{fmt(rom['hi'][e][j])}] ({e}, fraction {frac}: {rom['n_draws']} draws of {max(2, round(frac * n))} "
               f"of n={n} test samples; interval: 2.5-97.5 percentiles over the draws) over fractions "
               f"{st['fractions']} and {len(used)} edges with an effect")


RULES: dict[str, Rule] = {
    "C1": Rule(("02",), c1_original, c1_amended, "A3"),
    "C2": Rule(("02",), c2_original, c2_amended, "A3"),
    "C3": Rule(("02",), c3_original, c3_amended, "A5"),
    "C4": Rule(("02",), c4_original),
    "C10": Rule(("02",), c10_original, c10_amended, "A3+A4+A8"),
    "C11": Rule(("02",), c11_original, c11_amended, "A3"),
    "C12": Rule(("02",), c12_original, c12_amended, "A3"),
}
