"""Blocking the identified heads against random head sets: the MFR drop of notebook 04 (C6, C9).

Two controls. The original one (C9 as first written): ``n_random`` sets drawn uniformly from ALL heads
(``selection.random_head_sets(L, H, k, n_random, seed)``), on every test sample; its keys are kept exactly so
that the original rule's verdict stays reproducible. The A1 control (``control``): ``n_control`` sets drawn from
the heads that are NOT identified (``study.control.control_sets``), each set's relative drop paired with the
identified heads' on the same samples (the first ``control_samples`` test samples), the identified drop's
empirical p-value and the random drops' summary. The A7 share sweep (``share_sweep``): distinct head counts,
each count's random sets drawn without that count's top heads.

Public API
----------
INSTRUCTIONS = ("all", "follow_image", "follow_text")   the rows of every summary
SHARES = (0.01, 0.02, 0.05, 0.1)                        the share sweep
share_counts(n_layers, n_heads, shares) -> [(share, k)] strictly increasing k (A7)
block_summary(samples, flags) -> {"all", "follow_image", "follow_text": proportion dict}
BlockResult                                             the 04 document (``to_doc()``)
block_experiment(mm, samples, scores, share=0.05, n_random=10, seed=0, ..., n_control=200,
                 control_samples=None) -> BlockResult

Example::

    result = block_experiment(mm, load_split("tiny", "test"), load_identification("tiny")["scores"])
    result.control["empirical_p"]["p"]; write_results(result, "tiny", "04_block_heads")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mfutils.data.sample import Sample
from mfutils.measure.follow import FlagCache, Head
from mfutils.measure.prepared import Prepared, prepare, samples_of
from mfutils.measure.stats import proportion, rate, relative_change, relative_drop, spread
from mfutils.model.loading import MLLM
from mfutils.study.control import (N_CONTROL, CONTROL_STREAM, against, control_sets, heads_json, set_drops,
                                   sets_digest)
from mfutils.study.results import OPTIONAL, Document
from mfutils.study.selection import n_top, random_head_sets, ranked, top_heads

__all__ = ["INSTRUCTIONS", "SHARES", "share_counts", "block_summary", "BlockResult", "block_experiment"]

INSTRUCTIONS = ("all", "follow_image", "follow_text")
SHARES = (0.01, 0.02, 0.05, 0.1)


def share_counts(n_layers: int, n_heads: int, shares: Sequence[float]) -> list[tuple[float, int]]:
    """(share, k) for the sweep with distinct head counts (A7): k = ``n_top`` of each share in increasing
    order, raised to one more than the previous k where rounding repeats a count; counts beyond the
    n_layers * n_heads heads are left out.

    Example: ``share_counts(8, 8, [0.01, 0.02, 0.05, 0.1])`` -> ``[(0.01, 1), (0.02, 2), (0.05, 3), (0.1, 6)]``.
    """
    out: list[tuple[float, int]] = []
    for s in sorted(float(x) for x in shares):
        k = max(n_top(n_layers, n_heads, s), out[-1][1] + 1 if out else 1)
        if k <= n_layers * n_heads:
            out.append((s, k))
    return out


def block_summary(samples: Sequence[Sample] | Prepared, flags: torch.Tensor | np.ndarray | Sequence[bool]
                  ) -> dict[str, dict[str, float]]:
    """Proportion dicts (``stats.proportion``) of ``flags`` [N] overall and per instruction.

    Keys ``"all"``, ``"follow_image"``, ``"follow_text"``; an empty subset gives n = 0 and NaN rates.

    Example::

        block_summary(samples, follows(mm, samples))["follow_image"]["rate"]
    """
    x = np.asarray(flags, dtype=bool)
    cats = np.array([s.category for s in samples_of(samples)])
    if x.shape != cats.shape:
        raise ValueError(f"{x.size} flags for {cats.size} samples")
    return {"all": proportion(x), **{c: proportion(x[cats == c]) for c in INSTRUCTIONS[1:]}}


def _rates(samples: Sequence[Sample] | Prepared, flags: torch.Tensor) -> dict[str, float]:
    return {k: v["rate"] for k, v in block_summary(samples, flags).items()}


@dataclass
class BlockResult(Document):
    """Notebook 04's document: MFR with the identified heads blocked vs random sets of the same size.

    Original keys (computed as before the amendments; the original rules read them): ``base`` /
    ``identified``: ``block_summary`` dicts; ``random``: per instruction, the original random sets' rates with
    their mean and sd; ``relative_drop``: the identified heads' relative MFR drop with a paired bootstrap
    interval; ``random_relative_drop``: the original sets' drops (values, mean, sd, p95); ``shares``: per share
    of the original sweep, k, the identified rate and the random sets' mean and sd.

    ``control`` (A1): ``sets`` [n_sets][k][2], ``relative_drops`` [n_sets], ``identified_relative_drop`` (paired
    bootstrap, the same samples), ``empirical_p`` (p, count, n, resolution), ``null`` (``stats.null_summary``
    of the drops), ``base`` / ``identified`` (``block_summary`` on those samples) and ``per_instruction``
    (n, identified drop, empirical p, null summary for follow_image and follow_text). ``share_sweep`` (A7):
    ``points``, one per distinct k: the identified rate and relative drop, the random sets' rates, drops and
    the identified drop's empirical p (few sets: resolution 1 / (1 + n_sets)).
    """

    model: str
    k: int
    n_random_sets: int
    n_test: int
    positions: str
    seed: int
    share: float
    base_rate: float
    """MFR of the unmodified model on all samples"""
    identified_heads: list[list[int]]
    random_sets: list[list[list[int]]]
    """the ``n_random_sets`` control sets of k heads each"""
    base: dict[str, dict[str, float]]
    identified: dict[str, dict[str, float]]
    random: dict[str, dict[str, Any]]
    relative_drop: dict[str, float]
    random_relative_drop: dict[str, Any]
    shares: dict[str, dict[str, float]]
    control: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)
    """A1: the control sets drawn without the identified heads, on the first ``n_samples`` test samples"""
    share_sweep: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)
    """A7: the share sweep with distinct k, each k's random sets drawn without its top heads"""


def block_experiment(mm: MLLM, samples: Sequence[Sample] | Prepared, scores: torch.Tensor, share: float = 0.05,
                     n_random: int = 10, seed: int = 0, positions: str = "all", shares: Sequence[float] = SHARES,
                     batch_size: int = 64, model_name: str | None = None, progress: bool = True,
                     n_boot: int = 1000, n_control: int = N_CONTROL, control_samples: int | None = None
                     ) -> BlockResult:
    """Blocking (alpha = 0) the identified heads vs ``n_random`` random sets of the same size: ``BlockResult``.

    ``scores``: the head scores [L, H] of notebook 03 (identified = ``top_heads(scores, share)``; for each
    share of ``shares`` its own top heads). Random sets: ``random_head_sets(L, H, k, n_random, seed)``, drawn
    uniformly over all heads (the original control). ``n_control`` > 0 adds the A1 control and the A7 sweep
    (``n_random`` sets per count) on the first ``control_samples`` samples (None or 0: all). Flags through
    ``measure.follow.FlagCache`` (prefix reuse).

    Example::

        result = block_experiment(mm, load_split("tiny", "test"), load_identification("tiny")["scores"])
    """
    data = prepare(mm, samples, batch_size)
    L, H = mm.n_layers, mm.n_heads
    scores = torch.as_tensor(np.asarray(scores, dtype=float))
    if tuple(scores.shape) != (L, H):
        raise ValueError(f"scores have shape {list(scores.shape)} but the model has {L} layers x {H} heads")
    flags = FlagCache(mm, data, positions)
    identified = top_heads(scores, share)
    k = len(identified)
    rsets = random_head_sets(L, H, k, n_random, seed)
    sweep = {s: (top_heads(scores, s), random_head_sets(L, H, n_top(L, H, s), n_random, seed)) for s in shares}
    jobs: list[tuple[Sequence[Head], float]] = [((), 1.0), (identified, 0.0), *((r, 0.0) for r in rsets)]
    for top, rs in sweep.values():
        jobs += [(top, 0.0), *((r, 0.0) for r in rs)]
    flags.fill(jobs, "blocking head sets", progress)

    base, blocked = flags(()), flags(identified)
    random_rates = [_rates(data, flags(r)) for r in rsets]
    base_rate = rate(base)
    random_drops = [float(relative_change(base.numpy().astype(float), flags(r).numpy().astype(float)))
                    if len(base) else math.nan for r in rsets]
    shares_doc: dict[str, Any] = {}
    for s, (top, rs) in sweep.items():
        rr = [rate(flags(r)) for r in rs]
        sp = spread(rr)
        shares_doc[str(float(s))] = {"k": len(top), "identified": rate(flags(top)),
                                     "random_mean": sp["mean"], "random_sd": sp["sd"]}
    finite = np.array([d for d in random_drops if np.isfinite(d)])
    return BlockResult(
        model=model_name or mm.name, k=k, n_random_sets=int(n_random), n_test=len(data),
        positions=positions, seed=int(seed), share=float(share), base_rate=base_rate,
        identified_heads=[list(h) for h in identified], random_sets=[[list(h) for h in r] for r in rsets],
        base=block_summary(data, base),
        identified=block_summary(data, blocked),
        random={key: {"rates": [r[key] for r in random_rates], **spread([r[key] for r in random_rates])}
                for key in INSTRUCTIONS},
        relative_drop=relative_drop(base, blocked, n_boot=n_boot, seed=seed),
        random_relative_drop={"values": random_drops, **spread(random_drops),
                              "p95": float(np.quantile(finite, 0.95)) if finite.size else math.nan},
        shares=shares_doc,
        **(_controls(mm, data, flags, scores, identified, n_control, control_samples, n_random, seed, positions,
                     shares, batch_size, n_boot, progress) if n_control > 0 else {}),
    )


def _drop_vs_sets(base: torch.Tensor, ident: torch.Tensor, sets: Sequence[torch.Tensor], n_boot: int, seed: int
                  ) -> dict[str, Any]:
    """The identified relative drop (paired bootstrap) against the sets' drops, all on the same samples."""
    d = relative_drop(base, ident, n_boot=n_boot, seed=seed)
    drops = set_drops(base, sets)
    return {"n": int(len(base)), "identified_relative_drop": d, "relative_drops": drops,
            **{k: v for k, v in against(d["mean"], drops, seed=seed).items() if k != "observed"}}


def _controls(mm: MLLM, data: Prepared, flags: FlagCache, scores: torch.Tensor, identified: Sequence[Head],
              n_control: int, control_samples: int | None, n_sweep: int, seed: int, positions: str,
              shares: Sequence[float], batch_size: int, n_boot: int, progress: bool) -> dict[str, Any]:
    """The ``control`` (A1) and ``share_sweep`` (A7) entries of the 04 document."""
    L, H = mm.n_layers, mm.n_heads
    n_sub = len(data) if not control_samples else min(int(control_samples), len(data))
    sub = data if n_sub == len(data) else prepare(mm, data.samples[:n_sub], batch_size)
    f = flags if sub is data else FlagCache(mm, sub, positions)
    csets = control_sets(L, H, identified, n_control, seed)
    order = ranked(scores)
    sweep = [(s, k, order[:k], control_sets(L, H, order[:k], n_sweep, seed)) for s, k in share_counts(L, H, shares)]
    jobs: list[tuple[Sequence[Head], float]] = [((), 1.0), (identified, 0.0), *((c, 0.0) for c in csets)]
    for _, _, top, rs in sweep:
        jobs += [(top, 0.0), *((r, 0.0) for r in rs)]
    f.fill(jobs, "control head sets (A1)", progress)
    base, ident = f(()), f(identified)
    cats = np.array([s.category for s in sub.samples])
    main = _drop_vs_sets(base, ident, [f(c) for c in csets], n_boot, seed)
    per = {}
    for c in INSTRUCTIONS[1:]:
        m = torch.as_tensor(cats == c)
        part = _drop_vs_sets(base[m], ident[m], [f(r)[m] for r in csets], n_boot, seed)
        per[c] = {k: v for k, v in part.items() if k != "relative_drops"}
    points = []
    for s, k, top, rs in sweep:
        rates = [rate(f(r)) for r in rs]
        part = _drop_vs_sets(base, f(top), [f(r) for r in rs], n_boot, seed)
        points.append({"requested_share": s, "k": k, "share": k / (L * H), "identified": proportion(f(top).numpy()),
                       "identified_relative_drop": part["identified_relative_drop"], "random_rates": rates,
                       "random_mean": spread(rates)["mean"], "random_sd": spread(rates)["sd"],
                       "random_relative_drops": part["relative_drops"], "empirical_p": part["empirical_p"],
                       "n_sets": len(rs)})
    where = f"the first {n_sub} of {len(data)} samples" if n_sub < len(data) else f"all {n_sub} samples"
    control = {"amendment": "A1", "n_sets": len(csets), "k": len(identified), "seed": int(seed),
               "stream": [CONTROL_STREAM, int(seed)], "drawn_from": L * H - len(identified),
               "excluded": [list(h) for h in identified], "n_samples": n_sub, "samples": where,
               "sets": heads_json(csets), "digest": sets_digest(csets), "base": block_summary(sub, base),
               "identified": block_summary(sub, ident),
               **main, "per_instruction": per}
    share_sweep = {"amendment": "A7", "n_sets": n_sweep, "n_samples": n_sub, "samples": where,
                   "note": f"few random sets per count ({n_sweep}): the p-values' resolution is 1/{n_sweep + 1}",
                   "points": points}
    return {"control": control, "share_sweep": share_sweep}
