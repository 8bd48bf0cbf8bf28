"""The random-head control of amendment A1: head sets drawn from the heads that are NOT identified, and an
observed statistic of the identified heads against them (notebooks 04, 05, 06; claims C9, C8, C7).

The sets come from their own random stream, ``numpy.random.default_rng([CONTROL_STREAM, seed])``, independent
of the bootstrap (``default_rng(seed)``) and of the original control (``selection.random_head_sets(..., seed)``
over all heads, kept for the original rules). The sets are drawn one after another from that stream, so the
first m sets of n are the m sets: notebooks 04, 05 and 06 draw the same sets from the same identified heads and
seed, and a notebook that scores fewer sets scores the first ones.

Public API
----------
N_CONTROL = 200                                          sets per control (A1: at least 200 on the tiny model)
CONTROL_STREAM = 0xA1                                    the control's own random stream
control_sets(n_layers, n_heads, identified, n_sets=N_CONTROL, seed=0, k=None) -> list[list[(layer, head)]]
set_drops(base, flags) -> list[float]                    relative MFR drop of each flag array [N] against base [N]
against(observed, null, larger=True, seed=0) -> {"observed", "empirical_p", "null"}   the identified vs the control
heads_json(sets) -> list[list[list[int]]]                head sets as JSON lists
sets_digest(sets) -> str                                 a short fingerprint of head sets (05 and 06 record it
                                                         instead of the sets; 04 records the sets themselves)

Example::

    sets = control_sets(8, 8, identified, n_sets=200, seed=0)       # none of them holds an identified head
    against(0.48, [0.01, 0.0, 0.13])["empirical_p"]["p"]            # 0.25
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mfutils.measure.follow import Head
from mfutils.measure.stats import empirical_p, null_summary, relative_change
from mfutils.study.selection import random_head_sets

__all__ = ["N_CONTROL", "CONTROL_STREAM", "control_sets", "set_drops", "against", "heads_json", "sets_digest"]

N_CONTROL = 200
CONTROL_STREAM = 0xA1


def control_sets(n_layers: int, n_heads: int, identified: Sequence[Head], n_sets: int = N_CONTROL, seed: int = 0,
                 k: int | None = None) -> list[list[Head]]:
    """``n_sets`` sets of ``k`` heads (default ``len(identified)``), each drawn uniformly without replacement from
    the heads NOT in ``identified``, from the stream ``default_rng([CONTROL_STREAM, seed])``; each set sorted.

    The same arguments give the same sets, and ``control_sets(..., n_sets=m)`` are the first m of any larger
    ``n_sets`` (the draws are sequential). Sets are drawn independently, so two sets may share heads.

    Example::

        control_sets(8, 8, [(0, 1), (0, 3), (0, 4)], n_sets=200, seed=0)    # 200 sets of 3 of the other 61 heads
    """
    excl = [(int(l), int(h)) for l, h in identified]
    size = len(excl) if k is None else int(k)
    if size == 0 or n_sets <= 0:
        return []
    return random_head_sets(n_layers, n_heads, size, int(n_sets), [CONTROL_STREAM, int(seed)], exclude=excl)


def set_drops(base: torch.Tensor | np.ndarray, flags: Sequence[torch.Tensor | np.ndarray]) -> list[float]:
    """The relative MFR drop (MFR_base - MFR_set) / MFR_base of each follow-flag array of ``flags`` (each [N],
    the same samples as ``base`` [N]); NaN where MFR_base is 0 or N is 0 (``stats.relative_change``).

    Example: ``set_drops(np.array([1, 1, 1, 1]), [np.array([1, 1, 0, 0])])`` -> ``[0.5]``.
    """
    b = np.asarray(base, dtype=float)
    if b.size == 0:
        return [math.nan] * len(flags)
    return [float(relative_change(b, np.asarray(f, dtype=float))) for f in flags]


def against(observed: float, null: Sequence[float], larger: bool = True, seed: int = 0) -> dict[str, Any]:
    """``observed`` (the identified heads' statistic) against the control's draws ``null``:
    ``{"observed", "empirical_p": stats.empirical_p (p, count, n, resolution), "null": stats.null_summary
    (mean [lo, hi] bootstrap 95% over sets, sd, p95, n)}``. ``larger``: a larger value is a stronger effect.

    Example: ``against(0.5, [0.1, 0.2, 0.6])["empirical_p"]`` -> ``{"p": 0.5, "count": 1, "n": 3, "resolution": 0.25}``.
    """
    obs = float(observed) if observed is not None else math.nan
    return {"observed": obs, "empirical_p": empirical_p(obs, list(null), larger=larger),
            "null": null_summary(list(null), seed=seed)}


def heads_json(sets: Sequence[Sequence[Head]]) -> list[list[list[int]]]:
    """Head sets as nested JSON lists: ``[[[layer, head], ...], ...]``."""
    return [[[int(l), int(h)] for l, h in s] for s in sets]


def sets_digest(sets: Sequence[Sequence[Sequence[int]]]) -> str:
    """The first 16 hex digits of the sha256 of ``heads_json(sets)`` (compact JSON): equal digests, equal sets.

    Example: ``sets_digest(doc04["control"]["sets"][:50]) == doc06["held_out"]["random"]["digest"]``.
    """
    text = json.dumps(heads_json(sets), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
