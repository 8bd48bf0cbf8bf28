"""The rules of the information-flow claims (notebook 02): C1, C2, C3, C4, C10, C11, C12. ``RULES``: claim id -> ``rules_common.Rule``."""

from __future__ import annotations

import math
from typing import Any

from mfutils.present.rules_common import NA, NOT, PARTLY, REPRODUCED, Rule, describe, fmt, significant, strongest

__all__ = ["RULES"]


def c1_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    flow = r["02"]
    L, ko = flow["n_layers"], flow["knockout"]
    parts, all_sig, any_sig = [], True, False
    for edge in ("image->instruction", "context->instruction"):
        e_all = strongest(ko[edge]["all"], L, deep=False)
        any_sig |= significant(e_all, th["effect"])
        for sub in ("follow_image", "follow_text"):
            e = strongest(ko[edge][sub], L, deep=False)
            all_sig &= significant(e, th["effect"])
            parts.append(f"{edge} ({sub}): {describe(e)}")
    verdict = REPRODUCED if all_sig else PARTLY if any_sig else NOT
    return verdict, "strongest shallow INSSD — " + "; ".join(parts)


def c2_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    flow = r["02"]
    c = flow["knockout"]["instruction->last"]["all"]
    deep, shallow = strongest(c, flow["n_layers"], True), strongest(c, flow["n_layers"], False)
    if not significant(deep, th["effect"]):
        v = NOT
    elif shallow is None or deep["mean"] <= shallow["mean"]:  # type: ignore[index]
        v = REPRODUCED
    else:
        v = PARTLY
    return v, f"instruction->last strongest deep INSSD {describe(deep)}; strongest shallow {describe(shallow)}"


def c3_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    flow = r["02"]
    L = flow["n_layers"]
    best: tuple[float, str, int, float, float, int] | None = None
    for key in ("anchor_last", "anchor_mean"):
        cur = flow["ldar"][key]
        for i, (rate, lo, hi) in enumerate(zip(cur["rate"], cur["lo"], cur["hi"])):
            if i > L / 2 and rate is not None and not math.isnan(rate) and (best is None or rate > best[0]):
                best = (rate, key, i, lo, hi, cur["n"])
    if best is None:
        return NOT, "no deep LDAR value"
    rate = best[0]
    v = REPRODUCED if rate >= th["ldar_full"] else PARTLY if rate >= th["ldar_partly"] else NOT
    last = flow["ldar"]["last"]
    return v, (f"highest deep LDAR {fmt(rate, 3)} [{fmt(best[3], 3)}, {fmt(best[4], 3)}] ({best[1]}, hidden state {best[2]}, "
               f"n={best[5]}); at the last position the final-layer agreement is {fmt(last['rate'][-1], 3)}")


def c4_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    flow = r["02"]
    L = flow["n_layers"]
    a, m = flow["dla"]["attn"]["follow_image"], flow["dla"]["mlp"]["follow_image"]
    deep = [i for i in range(L) if i >= L / 2]
    a_sum, m_sum = sum(a["mean"][i] for i in deep), sum(m["mean"][i] for i in deep)
    a_sig = any(a["lo"][i] > 0 for i in deep)
    m_sig = any(m["hi"][i] < 0 for i in deep)
    attn_ok = a_sum > 0 and a_sig
    v = REPRODUCED if attn_ok and m_sum < 0 and m_sig else PARTLY if attn_ok else NOT
    return v, (f"follow-image samples (n={a['n']}), deep layers {deep[0]}-{deep[-1]}: summed attention attribution "
               f"{fmt(a_sum)} (a layer significantly > 0: {a_sig}), summed MLP attribution {fmt(m_sum)} "
               f"(a layer significantly < 0: {m_sig}), in logits of W_U[instructed] - W_U[other]")


def c10_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    flow = r["02"]
    L, ko, n_f = flow["n_layers"], flow["knockout"], flow["n"]["failed"]
    d_s = strongest(ko["instruction->last"]["succeeded"], L, True)
    d_f = strongest(ko["instruction->last"]["failed"], L, True)

    def shallow(sub: str) -> dict[str, float] | None:
        es = [e for e in (strongest(ko[x][sub], L, False) for x in ("image->instruction", "context->instruction")) if e]
        return min(es, key=lambda e: e["mean"]) if es else None

    s_s, s_f = shallow("succeeded"), shallow("failed")
    text = (f"deep instruction->last: succeeded {describe(d_s)}, failed {describe(d_f)}; shallow transfer into the instruction: "
            f"succeeded {describe(s_s)}, failed {describe(s_f)}")
    if n_f < th["min_failed"] or d_s is None or d_f is None:
        return NA, text + f" (failed samples: {n_f})"
    deep_ok = d_f["mean"] > 0.5 * d_s["mean"] and d_s["mean"] < 0
    shallow_ok = s_s is not None and s_f is not None and s_f["mean"] <= 0.5 * s_s["mean"] and s_s["mean"] < 0
    return (REPRODUCED if deep_ok and shallow_ok else PARTLY if deep_ok else NOT), text


def c11_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    flow = r["02"]
    L = flow["n_layers"]

    def strongest_any(curve: dict[str, Any]) -> dict[str, float] | None:
        es = [e for e in (strongest(curve, L, False), strongest(curve, L, True)) if e]
        return min(es, key=lambda e: e["mean"]) if es else None

    main = strongest_any(flow["knockout"]["image+context->instruction"]["all"])
    con = flow["knockout"].get("image+context->constraint") or flow["controls"]["system"]["image+context->constraint"]
    c_con = strongest_any(con["all"])
    c_sys = strongest_any(flow["controls"]["system"]["image+context->system"]["all"])
    text = (f"image+context->instruction {describe(main)}; ->constraint {describe(c_con)}; ->system prompt {describe(c_sys)}")
    if not significant(main, th["effect"]):
        return NOT, text
    weaker = [c is None or c["mean"] > 0.5 * main["mean"] for c in (c_con, c_sys)]  # type: ignore[index]
    return (REPRODUCED if all(weaker) else PARTLY if any(weaker) else NOT), text


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


RULES: dict[str, Rule] = {
    "C1": Rule(("02",), c1_original),
    "C2": Rule(("02",), c2_original),
    "C3": Rule(("02",), c3_original),
    "C4": Rule(("02",), c4_original),
    "C10": Rule(("02",), c10_original),
    "C11": Rule(("02",), c11_original),
    "C12": Rule(("02",), c12_original),
}
