"""Range checks of numbers from the user: the ``mf`` options' argparse types and the chain's ``-p`` parameters.

A count below 1, a negative seed, a share outside (0, 1] or a negative alpha would otherwise run and end in a NaN
table or a numpy traceback. The argparse types raise ``argparse.ArgumentTypeError``, so argparse prints
``mf eval: error: argument --n: ...`` and exits with status 2; ``parameter_problem`` says what is wrong with a
chain parameter (``mfutils.run.chain.check_parameters`` raises it as a ``ChainParameterError``).

Public API
----------
count(text) -> int                    argparse type: a whole number >= 1 (sample counts, steps, batch sizes)
seed(text) -> int                     argparse type: a whole number in [0, 2**32 - 1] (numpy's seed range)
share(text) -> float                  argparse type: a number in (0, 1]
alpha(text) -> float                  argparse type: a finite number >= 0 (a head's output scale)
PARAMETER_KINDS                       chain parameter name -> kind ("count", "count0", "seed", "share", ...)
CHOICES                               chain parameter name -> the values it takes (dataset, positions, pools, ...)
parameter_problem(name, value) -> str | None   what is wrong with a chain parameter's value (None: nothing)

Example::

    parser.add_argument("--n", type=count, default=1000)   # --n -3: "argument --n: must be a whole number >= 1, ..."
    parameter_problem("share", 1.5)                        # "parameter share=1.5: must be a number in (0, 1] ..."
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["count", "seed", "share", "alpha", "PARAMETER_KINDS", "CHOICES", "parameter_problem"]

SEED_MAX = 2**32 - 1

# kind -> (accepts, the rule said as the fix, an example value)
_RULES: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "count": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1", "100"),
    "count0": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0", "0"),
    "seed": (lambda v: _is_int(v) and 0 <= v <= SEED_MAX, f"a whole number from 0 to {SEED_MAX}", "0"),
    "share": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1] (0.05: 5%)", "0.05"),
    "alpha": (lambda v: _is_number(v) and math.isfinite(v) and v >= 0, "a finite number >= 0 (1.0: unchanged)",
              "1.0, 2.0, 4.0"),
}

PARAMETER_KINDS: dict[str, str] = {
    # counts: 0 would leave an empty sample set or no control sets, and a NaN or a KeyError downstream
    "n": "count", "n_boot": "count", "n_random": "count", "n_control": "count", "batch_size": "count",
    "max_failed": "count", "max_correct": "count", "n_samples": "count", "n_batch": "count", "n_pool": "count",
    # 0 means something: all test samples (control_samples), the default window, no alpha band (n_control_curve)
    "control_samples": "count0", "window": "count0", "n_control_curve": "count0",
    "seed": "seed", "gallery_seed": "seed",
    "share": "share", "shares": "share[]", "alphas": "alpha[]", "split_sizes": "count{}",
}


_POSITIONS = ("first", "after_image", "standard", "last")     # mfutils.data.world.POSITIONS (tested equal)
# string parameters that take one of a few values (a notebook would otherwise start a kernel and fail inside)
CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": ("world", "mc2"), "positions": ("last", "all"), "mc2_form": ("open", "mc"),
    "model_filter": ("auto", "on", "off"), "mc2_question": ("question1", "question2", "question3"),
    "fail_position": _POSITIONS, "fail_split": ("fail_pool", *(f"pool_{p}" for p in _POSITIONS)),
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def _parse(text: str, kind: str) -> Any:
    ok, fix, _ = _RULES[kind]
    try:
        value: Any = int(text) if kind in ("count", "count0", "seed") else float(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"must be {fix}, got {text!r}")
    return value


def count(text: str) -> int:
    """argparse type: ``text`` as an int >= 1, else ``ArgumentTypeError`` saying so.

    Example: ``count("64")`` -> 64; ``count("-3")`` raises ("must be a whole number >= 1, got '-3'").
    """
    return int(_parse(text, "count"))


def seed(text: str) -> int:
    """argparse type: ``text`` as an int in [0, 2**32 - 1] (what ``numpy.random.seed`` takes).

    Example: ``seed("1001")`` -> 1001; ``seed("-1")`` raises.
    """
    return int(_parse(text, "seed"))


def share(text: str) -> float:
    """argparse type: ``text`` as a float in (0, 1].

    Example: ``share("0.05")`` -> 0.05; ``share("5")`` raises.
    """
    return float(_parse(text, "share"))


def alpha(text: str) -> float:
    """argparse type: ``text`` as a finite float >= 0.

    Example: ``alpha("4")`` -> 4.0; ``alpha("inf")`` raises.
    """
    return float(_parse(text, "alpha"))


def parameter_problem(name: str, value: Any) -> str | None:
    """What is wrong with chain parameter ``name=value`` (a count, seed or share out of range, a bad element of
    ``shares`` / ``alphas`` / ``split_sizes``), with the fix; None when nothing is, when ``name`` is not numeric
    (``PARAMETER_KINDS``) or when the value has another type (``check_parameters`` names the type it needs).

    Example::

        parameter_problem("n", -3)     # "parameter n=-3 must be a whole number >= 1, e.g. -p n=100"
    """
    if name in CHOICES:
        if isinstance(value, str) and value not in CHOICES[name]:
            return (f"parameter {name}={value!r} is not one of {', '.join(CHOICES[name])}, "
                    f"e.g. -p {name}={CHOICES[name][0]}")
        return None
    kind = PARAMETER_KINDS.get(name)
    if kind is None:
        return None
    ok, fix, example = _RULES[kind.rstrip("[]{}")]
    if kind.endswith("[]"):
        if not isinstance(value, (list, tuple)):
            return None
        bad = [v for v in value if not ok(v)]
        what, example = f"every element must be {fix}; {bad[0]!r} is not" if bad else "", f"[{example}]"
    elif kind.endswith("{}"):
        if not isinstance(value, Mapping):
            return None
        bad = [k for k, v in value.items() if not ok(v)]
        what = f"every value must be {fix}; {bad[0]}={value[bad[0]]!r} is not" if bad else ""
        example = "{'test': 400}"
    else:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        what = "" if ok(value) else f"must be {fix}"
    return f"parameter {name}={value!r}: {what}, e.g. -p \"{name}={example}\"" if what else None
