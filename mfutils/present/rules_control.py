"""The rules of the head-intervention claims (notebooks 04-06): C6, C7, C8, C9. ``RULES``: claim id -> ``rules_common.Rule``.

Each ``cX_original`` is the rule as first written in paper/claims.yaml, on the keys the notebooks wrote before
the amendments (kept, computed as before, so the original verdicts stay reproducible); each ``cX_amended`` is
the rule of its amendment (paper/claims.yaml ``amendments``) on the new keys: C7 by A6 (held-out prompts), C8 by
A2 (alpha chosen on one half, scored on the other), C9 by A1 (random sets drawn from the non-identified heads,
empirical p-value). C6's rule is unchanged (A7 changed only its share sweep). Every measured text quotes n and
a 95% interval for each number it reads.

Public API
----------
RULES                                       claim id -> Rule(needs, original, amended, amendment)
c6_original, c7_original, c8_original, c9_original, c7_amended, c8_amended, c9_amended   (results, th) -> (verdict, text)
"""

from __future__ import annotations

from typing import Any

from mfutils.present.rules_common import NA, NOT, PARTLY, REPRODUCED, Rule, fmt, num, uses_position_pool

__all__ = ["RULES", "c6_original", "c7_original", "c8_original", "c9_original", "c7_amended", "c8_amended",
           "c9_amended"]


def _ci(p: dict[str, Any], key: str = "rate", nd: int = 2) -> str:
    """``x [lo, hi]`` of a proportion / summary dict (``key``: "rate", "mean" or "value")."""
    return f"{fmt(p[key], nd)} [{fmt(p['lo'], nd)}, {fmt(p['hi'], nd)}]"


def _p(e: dict[str, Any]) -> str:
    """An empirical p-value with its count and resolution."""
    return (f"empirical p {fmt(e['p'], 3)} ({e['count']} of {e['n']} sets at least as strong; "
            f"resolution {fmt(e['resolution'], 3)})")


def _null(s: dict[str, Any]) -> str:
    return f"mean {_ci(s, 'mean')}, sd {fmt(s['sd'])}, 95th percentile {fmt(s['p95'])}, {s['n']} sets"


def c6_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    b = r["04"]
    d = b["relative_drop"]
    v = (REPRODUCED if num(d["mean"]) >= th["block_drop_full"] and num(d["lo"]) > 0
         else PARTLY if num(d["lo"]) > 0 else NOT)
    text = (f"MFR {_ci(b['base']['all'], nd=3)} -> {_ci(b['identified']['all'], nd=3)} (Wilson) with the top {b['k']} "
            f"heads blocked (n={b['base']['all']['n']} test samples); relative drop {_ci(d, 'mean')} (paired bootstrap, "
            f"n={d['n']})")
    if "share_sweep" in b:
        pts = b["share_sweep"]["points"]
        text += ("; share sweep with distinct k (A7, on " + str(b["share_sweep"]["n_samples"]) + " samples): " +
                 ", ".join(f"k={p['k']}: {_ci(p['identified_relative_drop'], 'mean')}" for p in pts))
    return v, text


def _c7_verdict(drop: float, b: dict[str, Any] | None, th: dict[str, float]) -> str | None:
    """NA when blocking does not degrade following (C6's interval includes 0), else the retention verdict."""
    if b is None or not num(b["relative_drop"]["lo"]) > 0:
        return None
    return REPRODUCED if num(drop) <= th["retention_full"] else PARTLY if num(drop) <= th["retention_partly"] else NOT


def c7_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    c, b = r["06"], r.get("04")
    drop = c["max_drop_identified"]
    per = "; ".join(f"{k}: {_ci(c['base'][k])} -> {_ci(c['identified'][k])} (n={c['base'][k]['n']})"
                    for k in c["categories"])
    text = (f"largest accuracy drop over {', '.join(c['categories'])}: {fmt(drop, 3)} with the identified heads blocked, "
            f"{fmt(c['max_drop_random_mean'], 3)} with random heads (mean); n per category "
            f"{min(c['base'][k]['n'] for k in c['categories'])}; accuracy (Wilson) {per}")
    v = _c7_verdict(drop, b, th)
    if v is None:
        return NA, text + "; blocking does not degrade modality following here, so preservation is vacuous"
    return v, text


def c7_amended(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    """A6: C7's rule, read on the capability prompts whose text does not occur in the training stream."""
    c, b = r["06"], r.get("04")
    h = c["held_out"]
    ov = h["overlap"]
    which = "held-out prompts" if ov is not None else "prompts (training stream unknown)"
    cat = h["max_drop_category"]
    if cat in h.get("drop", {}):           # the deciding number first (the report's side-by-side table shows it)
        text = (f"largest accuracy drop on the {which} {_ci(h['drop'][cat], 'value')} ({cat}, n={h['n'][cat]} of "
                f"{h['n_total']}) with the identified heads blocked; ")
    else:
        text = f"largest accuracy drop on the {which} {fmt(h['max_drop_identified'], 3)} (n={h['n_total']}); "
    if ov is not None:
        per_ov = ", ".join(f"{k} {v['in_training']}/{v['n']}" for k, v in ov["per_category"].items())
        where = f"the {ov['stream']['n']} training samples" if ov.get("stream") else "the training stream"
        text += (f"{ov['in_training']}/{ov['n']} of the notebook's capability prompts occur verbatim in {where} "
                 f"({per_ov}); ")
    absent = [k for k, n in h["n"].items() if n == 0]
    per = "; ".join(f"{k} {_ci(h['base'][k])} -> {_ci(h['identified'][k])}, drop {_ci(h['drop'][k], 'value')} "
                    f"(n={h['n'][k]})" for k in h["categories"])
    rnd = h["random"]
    text += (per + (f"; no held-out prompt in {', '.join(absent)}" if absent else "") +
             f"; {rnd['n_sets']} A1 random sets, largest drop: {_null(rnd['max_null'])}, {_p(rnd['empirical_p'])}")
    if not h["categories"]:
        return NA, text + "; no held-out prompt"
    v = _c7_verdict(h["max_drop_identified"], b, th)
    if v is None:
        return NA, text + "; blocking does not degrade modality following here, so preservation is vacuous"
    return v, text


def c8_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    a = r["05"]
    n = a["n_failed"]
    best = a["best"]
    i = a["alphas"].index(best["alpha"]) if best["alpha"] in a["alphas"] else 0
    rnd = a["random"]["recovery_mean"][i] if a["random"]["recovery_mean"] else float("nan")
    rsd = a["random"]["recovery_sd"][i] if a["random"].get("recovery_sd") else float("nan")
    rec = best["recovery"]
    text = (f"best recovery {_ci(rec)} at alpha={best['alpha']} chosen on the same samples (n={n} failed samples); "
            f"random heads at that alpha: {fmt(rnd)} (sd {fmt(rsd)}, {a['random'].get('n_sets', '?')} sets); "
            f"arbitration failures n={a['arbitration']['n']}")
    if n < th["min_failed"]:
        return NA, text
    v = (REPRODUCED if num(rec["rate"]) >= th["recovery_full"]
         else PARTLY if num(rec["rate"]) >= th["recovery_partly"] and num(rec["rate"]) > num(rnd) else NOT)
    return v, text


def c8_amended(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    """A2: alpha chosen on the selection half, recovery on the evaluation half against the A1 sets; A8: from a
    position's pool, at least ``position_min_failed`` arbitration failures in the evaluation half."""
    h = r["05"]["held_out"]
    n = h["n_evaluation"]
    rec, rnd, arb, dmg = h["recovery"], h["random"], h["arbitration"], h["damage"]
    text = (f"held-out recovery {_ci(rec)} (Wilson, n={n} failed samples of the evaluation half) at alpha={h['alpha']}, "
            f"chosen on the selection half (n={h['n_selection']}); {rnd['n_sets']} A1 random sets at that alpha on the "
            f"same samples: {_null(rnd['null'])}, {_p(rnd['empirical_p'])}; arbitration failures {_ci(arb['recovery'])} "
            f"(n={arb['n']}); damage to correct samples {_ci(dmg)} (n={dmg['n']})")
    if uses_position_pool(r["05"]):
        text = f"A8, pool {r['05']['pool']}: " + text
        if arb["n"] < th["position_min_failed"]:
            return NA, text + f" (arbitration failures in the evaluation half: {arb['n']}, at least {th['position_min_failed']:g} needed)"
    if n < th["min_failed"]:
        return NA, text
    rate, ok = num(rec["rate"]), num(rnd["empirical_p"]["p"]) <= th["p_value"]
    v = (REPRODUCED if rate >= th["recovery_full"] and ok else PARTLY if rate >= th["recovery_partly"] and ok
         else NOT)
    return v, text


def c9_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    b = r["04"]
    rel, rd = b["relative_drop"], b["random_relative_drop"]
    d = num(rel["mean"])
    v = REPRODUCED if d > num(rd["p95"]) and d >= 2 * num(rd["mean"]) else PARTLY if d > num(rd["mean"]) else NOT
    return v, (f"relative MFR drop: identified {_ci(rel, 'mean')} (n={rel['n']}), random sets mean {fmt(rd['mean'])} "
               f"(sd {fmt(rd['sd'])}, 95th percentile {fmt(rd['p95'])}, {b['n_random_sets']} sets of {b['k']} heads "
               f"drawn from all heads)")


def c9_amended(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    """A1: the identified drop against random sets drawn from the non-identified heads, with its empirical p."""
    c = r["04"]["control"]
    d, null, p = c["identified_relative_drop"], c["null"], c["empirical_p"]
    x = num(d["mean"])
    v = (REPRODUCED if num(p["p"]) <= th["p_value"] and x >= 2 * num(null["mean"])
         else PARTLY if x > num(null["hi"]) else NOT)
    per = "; ".join(f"{k}: {_ci(q['identified_relative_drop'], 'mean')} vs random mean {fmt(q['null']['mean'])}, "
                    f"p {fmt(q['empirical_p']['p'], 3)} (n={q['n']})" for k, q in c["per_instruction"].items())
    return v, (f"relative MFR drop, identified {_ci(d, 'mean')} (paired bootstrap, n={c['n_samples']} test samples); "
               f"{c['n_sets']} random sets of {c['k']} heads from the {c['drawn_from']} non-identified heads on the "
               f"same samples: {_null(null)}; {_p(p)}; per instruction {per}")


RULES: dict[str, Rule] = {
    "C6": Rule(("04",), c6_original),
    "C7": Rule(("06",), c7_original, c7_amended, "A6"),
    "C8": Rule(("05",), c8_original, c8_amended, "A2+A8"),
    "C9": Rule(("04",), c9_original, c9_amended, "A1"),
}
