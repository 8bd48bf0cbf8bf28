"""Figures of notebook 02 (information flow), drawn from the document of ``mfutils.study.information_flow``.

Every function takes an ``ax`` (or ``axes``) to draw into, or creates its own figure, and returns the
figure; the theme is ``mfutils.present.plots.set_theme`` (seaborn colour-blind palette). Titles carry sample counts.

Public API
----------
ESTIMATORS                                          the INSSD estimators a knockout figure can draw
plot_knockout(knockout, edges, subsets, ax=None, title=None, estimator="mean_of_ratios") -> Figure
                                                    INSSD per window, CI bands
plot_knockout_panels(doc, subsets, panels=PANELS, axes=None, estimator="ratio_of_means") -> Figure
                                                    one panel per edge group (``mfutils.model.edges.PANELS``)
plot_estimators(doc, edges=MAIN_EDGES, subsets=("all", "failed"), axes=None) -> Figure
                                                    the three estimators side by side (A3)
plot_flip_rate(knockout, edges, subset="all", ax=None) -> Figure
plot_controls(doc, axes=None, estimator="ratio_of_means") -> Figure   C11: modality cues cut from instruction / constraint / system
plot_saliency(saliency, ax=None) -> Figure
plot_ldar(ldar, ax=None, reference=0.95) -> Figure  with the random-token baseline (A5)
plot_dla(dla, ax=None) -> Figure                    attention vs MLP direct logit attribution per layer
plot_subspace(subspace, ax=None) -> Figure
plot_stability(stability, ax=None) -> Figure      ratio of means with bands over draws (+ mean of ratios)

Example::

    doc = read_results("tiny", "02_information_flow")          # mfutils.study.results
    fig = plot_knockout_panels(doc, subsets=("follow_image", "follow_text"))
    save_figure(fig, "02_knockout_by_instruction", model="tiny")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from mfutils.model.edges import MAIN_EDGES, PANELS
from mfutils.present.plots import COLUMN_WIDTH, set_theme

__all__ = ["ESTIMATORS", "plot_knockout", "plot_knockout_panels", "plot_estimators", "plot_flip_rate",
           "plot_controls", "plot_saliency", "plot_ldar", "plot_dla", "plot_subspace", "plot_stability"]

_LINESTYLES = {"all": "-", "follow_image": "-", "follow_text": "--", "succeeded": "-", "failed": ":",
               "failed_arbitration": "-.", "failed_perception": (0, (1, 3))}
_SUBSET_LABEL = {"all": "all", "follow_image": "follow image", "follow_text": "follow text",
                 "succeeded": "succeeded", "failed": "failed", "failed_arbitration": "arbitration failures",
                 "failed_perception": "perception failures"}
# INSSD estimators (``mfutils.measure.margins.inssd_estimators``) and their axis labels; all ours.
ESTIMATORS: dict[str, str] = {"mean_of_ratios": "INSSD, mean of ratios (ours)", "median": "INSSD, median of ratios (ours)",
                              "ratio_of_means": "INSSD, ratio of means (ours)"}


def _curve(s: Mapping[str, Any], estimator: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, lo, hi) [W] of one knockout summary for ``estimator`` (``ESTIMATORS``)."""
    if estimator == "mean_of_ratios":
        return _arr(s["inssd"]), _arr(s["lo"]), _arr(s["hi"])
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")
    e = s[estimator]
    return _arr(e["value"]), _arr(e["lo"]), _arr(e["hi"])


def _palette(n: int) -> list[Any]:
    return list(sns.color_palette("colorblind", max(n, 1)))


def _ax(ax: plt.Axes | None, width: float = COLUMN_WIDTH * 1.4, height: float = 2.6) -> tuple[plt.Figure, plt.Axes]:
    set_theme()
    if ax is None:
        fig, ax = plt.subplots(figsize=(width, height))
        return fig, ax
    return ax.figure, ax


def _arr(x: Sequence[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in x], dtype=float)


def _window_label(doc_window: int | None) -> str:
    return "layer" if not doc_window or doc_window == 1 else f"first layer of the {doc_window}-layer window"


def plot_knockout(knockout: Mapping[str, Mapping[str, Any]], edges: Sequence[str],
                  subsets: Sequence[str] = ("all",), ax: plt.Axes | None = None, title: str | None = None,
                  window: int | None = None, bands: bool = True, estimator: str = "mean_of_ratios") -> plt.Figure:
    """INSSD (``estimator`` with its bootstrap 95% band) against the knocked-out window, one line per edge x subset.

    ``knockout``: ``doc["knockout"]`` (or a control's) ``{edge: {subset: SweepResult.summary}}``;
    ``estimator``: a key of ``ESTIMATORS`` (the mean of ratios is ``inssd``/``lo``/``hi``). Colour: edge;
    line style: subset. Subsets with n = 0 are skipped (named in the legend).
    """
    fig, ax = _ax(ax)
    colors = _palette(len(edges))
    handles: list[Any] = []
    styles = {sub: _LINESTYLES.get(sub, "-") for sub in subsets}
    if len(set(styles.values())) < len(styles):      # subsets without a style of their own
        styles = dict(zip(subsets, ("-", "--", ":", "-.")))
    drawn: dict[str, int] = {}
    for color, edge in zip(colors, edges):
        shown = False
        for subset in subsets:
            s = knockout.get(edge, {}).get(subset)
            if not s or not s["n"]:
                continue
            x, (y, lo, hi) = np.array(s["start"]), _curve(s, estimator)
            ax.plot(x, y, color=color, ls=styles[subset], marker="o", ms=2.5, lw=1.2)
            if bands:
                ax.fill_between(x, lo, hi, color=color, alpha=0.12, lw=0)
            drawn[subset] = s["n"]
            shown = True
        if shown:
            handles.append(Line2D([], [], color=color, lw=1.2, marker="o", ms=2.5, label=edge))
    if len(subsets) > 1:
        for subset in subsets:
            label = _SUBSET_LABEL.get(subset, subset)
            handles.append(Line2D([], [], color="0.3", lw=1.2, ls=styles[subset],
                                  label=f"{label} (n={drawn[subset]})" if subset in drawn else f"{label} (n=0)"))
    ax.axhline(0, color="0.4", lw=0.7)
    ax.axhline(-1, color="0.6", lw=0.6, ls=":")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(_window_label(window))
    ax.set_ylabel(ESTIMATORS.get(estimator, estimator))
    if title:
        ax.set_title(title, fontsize=8)
    if handles:
        ax.legend(handles=handles, fontsize=5.5, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2,
                  frameon=False)
    return fig


def plot_knockout_panels(doc: Mapping[str, Any], subsets: Sequence[str] = ("follow_image", "follow_text"),
                         panels: Mapping[str, Sequence[str]] = PANELS,
                         axes: Sequence[plt.Axes] | None = None, estimator: str = "ratio_of_means") -> plt.Figure:
    """One ``plot_knockout`` panel per edge group of ``panels`` (shared y axis), split by ``subsets``;
    ``estimator``: the ratio of means by default, the estimator the amended verdicts read (A3)."""
    set_theme()
    if axes is None:
        fig, axes_arr = plt.subplots(1, len(panels), figsize=(COLUMN_WIDTH * 1.2 * len(panels), 3.6), sharey=True)
        axes = list(np.atleast_1d(axes_arr))
    else:
        fig = axes[0].figure
    knock = doc["knockout"]
    for ax, (name, edges) in zip(axes, panels.items()):
        counts = ", ".join(f"{_SUBSET_LABEL.get(s, s)} n={knock[edges[0]][s]['n']}" for s in subsets)
        plot_knockout(knock, [e for e in edges if e in knock], subsets, ax=ax, title=f"{name}\n{counts}",
                      window=doc.get("window"), estimator=estimator)
    fig.suptitle(f"{doc.get('model', '')}: attention knockout per window; y: {ESTIMATORS[estimator]}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_estimators(doc: Mapping[str, Any], edges: Sequence[str] = MAIN_EDGES,
                    subsets: Sequence[str] = ("all", "failed"), axes: Sequence[plt.Axes] | None = None) -> plt.Figure:
    """The three INSSD estimators side by side, one panel each (own y axis: a few tiny margins can make the
    mean of ratios an order of magnitude larger), the same edges and subsets in each (amendment A3)."""
    set_theme()
    if axes is None:
        fig, axes_arr = plt.subplots(1, len(ESTIMATORS), figsize=(COLUMN_WIDTH * 1.2 * len(ESTIMATORS), 3.8))
        axes = list(np.atleast_1d(axes_arr))
    else:
        fig = axes[0].figure
    knock = doc["knockout"]
    for ax, (est, label) in zip(axes, ESTIMATORS.items()):
        plot_knockout(knock, [e for e in edges if e in knock], subsets, ax=ax, title=label.replace("INSSD, ", ""),
                      window=doc.get("window"), estimator=est)
    fig.suptitle(f"{doc.get('model', '')}: three INSSD estimators (verdicts read the ratio of means)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_flip_rate(knockout: Mapping[str, Mapping[str, Any]], edges: Sequence[str], subset: str = "all",
                   ax: plt.Axes | None = None, window: int | None = None) -> plt.Figure:
    """Share of samples whose decision between the two modalities flips, per edge and window."""
    fig, ax = _ax(ax)
    n = 0
    for color, edge in zip(_palette(len(edges)), edges):
        s = knockout.get(edge, {}).get(subset)
        if not s or not s["n"]:
            continue
        n = max(n, s["n"])
        ax.plot(s["start"], _arr(s["flip"]), color=color, marker="o", ms=2.5, lw=1.2, label=edge)
    ax.set_ylim(-0.02, 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(_window_label(window))
    ax.set_ylabel("flip rate")
    ax.set_title(f"decision flips under knockout ({_SUBSET_LABEL.get(subset, subset)}, n={n})", fontsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=5.5, loc="best")
    return fig


def plot_controls(doc: Mapping[str, Any], axes: Sequence[plt.Axes] | None = None,
                  estimator: str = "ratio_of_means") -> plt.Figure:
    """C11: the modality cues cut from the instruction vs from the format constraint / system prompt, on
    the split with a system sentence and on the split with the instruction after the constraint
    (``estimator``: the ratio of means by default, the verdict estimator of A3)."""
    set_theme()
    controls = doc["controls"]
    if axes is None:
        fig, axes_arr = plt.subplots(1, len(controls), figsize=(COLUMN_WIDTH * 1.2 * len(controls), 3.4),
                                     sharey=True)
        axes = list(np.atleast_1d(axes_arr))
    else:
        fig = axes[0].figure
    names = {"system": "system sentence first", "instruction_last": "instruction after the constraint"}
    for ax, (split, edges) in zip(axes, controls.items()):
        n = doc.get("n", {}).get(split, "?")
        plot_knockout(edges, list(edges), ("all",), ax=ax, title=f"{names.get(split, split)} (n={n})",
                      window=doc.get("window"), estimator=estimator)
    fig.suptitle(f"{doc.get('model', '')}: C11 controls", fontsize=9)
    fig.tight_layout()
    return fig


def plot_saliency(saliency: Mapping[str, Sequence[float]], ax: plt.Axes | None = None, n: int | None = None,
                  log: bool = True) -> plt.Figure:
    """Information-flow saliency |A * dL/dA| per layer, one line per group pair (log scale by default)."""
    fig, ax = _ax(ax)
    for color, (pair, values) in zip(_palette(len(saliency)), saliency.items()):
        y = _arr(values)
        ax.plot(np.arange(len(y)), y, color=color, marker="o", ms=2.5, lw=1.2, label=pair)
    finite = np.concatenate([_arr(v) for v in saliency.values()] + [np.zeros(0)])
    finite = finite[np.isfinite(finite)]
    if log and finite.size and (finite > 0).all():
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("saliency (mean over edges)")
    ax.set_title("information-flow saliency" + (f" (n={n})" if n is not None else ""), fontsize=8)
    ax.legend(fontsize=5.5, loc="best")
    return fig


def plot_ldar(ldar: Mapping[str, Mapping[str, Any]], ax: plt.Axes | None = None,
              reference: float = 0.95) -> plt.Figure:
    """LDAR (ours) against depth (hidden state 0 = embeddings) at the anchor's last token, averaged over
    the anchor, at the answer position and at one random non-instruction token per sample (the baseline of
    amendment A5, grey), with Wilson 95% bands and the paper's 95% reference; the answer position's
    final-layer point is marked trivially 1 (the lens of the last hidden state is the output)."""
    fig, ax = _ax(ax)
    labels = {"anchor_last": "instruction anchor, last token", "anchor_mean": "instruction anchor, mean",
              "last": "answer position", "random": "random non-instruction token (baseline)"}
    colors = dict(zip(labels, [*_palette(3), "0.45"]))
    n = 0
    for read, label in labels.items():
        r = ldar.get(read)
        if not r or not r["n"]:
            continue
        n = r["n"]
        x = np.arange(len(r["rate"]))
        ax.plot(x, _arr(r["rate"]), color=colors[read], marker="o", ms=2.5, lw=1.2, label=label,
                ls="--" if read == "random" else "-")
        ax.fill_between(x, _arr(r["lo"]), _arr(r["hi"]), color=colors[read], alpha=0.15, lw=0)
    last = ldar.get("last")
    if last and last["n"]:
        x_end = len(last["rate"]) - 1
        ax.annotate("trivially 1", (x_end, last["rate"][-1]), xytext=(-4, -14), textcoords="offset points",
                    ha="right", fontsize=5.5, color=colors["last"])
    ax.axhline(reference, color="0.3", lw=0.7, ls="--", label=f"{reference:.0%} (paper's threshold)")
    ax.axhline(0.5, color="0.6", lw=0.6, ls=":")
    ax.set_ylim(-0.02, 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("hidden state (0 = embeddings)")
    ax.set_ylabel("LDAR (ours)")
    ax.set_title(f"latent decision agreement (conflict samples, n={n})", fontsize=8)
    ax.legend(fontsize=5.5, loc="lower right")
    return fig


def plot_dla(dla: Mapping[str, Mapping[str, Any]], ax: plt.Axes | None = None) -> plt.Figure:
    """Direct logit attribution of attention and MLP outputs onto W_U[a+] - W_U[a-] per layer (positive:
    toward the instructed answer); colour: sublayer, line style: instruction; bootstrap 95% bands."""
    fig, ax = _ax(ax)
    colors = dict(zip(("attn", "mlp"), _palette(2)))
    counts = []
    for part in ("attn", "mlp"):
        for split, ls in (("follow_image", "-"), ("follow_text", "--")):
            s = dla.get(part, {}).get(split)
            if not s or not s["n"]:
                continue
            if part == "attn":
                counts.append(f"{_SUBSET_LABEL[split]} n={s['n']}")
            x = np.arange(len(s["mean"]))
            ax.plot(x, _arr(s["mean"]), color=colors[part], ls=ls, marker="o", ms=2.5, lw=1.2,
                    label=f"{'attention' if part == 'attn' else 'MLP'}, {_SUBSET_LABEL[split]}")
            ax.fill_between(x, _arr(s["lo"]), _arr(s["hi"]), color=colors[part], alpha=0.15, lw=0)
    ax.axhline(0, color="0.4", lw=0.7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("DLA on logit(a+) - logit(a-)")
    ax.set_title("attention vs MLP (" + ", ".join(counts) + ")", fontsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=5.5, loc="best")
    return fig


def plot_subspace(subspace: Mapping[str, Mapping[str, Sequence[float]]], ax: plt.Axes | None = None,
                  n: Mapping[str, int] | None = None) -> plt.Figure:
    """Projection of the answer-position residual on the instructed direction before and after each
    attention layer (v2's "instruction-compliant subspace", ours); the gap is attention's push."""
    fig, ax = _ax(ax)
    for color, (split, s) in zip(_palette(len(subspace)), subspace.items()):
        if not s["before"]:
            continue
        x = np.arange(len(s["before"]))
        label = _SUBSET_LABEL.get(split, split) + (f" (n={n[split]})" if n and split in n else "")
        ax.plot(x, _arr(s["before"]), color=color, ls=":", marker="o", ms=2, lw=1, label=f"{label}, before attn")
        ax.plot(x, _arr(s["after"]), color=color, ls="-", marker="o", ms=2.5, lw=1.2, label=f"{label}, after attn")
    ax.axhline(0, color="0.4", lw=0.7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("projection on unit(W_U[a+] - W_U[a-])")
    ax.set_title("instruction-compliant subspace (answer position)", fontsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=5.5, loc="best")
    return fig


def _stability_panel(ax: plt.Axes, fractions: np.ndarray, corr: Mapping[str, Sequence[Any]],
                     bands: tuple[Mapping[str, Sequence[Any]], Mapping[str, Sequence[Any]]] | None, title: str) -> None:
    for color, (edge, r) in zip(_palette(len(corr)), corr.items()):
        ax.plot(fractions, _arr(r), color=color, marker="o", ms=2.5, lw=1.2, label=edge)
        if bands is not None:
            ax.fill_between(fractions, _arr(bands[0][edge]), _arr(bands[1][edge]), color=color, alpha=0.12, lw=0)
    values = np.concatenate([_arr(r) for r in corr.values()] + [_arr(v) for v in (bands[0].values() if bands else [])]
                            + [np.zeros(1)])
    ax.set_ylim(min(-0.05, float(values[np.isfinite(values)].min()) - 0.05), 1.05)
    ax.set_xlabel("fraction of the samples")
    ax.set_ylabel("Pearson r with the full curve")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=5.5, loc="lower right")


def plot_stability(stability: Mapping[str, Any], ax: plt.Axes | None = None, n: int | None = None) -> plt.Figure:
    """C12: correlation of the INSSD curve on a fraction of the samples with the full curve, per edge: the
    ratio of means (the verdict estimator, A3; bands: 2.5-97.5 percentiles over draws) and, in a second
    panel, the mean of ratios (the original measure). With ``ax`` (or an old document without the ratio of
    means) one panel only: the ratio of means where present."""
    fr = np.array(stability["fractions"])
    rom = stability.get("ratio_of_means")
    count = f", n={n}" if n is not None else ""
    if ax is not None or rom is None:
        fig, ax = _ax(ax)
        if rom is not None:
            _stability_panel(ax, fr, rom["corr"], (rom["lo"], rom["hi"]),
                             f"stability, ratio of means ({rom['n_draws']} draws{count})")
        else:
            _stability_panel(ax, fr, stability["corr"], None, f"stability of the knockout curves{count}")
        return fig
    set_theme()
    fig, axes = plt.subplots(1, 2, figsize=(COLUMN_WIDTH * 2.4, 2.8))
    _stability_panel(axes[0], fr, rom["corr"], (rom["lo"], rom["hi"]),
                     f"ratio of means, verdict ({rom['n_draws']} draws{count})")
    _stability_panel(axes[1], fr, stability["corr"], None,
                     f"mean of ratios, original ({stability.get('n_draws', 10)} draws{count})")
    fig.suptitle("stability of the knockout curves (bands: 2.5-97.5 percentiles over draws)", fontsize=9)
    fig.tight_layout()
    return fig
