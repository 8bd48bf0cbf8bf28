"""Measures on answer logits: the instructed margin, INSSD, flips, instructed wins.

Public API
----------
EPS                                               1e-3, the INSSD denominator's floor
SMALL_MARGIN                                      1.0, |m| below it is a "small margin" (claims.yaml A3)
margins(logits, targets, constrained=True) -> Tensor[B]   log P+ - log P- (or P+ - P- unconstrained)
inssd(m, m_new, eps=EPS) -> Tensor[B]             per-sample normalised margin change (mean it for INSSD)
ratio_of_means(m, m_new) -> ndarray[...]          INSSD as mean(m' - m) / mean(|m|) over the last axis (ours, A3)
inssd_estimators(m [N], m_new [W, N], eps=EPS, n_boot=1000, seed=0, small_margin=SMALL_MARGIN) -> dict
        per window: mean of ratios, median of ratios, ratio of means, each {"value", "lo", "hi": [W]} with
        a paired bootstrap 95% interval; "strata": the same for |m| < small_margin and >= small_margin
flips(m, m_new) -> BoolTensor[B]                  the decision between the two modalities changed sign
instructed_wins(logits, targets) -> BoolTensor[B] argmax over the candidates is the instructed answer (MFR)

``logits``: [B, V] answer-position logits (``mfutils.measure.answers.answer_logits``); ``targets``:
``mfutils.measure.answers.Targets`` of the same B samples. Whole-model "does it follow?" flags over a sample
set are ``mfutils.measure.follow.follows``.

Example::

    m = margins(answer_logits(mm, enc), targets_for(mm, samples))     # [B]
    ok = instructed_wins(answer_logits(mm, enc), targets_for(mm, samples))
    est = inssd_estimators(m.numpy(), m_knocked.numpy()[None])           # one window
    est["ratio_of_means"]["value"][0], est["strata"]["small"]["n"]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from mfutils.measure.answers import Targets

__all__ = ["EPS", "SMALL_MARGIN", "margins", "inssd", "ratio_of_means", "inssd_estimators", "flips",
           "instructed_wins"]

EPS = 1e-3
# |m| below this is a "small margin" sample in the stratified INSSD view; the same number as
# paper/claims.yaml amendments.thresholds.small_margin (tested).
SMALL_MARGIN = 1.0


def _gather_lse(logp: torch.Tensor, ids: list[list[int]]) -> torch.Tensor:
    width = max(len(x) for x in ids)
    idx = torch.tensor([x + [x[0]] * (width - len(x)) for x in ids], device=logp.device)
    valid = torch.tensor([[True] * len(x) + [False] * (width - len(x)) for x in ids], device=logp.device)
    vals = logp.gather(1, idx).masked_fill(~valid, float("-inf"))
    return torch.logsumexp(vals, dim=1)


def margins(logits: torch.Tensor, targets: Targets, constrained: bool = True) -> torch.Tensor:
    """Margin of the instructed modality at the answer position, [B, V] logits -> [B].

    Reconstruction (ours; the paper's exact formula is not public): P+ and P- are the summed
    probabilities of the instructed and the other modality's candidate answers. With the binary
    distribution constraint (default) they are renormalised over the pair and the margin is the
    log-odds of the pair, log P+ - log P-. Unconstrained: the raw probability difference P+ - P-,
    which counts probability mass leaking to unrelated tokens.

    Example::

        m = margins(logits, targets)          # [B], positive: the instructed side wins the pair
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    lp_pos, lp_neg = _gather_lse(logp, targets.pos), _gather_lse(logp, targets.neg)
    if constrained:
        return lp_pos - lp_neg
    return lp_pos.exp() - lp_neg.exp()


def inssd(m: torch.Tensor, m_new: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-sample normalised change of the instructed margin, (m' - m) / (|m| + eps), [B] -> [B].

    INSSD (ours, within the paper's binary-constraint description) is the mean of this over samples:
    0 no effect, -1 the margin is erased, below -1 the decision flips toward the other modality,
    positive the intervention strengthens following.

    Example: ``inssd(m, m_knocked).mean()``.
    """
    return (m_new - m) / (m.abs() + eps)


def ratio_of_means(m: np.ndarray, m_new: np.ndarray) -> np.ndarray:
    """INSSD as a ratio of means over samples (the last axis): mean(m' - m) / mean(|m|), [..., N] -> [...].

    Ours (paper/claims.yaml amendment A3; the paper defines no estimator publicly): the estimator the amended
    verdicts read. It is on the scale of the per-sample INSSD (0 no effect, -1 the average margin erased),
    needs no eps, and a few samples with tiny |m| cannot dominate it, unlike the mean of ratios
    ``inssd(m, m_new).mean()``; unlike the median it still sees an effect carried by a minority of samples.
    ``m`` [N] broadcasts against ``m_new`` [..., N]. NaN when every |m| is 0 (or N = 0).

    Example::

        ratio_of_means(np.array([1.0, 3.0]), np.array([0.0, 3.0]))     # -0.25 (the mean of ratios: -0.5)
    """
    m, m_new = np.asarray(m, dtype=float), np.asarray(m_new, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        den = np.abs(m).mean(-1)
        return np.where(den > 0, (m_new - m).mean(-1) / np.where(den > 0, den, 1.0), np.nan)


def _percentiles(boots: np.ndarray, level: float = 0.95) -> tuple[list[float], list[float]]:
    """Per column of ``boots`` [B, W]: the percentile interval of its finite values, as
    ``stats.paired_bootstrap`` takes it (NaN where none is finite)."""
    a = (1 - level) / 2
    if np.isfinite(boots).all():
        lo, hi = np.quantile(boots, [a, 1 - a], axis=0)
        return [float(x) for x in lo], [float(x) for x in hi]
    out: tuple[list[float], list[float]] = ([], [])
    for col in boots.T:
        b = col[np.isfinite(col)]
        out[0].append(float(np.quantile(b, a)) if b.size else math.nan)
        out[1].append(float(np.quantile(b, 1 - a)) if b.size else math.nan)
    return out


def _boot_medians(r: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """np.median of every resample, [B]: ``r`` [n] values, ``counts`` [B, n] how often each sample is drawn.
    The order statistics come from cumulative counts over the sorted values (no sort per resample)."""
    n = r.shape[0]
    order = np.argsort(r, kind="stable")
    cum = np.cumsum(counts[:, order], axis=1)                                 # [B, n]
    lo, hi = (cum > (n - 1) // 2).argmax(1), (cum > n // 2).argmax(1)        # the two middle order statistics
    return 0.5 * (r[order][lo] + r[order][hi])


def _estimates(m: np.ndarray, m_new: np.ndarray, eps: float, n_boot: int, seed: int,
               median: bool = True) -> dict[str, dict[str, list[float]]]:
    """Mean of ratios, median of ratios (``median``) and ratio of means per window of ``m_new`` [W, n], each
    with a paired bootstrap interval: the [n_boot, n] index matrix of ``stats.paired_bootstrap`` (same seed)
    resamples the samples of every window and estimator together; vectorised over draws (a count matrix)."""
    names = ("mean_of_ratios", "median", "ratio_of_means") if median else ("mean_of_ratios", "ratio_of_means")
    out: dict[str, dict[str, list[float]]] = {k: {"value": [], "lo": [], "hi": []} for k in names}
    n = m.shape[0]
    if n == 0:
        return out
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    counts = np.bincount((np.arange(n_boot)[:, None] * n + idx).ravel(), minlength=n_boot * n)
    counts = counts.reshape(n_boot, n).astype(float)                          # [B, n] draws of each sample
    a = np.abs(m)
    d = m_new - m[None]                                                       # [W, n]
    r = d / (a + eps)                                                         # = inssd(m, m_new, eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        point = {"mean_of_ratios": r.mean(1), "ratio_of_means": ratio_of_means(m, m_new)}
        boots = {"mean_of_ratios": counts @ r.T / n, "ratio_of_means": (counts @ d.T) / (counts @ a)[:, None]}
    if median:
        point["median"] = np.median(r, axis=1)
        boots["median"] = np.stack([_boot_medians(row, counts) for row in r], axis=1)
    for k in names:
        lo, hi = _percentiles(boots[k])
        out[k] = {"value": [float(x) for x in point[k]], "lo": lo, "hi": hi}
    return out


def inssd_estimators(m: np.ndarray, m_new: np.ndarray, eps: float = EPS, n_boot: int = 1000, seed: int = 0,
                     small_margin: float = SMALL_MARGIN) -> dict[str, Any]:
    """Three INSSD estimators per window with paired bootstrap 95% intervals, and a margin-stratified view.

    ``m``: [N] baseline margins; ``m_new``: [W, N] margins under an intervention in each of W windows (finite).
    Per window, over samples: the mean of the ratios (m' - m) / (|m| + eps) (our original reconstruction,
    ``inssd``), their median, and the ratio of means (``ratio_of_means``, ours, the verdict estimator of
    amendment A3). Intervals: percentile bootstrap over samples, the same [n_boot, N] resamples for every
    window and estimator (``stats.paired_bootstrap``'s draws for the same seed; vectorised). Strata (ours):
    samples with |m| < ``small_margin`` and with |m| >= ``small_margin``, each with its n, mean of ratios and
    ratio of means (intervals resampled within the stratum). Returns ``{"mean_of_ratios" | "median" |
    "ratio_of_means": {"value", "lo", "hi": [W]}, "strata": {"small_margin": float, "small" | "large": {"n",
    "mean_of_ratios", "ratio_of_means"}}}``; lists are empty for an empty set.

    Example::

        est = inssd_estimators(base, knocked)                # base [N], knocked [W, N]
        est["ratio_of_means"]["value"], est["strata"]["small"]["n"]
    """
    m, m_new = np.asarray(m, dtype=float), np.asarray(m_new, dtype=float)
    if m_new.ndim != 2 or m_new.shape[1] != m.shape[0]:
        raise ValueError(f"m_new must be [W, N] for m [N], got {m_new.shape} and {m.shape}")
    out: dict[str, Any] = _estimates(m, m_new, eps, n_boot, seed)
    small = np.abs(m) < small_margin
    strata: dict[str, Any] = {"small_margin": float(small_margin)}
    for name, keep in (("small", small), ("large", ~small)):
        est = _estimates(m[keep], m_new[:, keep], eps, n_boot, seed, median=False)
        strata[name] = {"n": int(keep.sum()), "mean_of_ratios": est["mean_of_ratios"],
                        "ratio_of_means": est["ratio_of_means"]}
    out["strata"] = strata
    return out


def flips(m: torch.Tensor, m_new: torch.Tensor) -> torch.Tensor:
    """True where the pairwise decision (sign of the margin) changed, [B] -> BoolTensor [B].

    Example: ``flips(m, m_knocked).float().mean()``.
    """
    return torch.sign(m) != torch.sign(m_new)


def instructed_wins(logits: torch.Tensor, targets: Targets) -> torch.Tensor:
    """True where the argmax over the question's candidates is the instructed answer (MFR numerator),
    [B, V] -> BoolTensor [B] (on the CPU).

    Example: ``instructed_wins(answer_logits(mm, enc), targets).float().mean()``.
    """
    out = []
    for b in range(logits.shape[0]):
        c = torch.tensor(targets.cand[b], device=logits.device)
        best = int(logits[b, c].argmax())
        out.append(best in targets.answer_set[b] if targets.answer_set is not None else best == targets.answer_index[b])
    return torch.tensor(out, dtype=torch.bool)
