"""The rule of the head-identification claim (notebook 03): C5. ``RULES``: claim id -> ``rules_common.Rule``."""

from __future__ import annotations

from typing import Any

from mfutils.present.rules_common import NOT, PARTLY, REPRODUCED, Rule, fmt, num

__all__ = ["RULES"]


def c5_original(r: dict[str, Any], th: dict[str, float]) -> tuple[str, str]:
    h = r["03"]
    s = num(h["top_share_of_score"])
    v = REPRODUCED if s >= th["top_share_full"] else PARTLY if s >= th["top_share_partly"] else NOT
    return v, (f"top {h['k']} of {h['n_layers'] * h['n_heads']} heads hold {fmt(s)} of the positive score mass "
               f"(uniform: {fmt(h['k'] / (h['n_layers'] * h['n_heads']))}; n={h['n_identify']} identification samples); "
               f"exhaustive vs attribution patching: Spearman {fmt(h['spearman'])}, top-5% overlap {fmt(h['top_overlap'])}")


RULES: dict[str, Rule] = {
    "C5": Rule(("03",), c5_original),
}
