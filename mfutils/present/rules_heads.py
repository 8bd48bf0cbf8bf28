"""The rule of the head-identification claim (notebook 03): C5. ``RULES``: claim id -> ``rules_common.Rule``.

The verdict reads ``top_share_of_score`` only (the rule of paper/claims.yaml, unamended). The measured text adds,
where notebook 03 wrote them, the bootstrap intervals over the identification samples (``intervals``), the
selection stability of the identified heads and of the first head outside (``selection_stability``) and the
top-k boundary margin (``top_k_boundary``); documents without them read as before.
"""

from __future__ import annotations

from typing import Any

from mfutils.present.rules_common import NOT, PARTLY, REPRODUCED, Rule, fmt, num

__all__ = ["RULES"]


def _ci(d: dict[str, Any], key: str = "value", value: float | None = None) -> str:
    """``0.81 [0.79, 0.84]`` from a ``{"value"|"frequency", "lo", "hi"}`` record (``value``: the number the
    verdict read, quoted in place of the record's own)."""
    x = num(d[key]) if value is None else num(value)
    return f"{fmt(x)} [{fmt(num(d['lo']))}, {fmt(num(d['hi']))}]"


def _head(h: list[int]) -> str:
    return f"({h[0]},{h[1]})"


def _stability(st: dict[str, Any], k: int) -> str:
    """The identified heads' selection frequencies (their minimum when k > 5) and the first head outside."""
    heads = st["heads"]
    inside = [h for h in heads if h["identified"]]
    outside = [h for h in heads if not h["identified"]]
    if k <= 5:
        shown = ", ".join(f"{_head(h['head'])} {_ci(h, 'frequency')}" for h in inside)
    else:
        low = min(inside, key=lambda h: num(h["frequency"]))
        shown = f"lowest {_head(low['head'])} {_ci(low, 'frequency')}"
    nxt = f"; first outside {_head(outside[0]['head'])} {_ci(outside[0], 'frequency')}" if outside else ""
    return (f"selection stability (share of {st['n_boot']} bootstrap resamples of the n={st['n']} identification "
            f"samples with the head in the top {k}; Wilson interval over resamples): {shown}{nxt}; "
            f"the identified set exactly: {_ci(st['set'], 'frequency')}")


def _boundary(b: dict[str, Any]) -> str:
    k = b["k"]
    d = b["difference"]
    return (f"top-{k} boundary margin: score {_head(b['kth']['head'])} {fmt(num(b['kth']['score']), 3)} minus "
            f"{_head(b['next']['head'])} {fmt(num(b['next']['score']), 3)} = {fmt(num(d['value']), 3)} "
            f"[{fmt(num(d['lo']), 3)}, {fmt(num(d['hi']), 3)}] (paired bootstrap, n={d['n']})")


def c5_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    h = r["03"]
    s = num(h["top_share_of_score"])
    v = REPRODUCED if s >= th["top_share_full"] else PARTLY if s >= th["top_share_partly"] else NOT
    n_all = h["n_layers"] * h["n_heads"]
    iv = h["intervals"] if "intervals" in h else None
    if iv is None:
        return v, (f"top {h['k']} of {n_all} heads hold {fmt(s)} of the positive score mass "
                   f"(uniform: {fmt(h['k'] / n_all)}; n={h['n_identify']} identification samples); "
                   f"exhaustive vs attribution patching: Spearman {fmt(h['spearman'])}, "
                   f"top-5% overlap {fmt(h['top_overlap'])}")
    text = (f"top {h['k']} of {n_all} heads hold {_ci(iv['top_share_of_score'], value=s)} of the positive score mass "
            f"(uniform: {fmt(h['k'] / n_all)}; n={h['n_identify']} identification samples, bootstrap 95% "
            f"intervals over them, {iv['n_boot']} resamples); exhaustive vs attribution patching: ")
    if "spearman" in iv:
        o = iv["top_overlap"]
        text += (f"Spearman {_ci(iv['spearman'], value=h['spearman'])}, top-5% overlap "
                 f"{_ci(o, value=h['top_overlap'])} ({o['count']} of {o['k']} heads)")
    else:
        text += (f"Spearman {fmt(h['spearman'])}, top-5% overlap {fmt(h['top_overlap'])} "
                 "(no interval: attribution not kept per sample)")
    if "selection_stability" in h:
        text += "; " + _stability(h["selection_stability"], h["k"])
    if "top_k_boundary" in h and h["top_k_boundary"] is not None:
        text += "; " + _boundary(h["top_k_boundary"])
    return v, text


RULES: dict[str, Rule] = {
    "C5": Rule(("03",), c5_original),
}
