"""The rules of the head-intervention claims (notebooks 04-06): C6, C7, C8, C9. ``RULES``: claim id -> ``rules_common.Rule``."""

from __future__ import annotations

from typing import Any

from mfutils.present.rules_common import NA, NOT, PARTLY, REPRODUCED, Rule, fmt, num

__all__ = ["RULES"]


def c6_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    b = r["04"]
    d = b["relative_drop"]
    v = (REPRODUCED if num(d["mean"]) >= th["block_drop_full"] and num(d["lo"]) > 0
         else PARTLY if num(d["lo"]) > 0 else NOT)
    return v, (f"MFR {fmt(b['base']['all']['rate'], 3)} -> {fmt(b['identified']['all']['rate'], 3)} with the top {b['k']} heads "
               f"blocked (n={b['base']['all']['n']}); relative drop {fmt(d['mean'])} [{fmt(d['lo'])}, {fmt(d['hi'])}]")


def c7_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    c, b = r["06"], r.get("04")
    drop = c["max_drop_identified"]
    text = (f"largest accuracy drop over {', '.join(c['categories'])}: {fmt(drop, 3)} with the identified heads blocked, "
            f"{fmt(c['max_drop_random_mean'], 3)} with random heads (mean); n per category "
            f"{min(c['base'][k]['n'] for k in c['categories'])}")
    if b is None or not num(b["relative_drop"]["lo"]) > 0:
        return NA, text + "; blocking does not degrade modality following here, so preservation is vacuous"
    v = REPRODUCED if num(drop) <= th["retention_full"] else PARTLY if num(drop) <= th["retention_partly"] else NOT
    return v, text


def c8_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    a = r["05"]
    n = a["n_failed"]
    best = a["best"]
    i = a["alphas"].index(best["alpha"]) if best["alpha"] in a["alphas"] else 0
    rnd = a["random"]["recovery_mean"][i] if a["random"]["recovery_mean"] else float("nan")
    rec = best["recovery"]
    text = (f"best recovery {fmt(rec['rate'])} [{fmt(rec['lo'])}, {fmt(rec['hi'])}] at alpha={best['alpha']} "
            f"(n={n} failed samples); random heads at that alpha: {fmt(rnd)}; arbitration failures n={a['arbitration']['n']}")
    if n < th["min_failed"]:
        return NA, text
    v = (REPRODUCED if num(rec["rate"]) >= th["recovery_full"]
         else PARTLY if num(rec["rate"]) >= th["recovery_partly"] and num(rec["rate"]) > num(rnd) else NOT)
    return v, text


def c9_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    b = r["04"]
    d, rd = num(b["relative_drop"]["mean"]), b["random_relative_drop"]
    v = REPRODUCED if d > num(rd["p95"]) and d >= 2 * num(rd["mean"]) else PARTLY if d > num(rd["mean"]) else NOT
    return v, (f"relative MFR drop: identified {fmt(d)}, random sets mean {fmt(rd['mean'])} (sd {fmt(rd['sd'])}, "
               f"95th percentile {fmt(rd['p95'])}, {b['n_random_sets']} sets of {b['k']} heads)")


RULES: dict[str, Rule] = {
    "C6": Rule(("04",), c6_original),
    "C7": Rule(("06",), c7_original),
    "C8": Rule(("05",), c8_original),
    "C9": Rule(("04",), c9_original),
}
