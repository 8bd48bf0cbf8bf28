"""Constructed results documents of notebooks 04-06, with the keys the original and amended rules read
(shared by tests/test_rules_control.py and tests/test_report.py)."""

from __future__ import annotations

from typing import Any


def prop(rate: float, n: int = 100) -> dict[str, Any]:
    return {"rate": rate, "lo": max(0.0, rate - 0.05), "hi": min(1.0, rate + 0.05), "k": round(rate * n), "n": n}


def summ(mean: float, half: float = 0.02, key: str = "mean", n: int = 200) -> dict[str, Any]:
    return {key: mean, "lo": mean - half, "hi": mean + half, "n": n}


def pval(count: int, n: int = 200) -> dict[str, Any]:
    return {"p": (1 + count) / (1 + n), "count": count, "n": n, "resolution": 1 / (1 + n)}


def null(mean: float, half: float = 0.01, p95: float | None = None, n: int = 200) -> dict[str, Any]:
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "sd": 0.05, "p95": mean + 0.1 if p95 is None else p95,
            "n": n}


def doc04(drop: float = 0.48, lo: float = 0.43, old_mean: float = 0.13, old_p95: float = 0.5, count: int = 0,
          ctrl_drop: float = 0.5, ctrl_mean: float = 0.03, ctrl_half: float = 0.01) -> dict[str, Any]:
    per = {c: {"n": 80, "identified_relative_drop": summ(ctrl_drop), "empirical_p": pval(count), "null": null(ctrl_mean)}
           for c in ("follow_image", "follow_text")}
    return {"k": 3, "n_random_sets": 10, "base": {"all": prop(0.935, 400)}, "identified": {"all": prop(0.49, 400)},
            "relative_drop": {"mean": drop, "lo": lo, "hi": drop + 0.05, "n": 400},
            "random_relative_drop": {"values": [old_mean] * 10, "mean": old_mean, "sd": 0.2, "p95": old_p95},
            "control": {"n_sets": 200, "k": 3, "drawn_from": 61, "n_samples": 160,
                        "identified_relative_drop": summ(ctrl_drop), "relative_drops": [ctrl_mean] * 200,
                        "empirical_p": pval(count), "null": null(ctrl_mean, ctrl_half), "per_instruction": per},
            "share_sweep": {"n_samples": 160, "points": [{"k": k, "identified_relative_drop": summ(0.4)} for k in (1, 2, 3, 6)]}}


def doc05(rate: float = 0.5, n_eval: int = 74, count: int = 0, best: float = 0.13, rnd: float = 0.11) -> dict[str, Any]:
    return {"alphas": [1.0, 2.0], "n_failed": 147, "best": {"alpha": 2.0, "recovery": prop(best, 147)},
            "random": {"recovery_mean": [0.0, rnd], "recovery_sd": [0.0, 0.04], "n_sets": 10}, "arbitration": {"n": 56},
            "held_out": {"n_evaluation": n_eval, "n_selection": 73, "alpha": 2.0, "recovery": prop(rate, n_eval),
                         "arbitration": {"n": 30, "recovery": prop(rate, 30)}, "damage": prop(0.05, 200),
                         "random": {"n_sets": 200, "null": null(0.1), "empirical_p": pval(count)}}}


def doc06(max_drop: float = 0.03, old_max: float = 0.23, cats: tuple[str, ...] = ("text_only", "agree")) -> dict[str, Any]:
    allc = ["image_only", "text_only", "agree"]
    return {"categories": allc, "base": {c: prop(0.95) for c in allc}, "identified": {c: prop(0.9) for c in allc},
            "max_drop_identified": old_max, "max_drop_random_mean": 0.07,
            "held_out": {"overlap": {"in_training": 118, "n": 300, "per_category": {
                "image_only": {"in_training": 100, "n": 100}, "text_only": {"in_training": 18, "n": 100},
                "agree": {"in_training": 0, "n": 100}}},
                "n": {"image_only": 0, "text_only": 82 if "text_only" in cats else 0, "agree": 100 if "agree" in cats else 0},
                "n_total": 182, "categories": list(cats), "base": {c: prop(0.95) for c in cats},
                "identified": {c: prop(0.95 - max_drop) for c in cats},
                "drop": {c: summ(max_drop, key="value") for c in cats}, "max_drop_identified": max_drop,
                "max_drop_category": cats[0] if cats else None,
                "random": {"n_sets": 50, "max_null": null(0.05, n=50), "empirical_p": pval(30, 50)}}}
