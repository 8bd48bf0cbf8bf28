"""Attention-knockout sweeps: cut each edge in each window of k layers and record per-sample margins.

Design sections 1 and 4 (claims C1, C2, C10, C11). The edges come from ``mfutils.model.edges``; a sweep
reuses one clean forward per batch (prefix reuse, ``mfutils.model.hooks.prefix_trace``) by default.

Public API
----------
default_window(n_layers) -> int                 k when none is given: max(1, round(L / 6)) (ours)
windows(n_layers, k, stride=1) -> list[(start, stop)]   k consecutive layers, one window every stride layers
SweepResult                     per-sample margins: base [N], knocked [E, W, N], follows [N]; inssd, flips,
                                valid, curve, summary (three INSSD estimators with intervals, margin strata);
                                to_arrays, save/load (.npz)
SWEEP_METHODS                   ("prefix", "naive")
knockout_sweep(mm, samples | Prepared, edges=MAIN_EDGES, k=1, batch_size=64, progress=True, tags=None,
               method="prefix", batch_conditions=False) -> SweepResult

Example::

    sweep = knockout_sweep(mm, make_split("test", 16), ["image->last", "instruction->last"], k=1)
    sweep.summary("image->last")["inssd"]          # [W] mean INSSD (mean of ratios) per window
    sweep.summary("image->last")["ratio_of_means"]["value"]     # [W] the verdict estimator (A3)
    sweep.inssd().shape                            # [E, W, N]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mfutils.core.paths import atomic_output
from mfutils.data.sample import Sample
from mfutils.measure.answers import Targets, answer_logits
from mfutils.measure.margins import EPS, SMALL_MARGIN, inssd, inssd_estimators, instructed_wins, margins
from mfutils.measure.prepared import Prepared, samples_of
from mfutils.measure.stats import summarize
from mfutils.model.edges import MAIN_EDGES, parse_edge
from mfutils.model.groups import Encoded, edge_cut
from mfutils.model.hooks import knockout
from mfutils.model.loading import MLLM
from mfutils.model.prefix import prefix_trace
from mfutils.study.flow_batches import flow_batches

__all__ = ["default_window", "windows", "SweepResult", "SWEEP_METHODS", "knockout_sweep"]

SWEEP_METHODS: tuple[str, ...] = ("prefix", "naive")


def default_window(n_layers: int) -> int:
    """The window size k of a model with ``n_layers`` layers when none is given: ``max(1, round(L / 6))``
    (ours; the paper's k is unknown). About a sixth of the depth, near Geva et al.'s 9 of 48 layers: 1 for the
    8-layer tiny model, 5 for SmolLM2's 30 layers, 5 for a 32-layer 7B model. Fixed before any result of the
    30-layer model was seen (METHOD.md).

    Example: ``default_window(30)`` -> 5
    """
    if n_layers < 1:
        raise ValueError(f"a model needs at least one layer, got {n_layers}")
    return max(1, round(n_layers / 6))


def windows(n_layers: int, k: int, stride: int = 1) -> list[tuple[int, int]]:
    """Windows of ``k`` consecutive layers over depth, starting every ``stride`` layers:
    ``[(0, k), (stride, stride + k), ...]`` up to the last full window; with ``stride = k`` they tile the depth
    (a last partial tile is dropped).

    Example::

        windows(4, 2)               # [(0, 2), (1, 3), (2, 4)]
        windows(30, 5, stride=5)    # [(0, 5), (5, 10), ..., (25, 30)]
    """
    if not 1 <= k <= n_layers:
        raise ValueError(f"window size k={k} must be between 1 and the number of layers ({n_layers})")
    if stride < 1:
        raise ValueError(f"window stride must be >= 1, got {stride}")
    return [(s, s + k) for s in range(0, n_layers - k + 1, stride)]


@dataclass
class SweepResult:
    """Per-sample results of a knockout sweep over edges x windows.

    ``edges``: E names; ``windows``: W (start, stop) layer windows; ``base``: [N] instructed margins
    (``metrics.margins``, binary constraint); ``knocked``: [E, W, N] margins under each knockout (NaN where
    the sample lacks the edge's source or destination group); ``follows``: bool [N] (the instructed answer
    wins on the clean logits); ``categories``, ``tags``: str [N] (sample category; where the sample came
    from, e.g. ``"test"``).

    Example::

        sweep.inssd().shape                          # [E, W, N] per-sample (m' - m) / (|m| + eps)
        sweep.summary("image->last", sweep.categories == "follow_image")
    """

    edges: list[str]
    windows: list[tuple[int, int]]
    base: np.ndarray
    knocked: np.ndarray
    follows: np.ndarray
    categories: np.ndarray
    tags: np.ndarray
    n_layers: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.base.shape[0])

    @property
    def starts(self) -> list[int]:
        return [int(s) for s, _ in self.windows]

    def inssd(self, eps: float = EPS) -> np.ndarray:
        """[E, W, N] per-sample normalised margin change (``metrics.inssd``); NaN where not applicable."""
        return inssd(torch.from_numpy(self.base)[None, None], torch.from_numpy(self.knocked), eps=eps).numpy()

    def flips(self) -> np.ndarray:
        """[E, W, N] float: 1 where the decision between the two modalities changed sign, NaN where n/a."""
        out = (np.sign(self.knocked) != np.sign(self.base)[None, None]).astype(float)
        out[np.isnan(self.knocked)] = np.nan
        return out

    def _mask(self, mask: np.ndarray | None) -> np.ndarray:
        if mask is None:
            return np.ones(len(self), dtype=bool)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(self),):
            raise ValueError(f"mask must be bool [{len(self)}], got shape {mask.shape}")
        return mask

    def valid(self, edge: str, mask: np.ndarray | None = None) -> np.ndarray:
        """bool [N]: samples in ``mask`` for which ``edge`` applies (both groups present)."""
        return self._mask(mask) & np.isfinite(self.knocked[self.edges.index(edge)]).all(0)

    def curve(self, edge: str, mask: np.ndarray | None = None, eps: float = EPS) -> np.ndarray:
        """[W] mean INSSD per window over the applicable samples of ``mask`` (NaN if none)."""
        keep = self.valid(edge, mask)
        x = self.inssd(eps)[self.edges.index(edge)][:, keep]
        return x.mean(1) if keep.any() else np.full(len(self.windows), np.nan)

    def summary(self, edge: str, mask: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
                eps: float = EPS, small_margin: float = SMALL_MARGIN) -> dict[str, Any]:
        """Per window over the applicable samples of ``mask``: ``{"start", "inssd", "lo", "hi", "flip", "n",
        "median", "ratio_of_means", "strata"}``; only the first six (empty lists) when n = 0.

        ``inssd``/``lo``/``hi``: the mean of ratios (our original INSSD) with a bootstrap 95% interval;
        ``flip``: the flip rate; ``median``, ``ratio_of_means`` (the verdict estimator of amendment A3):
        ``{"value", "lo", "hi": [W]}``; ``strata``: |m| < ``small_margin`` vs >= (n, mean of ratios, ratio of
        means); all from ``mfutils.measure.margins.inssd_estimators`` on the same bootstrap draws.
        """
        keep = self.valid(edge, mask)
        n = int(keep.sum())
        if n == 0:
            return {"start": [], "inssd": [], "lo": [], "hi": [], "flip": [], "n": 0}
        e = self.edges.index(edge)
        x, fl = self.inssd(eps)[e][:, keep], self.flips()[e][:, keep]
        stats = [summarize(row, n_boot=n_boot, seed=seed) for row in x]
        est = inssd_estimators(self.base[keep], self.knocked[e][:, keep], eps=eps, n_boot=n_boot, seed=seed,
                               small_margin=small_margin)
        return {"start": self.starts, "inssd": [s["mean"] for s in stats], "lo": [s["lo"] for s in stats],
                "hi": [s["hi"] for s in stats], "flip": [float(r.mean()) for r in fl], "n": n,
                "median": est["median"], "ratio_of_means": est["ratio_of_means"], "strata": est["strata"]}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Every array (and the edge/window names) by name, as ``save`` and ``study.results.write_arrays`` store them."""
        return {"edges": np.array(self.edges), "windows": np.array(self.windows, dtype=np.int64).reshape(-1, 2),
                "base": self.base, "knocked": self.knocked, "follows": self.follows,
                "categories": self.categories.astype(str), "tags": self.tags.astype(str),
                "n_layers": np.int64(self.n_layers), "info": np.array(json.dumps(self.info))}

    def save(self, path: Path | str) -> Path:
        """Write ``to_arrays()`` to ``path`` (.npz, atomic: a kill never leaves a half-written file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            np.savez_compressed(tmp, **self.to_arrays())
        return path

    @classmethod
    def load(cls, path: Path | str) -> SweepResult:
        """Read a sweep written by ``save`` (or ``write_arrays(sweep.to_arrays(), ...)``)."""
        with np.load(path, allow_pickle=False) as z:
            return cls(edges=[str(e) for e in z["edges"]], windows=[(int(a), int(b)) for a, b in z["windows"]],
                       base=z["base"], knocked=z["knocked"], follows=z["follows"], categories=z["categories"],
                       tags=z["tags"], n_layers=int(z["n_layers"]), info=json.loads(str(z["info"])))


def _same_first_row(cuts: Sequence[tuple[torch.Tensor, torch.Tensor]], live: Sequence[int]) -> list[list[int]]:
    """``live`` edge indices grouped by the first query row their cut touches (a batched rerun of a group
    recomputes no more rows than its members' separate reruns would)."""
    groups: dict[int, list[int]] = {}
    for e in live:
        groups.setdefault(int(cuts[e][0].any(-1).any(0).nonzero()[0]), []).append(e)
    return list(groups.values())


@torch.no_grad()
def knockout_sweep(mm: MLLM, samples: Sequence[Sample] | Prepared, edges: Sequence[str] = MAIN_EDGES, k: int = 1,
                   batch_size: int = 64, progress: bool = True, tags: Sequence[str] | None = None,
                   method: str = "prefix", batch_conditions: bool = False, stride: int = 1) -> SweepResult:
    """Knock out each edge in each window of ``k`` layers (all heads) and record per-sample margins.

    ``edges``: names registered in ``mfutils.model.edges`` or any ``"a+b->c"``. ``method="prefix"``
    (default): one clean forward per batch (``mfutils.model.prefix.prefix_trace``) serves every edge and window; a
    knockout starting at layer l recomputes only layers >= l and only the rows from the first cut query on
    (prefix reuse, paper/METHOD.md). ``method="naive"``: one full forward per (edge, window) under
    ``hooks.knockout`` (the reference; equal results, tested to 1e-4). ``batch_conditions``: with prefix
    reuse, run all edges of one window as one batched rerun (E x B rows, per-row masks): fewer, larger
    calls (edges whose cuts start at the same query row share one rerun); off by default, see
    benchmarks/RESULTS.md for whether it pays on a given machine.
    A sample whose cut removes no existing attention edge (e.g. the source comes after the destination)
    keeps its baseline margin exactly; a sample lacking the edge's source or destination group gets NaN.
    ``samples``: a list (consecutive batches of ``batch_size``) or a ``Prepared`` (its batches;
    ``mfutils.study.flow_batches``); a batch that runs out of memory is retried at half the size.
    Shapes: ``base`` [N], ``knocked`` [E, W, N] with W = len(windows(L, k, stride)) (L - k + 1 sliding).
    ``info["forward_equivalents"]``: decoder work in full forwards of one batch, summed over batches
    (machine-independent cost).

    Example::

        sweep = knockout_sweep(mm, samples, MAIN_EDGES, k=1)
        sweep.summary("instruction->last")
    """
    if method not in SWEEP_METHODS:
        raise ValueError(f"method must be one of {SWEEP_METHODS}, got {method!r}")
    edges = list(edges)
    pairs = [parse_edge(e) for e in edges]
    wins = windows(mm.n_layers, k, stride)
    listed = samples_of(samples)
    N = len(listed)
    base = np.full(N, np.nan)
    knocked = np.full((len(edges), len(wins), N), np.nan)
    follow = np.zeros(N, dtype=bool)

    def run(index: list[int], enc: Encoded, t: Targets) -> float:
        """Fill the batch's rows of base, follow, knocked; returns the decoder work done (full forwards)."""
        groups = enc.groups.to("cpu")
        cuts = [edge_cut(groups, *pair) for pair in pairs]
        if method == "naive":
            logits = answer_logits(mm, enc).float()
            forwards = 1.0
        else:
            trace = prefix_trace(mm, enc)
            logits = trace.logits
        m = margins(logits, t)
        base[index] = m.cpu().numpy()
        follow[index] = instructed_wins(logits, t).cpu().numpy()
        live = [e for e, (cut, _) in enumerate(cuts) if bool(cut.any())]      # edges with something to cut here
        for w, (start, stop) in enumerate(wins):
            if method == "naive":
                new = {}
                for e in live:
                    with knockout(mm, cuts[e][0], range(start, stop)):
                        new[e] = answer_logits(mm, enc).float()
                    forwards += 1.0
            elif batch_conditions and len(live) > 1:
                new = {}
                for group in _same_first_row(cuts, live):      # edges whose reruns start at the same row
                    out = trace.rerun_many(start, stop, [cuts[e][0].to(mm.device) for e in group])
                    new.update({e: out[i] for i, e in enumerate(group)})
            else:
                new = {e: trace.rerun(start, stop, cut=cuts[e][0].to(mm.device)) for e in live}
            for e, (cut, valid) in enumerate(cuts):
                touched = cut.any(-1).any(-1)                   # samples whose cut removes something
                m_new = m.clone()
                if e in new:
                    m_new[touched] = margins(new[e], t)[touched]
                m_new[~valid] = float("nan")
                knocked[e, w, index] = m_new.cpu().numpy()
        return forwards if method == "naive" else trace.work

    done = flow_batches(mm, samples, batch_size, run, "knockout sweep", progress=progress,
                        fills=[(base, 0), (knocked, 2), (follow, 0)])     # spread over processes, if any
    return SweepResult(edges=edges, windows=wins, base=base, knocked=knocked, follows=follow,
                       categories=np.array([s.category for s in listed], dtype=str),
                       tags=np.array(list(tags) if tags is not None else ["all"] * N, dtype=str),
                       n_layers=mm.n_layers, info={"model": mm.name, "k": k, "attn": mm.attn_implementation,
                                                   "method": method, "batch_conditions": bool(batch_conditions),
                                                   "forward_equivalents": float(sum(w for _, w in done))})
