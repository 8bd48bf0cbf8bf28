"""Per-model chain parameters: the sample counts and windows each shipped model's full run uses.

The notebooks' own defaults are sized for the default model, ``smol`` (a pretrained 30-layer decoder: a
sample-forward costs about 14 times the tiny model's), so that its whole chain fits in 30 minutes on 2 cores.
The tiny model keeps the larger counts it was always run with. ``run_chain`` starts from a model's profile and
lets the caller's parameters (``mf reproduce -p name=value``) override it; smoke runs cap the counts further
inside the notebooks. Every value was fixed before the model's mechanistic results were looked at.

Public API
----------
PROFILES                      model name -> chain parameters that differ from the notebooks' defaults
SHIPPED_ORDER                 ("smol", "tiny"): the order ``make reproduce`` runs the shipped models in
profile(model) -> dict        the profile of ``model`` (empty for any other model)

Example::

    profile("tiny")["n_control"]          # 200
"""

from __future__ import annotations

from typing import Any

__all__ = ["PROFILES", "SHIPPED_ORDER", "profile"]

SHIPPED_ORDER: tuple[str, ...] = ("smol", "tiny")

PROFILES: dict[str, dict[str, Any]] = {
    # the counts of every tiny run since the tiny model became the contrast (the notebooks' defaults before smol became the default)
    "tiny": {
        "split_sizes": {"identify": 256, "test": 400, "test_system": 200, "test_instruction_last": 200,
                        "capability": 300, "fail_pool": 2000},
        # C8 and C10 keep tiny's standard pool (A8: it fails there already and they had been read there)
        "fail_split": "fail_pool",
        "n": 1000,
        "n_control": 200,
        "control_samples": 128,
        "max_failed": 200,
        "max_correct": 200,
        "n_control_curve": 10,
        "positions": "all",
    },
}


def profile(model: str) -> dict[str, Any]:
    """The chain parameters of ``model`` beyond the notebooks' defaults (a copy; empty when it has none)."""
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in PROFILES.get(model, {}).items()}
