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
plot_random_drops(doc04, ax=None) -> Figure     A1: histogram of the control sets' relative drops, identified marked
plot_block_figure(doc04) -> Figure              the two above side by side (figure 04_block_vs_random)
plot_share_sweep(doc04, ax=None) -> Figure      MFR vs share of heads blocked, identified vs random mean ± sd
                                                (the A7 sweep with distinct k when the document has it)
plot_recovery(doc05, ax=None) -> Figure         recovery (and damage) vs alpha, every failed sample
plot_heldout_recovery(doc05, ax=None) -> Figure A2: recovery on the evaluation half vs alpha, random band,
                                                the A1 sets at the chosen alpha
plot_amplification_figure(doc05) -> Figure      the two above side by side (figure 05_amplification)
plot_capability(doc06, ax=None) -> Figure       accuracy per category before/after blocking
plot_capability_held_out(doc06, ax=None) -> Figure   A6: the same on the prompts not in the training stream
plot_capability_figure(doc06) -> Figure         the two above side by side (figure 06_capability)

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

__all__ = ["plot_head_scores", "plot_score_agreement", "plot_layer_counts", "plot_block_mfr", "plot_random_drops",
           "plot_block_figure", "plot_share_sweep", "plot_recovery", "plot_heldout_recovery",
           "plot_amplification_figure", "plot_capability", "plot_capability_held_out", "plot_capability_figure"]

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
                                 ident_label: str, ylabel: str, title: str, random_label: str = "") -> None:
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
           label=f"random blocked (mean ± sd, {doc.get('n_random_sets', '?')} sets{random_label})")
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
                                 "modality-following ratio", "blocking heads", random_label=", original: all heads")
    return fig


def plot_share_sweep(doc: Mapping[str, Any], ax: plt.Axes | None = None) -> plt.Figure:
    """MFR against the share of heads blocked: identified (top by score) vs random (mean ± sd).

    With the A7 sweep (``doc["share_sweep"]``): one point per distinct k on the control's samples, the identified
    MFR with its Wilson interval, random sets drawn without that k's top heads; otherwise the original sweep.
    """
    fig, ax = _axes(ax, (COLUMN_WIDTH, 2.4))
    pal = _palette()
    sweep = doc.get("share_sweep")
    if sweep:
        pts = sweep["points"]
        shares = np.array([_num(p["share"]) * 100 for p in pts])
        ident = [p["identified"] for p in pts]
        ax.errorbar(shares, [_num(p["rate"]) for p in ident], yerr=_yerr(ident), marker="o", color=pal[3], capsize=2,
                    label="identified blocked (Wilson 95%)")
        rmean = np.array([_num(p["random_mean"]) for p in pts])
        rsd = np.nan_to_num(np.array([_num(p["random_sd"]) for p in pts]))
        label = f"random blocked ({sweep['n_sets']} sets per k, without its top heads)"
        base, n = _num(doc["control"]["base"]["all"]["rate"]), sweep["n_samples"]
        ks = [p["k"] for p in pts]
    else:
        items = sorted(((float(s), v) for s, v in doc["shares"].items()), key=lambda t: t[0])
        shares = np.array([s * 100 for s, _ in items])
        ax.plot(shares, np.array([_num(v["identified"]) for _, v in items]), marker="o", color=pal[3],
                label="identified blocked")
        rmean = np.array([_num(v["random_mean"]) for _, v in items])
        rsd = np.nan_to_num(np.array([_num(v["random_sd"]) for _, v in items]))
        label = f"random blocked ({doc['n_random_sets']} sets)"
        base, n = _num(doc["base"]["all"]["rate"]), doc["base"]["all"]["n"]
        ks = [v["k"] for _, v in items]
    ax.axhline(base, color="grey", ls=":", lw=1, label="unmodified")
    ax.plot(shares, rmean, marker="s", color=pal[2], label=label)
    ax.fill_between(shares, rmean - rsd, rmean + rsd, color=pal[2], alpha=0.25, lw=0)
    for x, k in zip(shares, ks):
        ax.annotate(f"k={k}", (x, 0.02), fontsize=6, ha="center")
    ax.set_xlabel("share of heads blocked (%)")
    ax.set_ylabel(f"MFR (n = {n})")
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
    ax.set_title(f"amplifying heads, every failed sample (original; positions: {doc.get('positions', '?')})",
                 fontsize=8)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def plot_capability(doc: Mapping[str, Any], ax: plt.Axes | None = None) -> plt.Figure:
    """Accuracy per category: unmodified, identified heads blocked, random sets blocked (mean ± sd)."""
    cats = list(doc["categories"])
    fig, ax = _axes(ax, (COLUMN_WIDTH * 1.2, 2.5))
    _bars_base_identified_random(ax, doc, cats, [c.replace("_", " ") for c in cats], "identified blocked",
                                 "accuracy", "capability after blocking, every prompt",
                                 random_label=", original: all heads")
    return fig


def _side_by_side(doc: Mapping[str, Any], left: Any, right: Any | None, width: float) -> plt.Figure:
    """``left(doc, ax)`` and ``right(doc, ax)`` in one figure of two panels; ``left`` alone when ``right`` is None."""
    if right is None:
        return left(doc)
    set_theme()
    fig, (a, b) = plt.subplots(1, 2, figsize=(COLUMN_WIDTH * width, 2.7), gridspec_kw={"wspace": 0.3})
    left(doc, ax=a)
    right(doc, ax=b)
    for ax in (a, b):                                      # legends below their panel, not over the other one
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(handles, labels, fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.3), frameon=False)
    return fig


def plot_random_drops(doc: Mapping[str, Any], ax: plt.Axes | None = None) -> plt.Figure:
    """A1: histogram of the control sets' relative MFR drops (drawn from the non-identified heads), the identified
    heads' drop on the same samples as a line with its paired bootstrap 95% interval shaded, the random mean and
    95th percentile dashed; the empirical p-value with its count in the title."""
    fig, ax = _axes(ax, (COLUMN_WIDTH, 2.4))
    pal = _palette()
    c = doc["control"]
    drops = np.array([_num(x) for x in c["relative_drops"]], dtype=float)
    drops = drops[np.isfinite(drops)]
    d = c["identified_relative_drop"]
    x, lo, hi = _num(d["mean"]), _num(d["lo"]), _num(d["hi"])
    if drops.size:
        top = max(float(drops.max()), x if math.isfinite(x) else -math.inf)
        bins = np.linspace(min(0.0, float(drops.min())), max(top, 0.05) * 1.05, 30)
        ax.hist(drops, bins=bins, color=pal[2], alpha=0.8, label=f"random sets ({drops.size})")
    if math.isfinite(x):
        ax.axvline(x, color=pal[3], lw=1.6, label="identified")
        if math.isfinite(lo) and math.isfinite(hi):
            ax.axvspan(lo, hi, color=pal[3], alpha=0.15, lw=0)
    null = c["null"]
    for v, ls, lab in ((null["mean"], "--", "random mean"), (null["p95"], ":", "random 95th pct")):
        if v is not None and math.isfinite(_num(v)):
            ax.axvline(_num(v), color="black", ls=ls, lw=0.9, label=lab)
    p = c["empirical_p"]
    ax.set_xlabel(f"relative MFR drop (n = {c['n_samples']} test samples)")
    ax.set_ylabel("random sets")
    ax.set_title(f"A1 control: {c['n_sets']} sets of {c['k']} from the {c['drawn_from']} other heads\n"
                 f"empirical p = {_fmt(p['p'], 3)} ({p['count']} of {p['n']} at least as strong)", fontsize=8)
    if ax.get_legend_handles_labels()[0]:                   # nothing to label when no drop is defined
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def plot_block_figure(doc: Mapping[str, Any]) -> plt.Figure:
    """Figure 04_block_vs_random: the MFR bars (``plot_block_mfr``) beside the A1 histogram (``plot_random_drops``,
    when the document has the control)."""
    return _side_by_side(doc, plot_block_mfr, plot_random_drops if doc.get("control") else None, 2.2)


def _fmt(x: Any, nd: int = 2) -> str:
    v = _num(x)
    return "nan" if not math.isfinite(v) else f"{v:.{nd}f}"


def plot_heldout_recovery(doc: Mapping[str, Any], ax: plt.Axes | None = None) -> plt.Figure:
    """A2: recovery of the evaluation half against alpha: identified heads (Wilson 95%), the selection half's
    curve that chose alpha (dotted), the first A1 sets' band (mean ± sd), every A1 set at the chosen alpha
    (dots), the arbitration failures of the evaluation half, and the damage to the correct reference set."""
    fig, ax = _axes(ax, (COLUMN_WIDTH * 1.2, 2.6))
    pal = _palette()
    h = doc["held_out"]
    a = np.asarray(doc["alphas"], dtype=float)
    rec = h["recovery_curve"]
    ax.errorbar(a, [_num(p["rate"]) for p in rec], yerr=_yerr(rec), marker="o", color=pal[3], capsize=2,
                label=f"identified, evaluation half (n = {h['n_evaluation']})")
    ax.plot(a, [_num(p["rate"]) for p in h["selection_recovery"]], ls=":", marker=".", color=pal[3], alpha=0.6,
            label=f"identified, selection half (n = {h['n_selection']})")
    cv = h["random"]["curve"]
    rm = np.array([_num(v) for v in cv["mean"]])
    rs = np.nan_to_num(np.array([_num(v) for v in cv["sd"]]))
    ax.plot(a, rm, marker="s", color=pal[2], label=f"random, evaluation half (first {cv['n_sets']} A1 sets)")
    ax.fill_between(a, rm - rs, rm + rs, color=pal[2], alpha=0.25, lw=0)
    if h["alpha"] is not None:
        at = np.array([_num(v) for v in h["random"]["recovery"]])
        jitter = np.random.default_rng(0).uniform(-0.12, 0.12, at.size)
        ax.scatter(h["alpha"] + jitter, at, s=3, color="black", alpha=0.5, zorder=3,
                   label=f"{h['random']['n_sets']} A1 sets at the chosen alpha")
        ax.axvline(h["alpha"], color="grey", lw=0.8, ls="--")
    arb = h["arbitration"]["curve"]
    ax.errorbar(a + 0.08, [_num(p["rate"]) for p in arb], yerr=_yerr(arb), marker="^", color=pal[1], capsize=2,
                label=f"identified: arbitration failures (n = {h['arbitration']['n']})")
    dmg = doc["identified"]["damage"]
    ax.errorbar(a - 0.08, [_num(p["rate"]) for p in dmg], yerr=_yerr(dmg), marker="x", ls="--", color=pal[7],
                capsize=2, label=f"identified: damage (n = {doc['n_correct_reference']} correct)")
    p = h["random"]["empirical_p"]
    ax.set_xlabel("alpha (head output scale)")
    ax.set_ylabel("share of samples")
    ax.set_xticks(a)
    ax.set_ylim(-0.02, 1.05)
    ax.set_title(f"held out (A2): alpha = {h['alpha']} chosen on the selection half\n"
                 f"empirical p = {_fmt(p['p'], 3)} ({p['count']} of {p['n']} sets at least as high)", fontsize=8)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def plot_amplification_figure(doc: Mapping[str, Any]) -> plt.Figure:
    """Figure 05_amplification: every failed sample (``plot_recovery``) beside the held-out curve
    (``plot_heldout_recovery``, when the document has it)."""
    return _side_by_side(doc, plot_recovery, plot_heldout_recovery if doc.get("held_out") else None, 2.4)


def plot_capability_held_out(doc: Mapping[str, Any], ax: plt.Axes | None = None) -> plt.Figure:
    """A6: accuracy per category on the prompts not in the training stream: unmodified and identified blocked
    (Wilson 95%), the A1 sets blocked (mean ± sd, each set a dot); categories without held-out prompts left out."""
    h = doc["held_out"]
    cats = list(h["categories"])
    rates = {c: [_num(h["base"][c]["rate"]) - _num(d) for d in h["random"]["drops"][c]] for c in cats}
    view = {"base": h["base"], "identified": h["identified"], "positions": doc.get("positions", "?"),
            "n_random_sets": h["random"]["n_sets"],
            "random": {c: {"rates": rates[c], "mean": float(np.nanmean(rates[c])) if rates[c] else math.nan,
                           "sd": float(np.nanstd(rates[c], ddof=1)) if len(rates[c]) > 1 else math.nan} for c in cats}}
    fig, ax = _axes(ax, (COLUMN_WIDTH * 1.2, 2.5))
    ov = h.get("overlap")
    seen = f"{ov['in_training']}/{ov['n']} prompts in training left out" if ov else "training stream unknown"
    _bars_base_identified_random(ax, view, cats, [c.replace("_", " ") for c in cats], "identified blocked",
                                 "accuracy", f"held-out prompts (A6; {seen})", random_label=", A1: other heads")
    return fig


def plot_capability_figure(doc: Mapping[str, Any]) -> plt.Figure:
    """Figure 06_capability: every prompt (``plot_capability``) beside the held-out prompts
    (``plot_capability_held_out``, when the document has them)."""
    held = doc.get("held_out")
    return _side_by_side(doc, plot_capability, plot_capability_held_out if held and held["categories"] else None, 2.4)
