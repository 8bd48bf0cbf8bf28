"""Figures of notebooks 03-06: head scores, blocking, amplification, capability retention.

Every function takes an optional ``ax`` (a new figure otherwise), draws from the numbers that the head studies
compute (``mfutils.study``: scoring, selection, blocking, amplification, retention) or their results documents
hold, and returns the figure; save it with
``mfutils.present.plots.save_figure``. Colour-blind palette (seaborn ``colorblind``); sample counts in labels.

Public API
----------
plot_head_scores(scores, identified=(), ax=None, title=...) -> Figure     layer x head heatmap, identified outlined
plot_score_agreement(exhaustive, attribution, spearman, identified=(), ax=None) -> Figure   scatter
plot_layer_counts(per_layer_top_count, ax=None) -> Figure                 identified heads per layer
plot_block_mfr(doc04, ax=None) -> Figure        MFR per instruction: base, identified blocked, random blocked
plot_share_sweep(doc04, ax=None) -> Figure      MFR vs share of heads blocked, identified vs random mean ± sd
plot_recovery(doc05, ax=None) -> Figure         recovery (and damage) vs alpha
plot_capability(doc06, ax=None) -> Figure       accuracy per category before/after blocking

Example::

    fig = plot_head_scores(scores, identified=top_heads(scores))      # top_heads: mfutils.study.selection
    save_figure(fig, "03_head_scores", model="tiny")
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.patches import Rectangle

from mfutils.present.plots import COLUMN_WIDTH, set_theme

__all__ = ["plot_head_scores", "plot_score_agreement", "plot_layer_counts", "plot_block_mfr", "plot_share_sweep",
           "plot_recovery", "plot_capability"]

_LABELS = {"all": "all", "follow_image": "follow image", "follow_text": "follow text"}


def _axes(ax: plt.Axes | None, size: tuple[float, float]) -> tuple[plt.Figure, plt.Axes]:
    set_theme()
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
        return fig, ax
    return ax.figure, ax


def _palette() -> list[Any]:
    return sns.color_palette("colorblind")


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def _yerr(props: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """[2, n] asymmetric error bars from proportion dicts (rate, lo, hi); NaN-safe."""
    rate = np.array([_num(p["rate"]) for p in props])
    lo = np.array([_num(p["lo"]) for p in props])
    hi = np.array([_num(p["hi"]) for p in props])
    return np.nan_to_num(np.vstack([rate - lo, hi - rate]), nan=0.0).clip(min=0.0)


def plot_head_scores(scores: Any, identified: Sequence[Sequence[int]] = (), ax: plt.Axes | None = None,
                     title: str = "head score (margin drop when blocked)") -> plt.Figure:
    """Heatmap of a [L, H] score table (layers as rows, deepest at the bottom); identified heads outlined.

    Diverging colour scale centred on 0 (positive: the head supports following); NaN cells blank.
    """
    s = np.array([[_num(v) for v in row] for row in np.asarray(scores, dtype=object)], dtype=float)
    L, H = s.shape
    fig, ax = _axes(ax, (COLUMN_WIDTH, max(1.8, 0.28 * L + 0.8)))
    finite = s[np.isfinite(s)]
    vmax = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
    sns.heatmap(s, ax=ax, cmap="vlag", center=0.0, vmin=-vmax, vmax=vmax, square=False, linewidths=0.3,
                linecolor="white", cbar_kws={"label": "mean margin drop", "shrink": 0.8})
    for l, h in identified:
        ax.add_patch(Rectangle((h, l), 1, 1, fill=False, edgecolor="black", lw=1.6))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"{title}\n(outlined: top {len(identified)} = identified)", fontsize=8)
    return fig


def plot_score_agreement(exhaustive: Any, attribution: Any, spearman: float, identified: Sequence[Sequence[int]] = (),
                         ax: plt.Axes | None = None, n: int | None = None) -> plt.Figure:
    """Scatter of exhaustive (x) against attribution-patching (y) scores, one point per head; identified
    heads highlighted; Spearman rho in the title; the diagonal y = x for reference."""
    ex = np.array([[_num(v) for v in row] for row in np.asarray(exhaustive, dtype=object)], dtype=float)
    at = np.array([[_num(v) for v in row] for row in np.asarray(attribution, dtype=object)], dtype=float)
    fig, ax = _axes(ax, (COLUMN_WIDTH, COLUMN_WIDTH))
    pal = _palette()
    mask = np.zeros_like(ex, dtype=bool)
    for l, h in identified:
        mask[l, h] = True
    ax.scatter(ex[~mask], at[~mask], s=10, color=pal[0], alpha=0.7, label="other heads")
    ax.scatter(ex[mask], at[mask], s=22, color=pal[3], marker="D", label="identified")
    both = np.concatenate([ex[np.isfinite(ex)], at[np.isfinite(at)]])
    if both.size:
        lo, hi = float(both.min()), float(both.max())
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="y = x")
    ax.set_xlabel("exhaustive score (measured drop)")
    ax.set_ylabel("attribution score (first-order estimate)")
    rho = "n/a" if spearman is None or not math.isfinite(float(spearman)) else f"{float(spearman):.2f}"
    count = f", n = {n} samples" if n is not None else ""
    ax.set_title(f"exhaustive vs attribution patching\nSpearman rho = {rho} over {ex.size} heads{count}", fontsize=8)
    ax.legend(fontsize=6, loc="upper left")
    return fig


def plot_layer_counts(per_layer_top_count: Sequence[int], ax: plt.Axes | None = None) -> plt.Figure:
    """Bar chart: how many of the identified (top-share) heads sit in each layer."""
    counts = np.asarray(per_layer_top_count, dtype=int)
    fig, ax = _axes(ax, (COLUMN_WIDTH, 2.2))
    ax.bar(np.arange(len(counts)), counts, color=_palette()[0])
    ax.set_xticks(np.arange(len(counts)))
    ax.set_xlabel("layer")
    ax.set_ylabel("identified heads")
    ax.set_title(f"where the top {int(counts.sum())} heads sit", fontsize=8)
    ax.yaxis.get_major_locator().set_params(integer=True)
    return fig


def _bars_base_identified_random(ax: plt.Axes, doc: Mapping[str, Any], keys: list[str], labels: list[str],
                                 ident_label: str, ylabel: str, title: str) -> None:
    """Three bars per key: unmodified and identified-blocked (Wilson 95% CI), random-blocked (mean ± sd,
    each set a dot). ``doc`` has ``base``/``identified`` proportions and ``random`` {mean, sd, rates} per key."""
    pal = _palette()
    x = np.arange(len(keys))
    w = 0.26
    base = [doc["base"][k] for k in keys]
    ident = [doc["identified"][k] for k in keys]
    ax.bar(x - w, [_num(p["rate"]) for p in base], w, yerr=_yerr(base), color=pal[0], capsize=2, label="unmodified")
    ax.bar(x, [_num(p["rate"]) for p in ident], w, yerr=_yerr(ident), color=pal[3], capsize=2, label=ident_label)
    ax.bar(x + w, [_num(doc["random"][k]["mean"]) for k in keys], w,
           yerr=np.nan_to_num([_num(doc["random"][k]["sd"]) for k in keys]), color=pal[2], capsize=2,
           label=f"random blocked (mean ± sd, {doc.get('n_random_sets', '?')} sets)")
    for i, k in enumerate(keys):
        rates = [_num(r) for r in doc["random"][k].get("rates", [])]
        ax.scatter(np.full(len(rates), x[i] + w), rates, s=4, color="black", zorder=3)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{lab}\n(n = {doc['base'][k]['n']})" for k, lab in zip(keys, labels)])
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{title} (positions: {doc.get('positions', '?')})", fontsize=8)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))


def plot_block_mfr(doc: Mapping[str, Any], ax: plt.Axes | None = None) -> plt.Figure:
    """MFR per instruction: unmodified, identified heads blocked (Wilson 95% CI), random sets blocked
    (mean ± sd, with each set as a dot)."""
    keys = ["all", "follow_image", "follow_text"]
    fig, ax = _axes(ax, (COLUMN_WIDTH * 1.3, 2.6))
    _bars_base_identified_random(ax, doc, keys, [_LABELS[k] for k in keys], f"identified blocked (k = {doc['k']})",
                                 "modality-following ratio", "blocking heads")
    return fig


def plot_share_sweep(doc: Mapping[str, Any], ax: plt.Axes | None = None) -> plt.Figure:
    """MFR against the share of heads blocked: identified (top by score) vs random (mean ± sd)."""
    fig, ax = _axes(ax, (COLUMN_WIDTH, 2.4))
    pal = _palette()
    items = sorted(((float(s), v) for s, v in doc["shares"].items()), key=lambda t: t[0])
    shares = np.array([s * 100 for s, _ in items])
    ident = np.array([_num(v["identified"]) for _, v in items])
    rmean = np.array([_num(v["random_mean"]) for _, v in items])
    rsd = np.nan_to_num(np.array([_num(v["random_sd"]) for _, v in items]))
    ax.axhline(_num(doc["base"]["all"]["rate"]), color="grey", ls=":", lw=1, label="unmodified")
    ax.plot(shares, ident, marker="o", color=pal[3], label="identified blocked")
    ax.plot(shares, rmean, marker="s", color=pal[2], label=f"random blocked ({doc['n_random_sets']} sets)")
    ax.fill_between(shares, rmean - rsd, rmean + rsd, color=pal[2], alpha=0.25, lw=0)
    for s, (_, v) in zip(shares, items):
        ax.annotate(f"k={v['k']}", (s, 0.02), fontsize=6, ha="center")
    ax.set_xlabel("share of heads blocked (%)")
    ax.set_ylabel(f"MFR (n = {doc['base']['all']['n']})")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def plot_recovery(doc: Mapping[str, Any], ax: plt.Axes | None = None) -> plt.Figure:
    """Recovery of failed samples against alpha: identified heads (Wilson CI), random sets (mean ± sd),
    the arbitration-failure subset, and the damage to previously correct samples (dashed)."""
    fig, ax = _axes(ax, (COLUMN_WIDTH * 1.2, 2.6))
    pal = _palette()
    a = np.asarray(doc["alphas"], dtype=float)
    rec = doc["identified"]["recovery"]
    ax.errorbar(a, [_num(p["rate"]) for p in rec], yerr=_yerr(rec), marker="o", color=pal[3], capsize=2,
                label=f"identified: recovery (n = {doc['n_failed']} failed)")
    rm = np.array([_num(v) for v in doc["random"]["recovery_mean"]])
    rs = np.nan_to_num(np.array([_num(v) for v in doc["random"]["recovery_sd"]]))
    ax.plot(a, rm, marker="s", color=pal[2], label=f"random: recovery ({doc['random'].get('n_sets', '?')} sets)")
    ax.fill_between(a, rm - rs, rm + rs, color=pal[2], alpha=0.25, lw=0)
    arb = doc["arbitration"]["recovery"]
    ax.errorbar(a + 0.08, [_num(p["rate"]) for p in arb], yerr=_yerr(arb), marker="^", color=pal[1], capsize=2,
                label=f"identified: arbitration failures (n = {doc['arbitration']['n']})")
    if "damage_mean" in doc["random"]:
        dm = np.array([_num(v) for v in doc["random"]["damage_mean"]])
        ds = np.nan_to_num(np.array([_num(v) for v in doc["random"]["damage_sd"]]))
        ax.errorbar(a + 0.16, dm, yerr=ds, marker="+", ls=":", color=pal[2], capsize=2, label="random: damage")
    dmg = doc["identified"]["damage"]
    ax.errorbar(a - 0.08, [_num(p["rate"]) for p in dmg], yerr=_yerr(dmg), marker="x", ls="--", color=pal[7],
                capsize=2, label=f"identified: damage (n = {doc['n_correct_reference']} correct)")
    ax.set_xlabel("alpha (head output scale)")
    ax.set_ylabel("share of samples")
    ax.set_xticks(a)
    ax.set_ylim(-0.02, 1.05)
    ax.set_title(f"amplifying heads (positions: {doc.get('positions', '?')})", fontsize=8)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def plot_capability(doc: Mapping[str, Any], ax: plt.Axes | None = None) -> plt.Figure:
    """Accuracy per category: unmodified, identified heads blocked, random sets blocked (mean ± sd)."""
    cats = list(doc["categories"])
    fig, ax = _axes(ax, (COLUMN_WIDTH * 1.2, 2.5))
    _bars_base_identified_random(ax, doc, cats, [c.replace("_", " ") for c in cats], "identified blocked",
                                 "accuracy", "capability after blocking")
    return fig
