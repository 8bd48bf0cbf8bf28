"""What the claim rules share: verdict words, the rule record, number formatting and INSSD curve helpers.

Public API
----------
REPRODUCED, PARTLY, NOT, NA, MISSING      the verdict words
Rule(needs, original, amended=None, amendment=None)   one claim's rule(s): results files needed, the original
                                          rule of paper/claims.yaml and, where an amendment changed it, the amended one
RuleFn                                    (results by notebook key, thresholds) -> (verdict, measured text)
MissingMeasurement                        KeyError: a results file lacks the key that holds a measurement
num(x) -> float, fmt(x, nd=2) -> str      JSON numbers (null -> NaN) and their text
strongest(curve, n_layers, deep) -> dict | None    the strongest (lowest mean) window of a curve
significant(e, th) -> bool, describe(e) -> str
uses_position_pool(doc, key="pool") -> bool   whether a notebook 05 / 08 document read a position's pool (A8)

Example::

    e = strongest(doc["knockout"]["instruction->last"]["all"], 8, deep=True); significant(e, 0.05)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["REPRODUCED", "PARTLY", "NOT", "NA", "MISSING", "Rule", "RuleFn", "MissingMeasurement", "num", "fmt",
           "strongest", "significant", "describe", "uses_position_pool"]

REPRODUCED, PARTLY, NOT, NA, MISSING = "reproduced", "partly", "not reproduced", "not applicable", "not measured"

RuleFn = Callable[[dict[str, Any], dict[str, float]], tuple[str, str]]


@dataclass(frozen=True)
class Rule:
    """A claim's rule: ``needs`` the results files (notebook keys "02".."06"), ``original`` the rule as first
    written in paper/claims.yaml, ``amended`` the rule after ``amendment`` (an id of claims.yaml's
    ``amendments``), or None where no amendment changed it."""

    needs: tuple[str, ...]
    original: RuleFn
    amended: RuleFn | None = None
    amendment: str | None = None


class MissingMeasurement(KeyError):
    """A results file lacks the key that holds a measurement: the claim reads "not measured", not an error."""

    def __init__(self, key: Any, source: str) -> None:
        super().__init__(key)
        self.key, self.source = key, source


def num(x: float | None) -> float:
    """A JSON number, with null (NaN written by the notebooks) as NaN: every comparison with it is False."""
    return math.nan if x is None else float(x)


def fmt(x: float | None, nd: int = 2) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def strongest(curve: dict[str, Any], n_layers: int, deep: bool) -> dict[str, float] | None:
    """The window with the lowest mean INSSD among shallow (deep=False) or deep windows."""
    rows = [(s, m, lo, hi) for s, m, lo, hi in zip(curve.get("start", []), curve.get("inssd", []),
                                                  curve.get("lo", []), curve.get("hi", []))
            if (s >= n_layers / 2) == deep and m is not None and not (isinstance(m, float) and math.isnan(m))]
    if not rows:
        return None
    s, m, lo, hi = min(rows, key=lambda r: r[1])
    return {"start": s, "mean": m, "lo": lo, "hi": hi, "n": curve.get("n", 0)}


def significant(e: dict[str, float] | None, th: float) -> bool:
    return e is not None and e["hi"] < -th


def describe(e: dict[str, float] | None) -> str:
    if e is None:
        return "n/a"
    return f"{fmt(e['mean'])} [{fmt(e['lo'])}, {fmt(e['hi'])}] at layer {e['start']} (n={e['n']})"


def uses_position_pool(doc: dict[str, Any] | None, key: str = "pool") -> bool:
    """True when ``doc[key]`` names a position's pool (``"pool_first"``; A8), False for the standard ``fail_pool``."""
    return doc is not None and str(doc.get(key) or "").startswith("pool_")
