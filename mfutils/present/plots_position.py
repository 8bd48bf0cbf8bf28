"""Figures of notebook 08 (where the instruction stands): MFR against position, the instruction's effect per position,
knockout curves per position, succeeded vs failed curves within the failure pool's position.

Public API
----------
plot_position_mfr(doc) -> Figure          08_position_mfr: MFR per position and instruction (Wilson), failure kinds
plot_instruction_effect(doc) -> Figure    08_instruction_effect: S, S_direct and B per position (bootstrap 95%)
plot_position_knockout(doc, subset) -> Figure   08_position_knockout: one panel per edge, one curve per position
plot_failure_curves(doc) -> Figure        08_failed_vs_succeeded: succeeded / failed / arbitration failures per edge

Example::

    save_figure(plot_position_mfr(doc), "08_position_mfr", model="smol")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from mfutils.present.plots import COLUMN_WIDTH, set_theme
from mfutils.present.plots_flow import _arr, _curve, _palette

__all__ = ["plot_position_mfr", "plot_instruction_effect", "plot_position_knockout", "plot_failure_curves"]

_INSTR = {"follow_image": "follow-image", "follow_text": "follow-text"}
_POS_LABEL = {"first": "first\n(before image)", "after_image": "after image", "standard": "standard\n(after context)",
              "last": "last\n(after question)"}


def _not_applicable(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=7, transform=ax.transAxes, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_position_mfr(doc: Mapping[str, Any]) -> plt.Figure:
    """Left: MFR against the instruction's position, one line per instruction (Wilson 95% bars, n per point).
    Right: the failures at each position split into arbitration (both counterparts right) and perception failures."""
    set_theme()
    beh = doc["behaviour"]["positions"]
    pos = list(beh)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(COLUMN_WIDTH * 2, 2.8), gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(pos))
    for j, (cat, color) in enumerate(zip(_INSTR, _palette(2))):
        r = _arr([beh[p][cat]["rate"] for p in pos])
        lo, hi = _arr([beh[p][cat]["lo"] for p in pos]), _arr([beh[p][cat]["hi"] for p in pos])
        n = [beh[p][cat]["n"] for p in pos]
        off = (j - 0.5) * 0.08
        ax.errorbar(x + off, r, yerr=[r - lo, hi - r], marker="o", ms=3.5, lw=1.2, capsize=2, color=color,
                    label=f"{_INSTR[cat]} (n = {min(n)}-{max(n)} per point)" if min(n) != max(n)
                    else f"{_INSTR[cat]} (n = {n[0]} per point)")
    ax.set_xticks(x, [_POS_LABEL.get(p, p) for p in pos], fontsize=6.5)
    ax.set_ylabel("modality-following ratio")
    ax.set_ylim(min(0.0, float(np.nanmin(_arr([beh[p][c]["lo"] for p in pos for c in _INSTR]))) - 0.02), 1.04)
    ax.set_xlabel("where the instruction stands")
    ax.legend(fontsize=6, loc="lower right", frameon=False)
    ax.set_title("MFR against the instruction's position (Wilson 95%)", fontsize=8)
    arb = np.array([beh[p]["failures"]["arbitration"] for p in pos])
    per = np.array([beh[p]["failures"]["perception"] for p in pos])
    c = _palette(4)
    bx.bar(x, arb, color=c[2], label="arbitration failures")
    bx.bar(x, per, bottom=arb, color=c[3], label="perception failures")
    for xi, a, p_, p in zip(x, arb, per, pos):
        bx.text(xi, a + p_, f"{a + p_} of {beh[p]['n']}", ha="center", va="bottom", fontsize=6)
    bx.set_xticks(x, [p.replace("_", " ") for p in pos], fontsize=6.5)
    bx.set_ylabel("failed samples")
    bx.set_ylim(0, max(1, int((arb + per).max())) * 1.25)
    bx.legend(fontsize=6, frameon=False, loc="upper right")
    bx.set_title("failures by kind", fontsize=8)
    fig.tight_layout()
    return fig


def plot_instruction_effect(doc: Mapping[str, Any]) -> plt.Figure:
    """S (the instruction's effect between twins), S_direct (the part removed by cutting instruction->last in every
    layer) and B (the pair's baseline) per position, means with bootstrap 95% intervals, in log-odds."""
    set_theme()
    eff = doc["effect"]["per_position"]
    pos = list(eff)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH * 1.5, 2.6))
    if not pos:
        _not_applicable(ax, "not measured")
        return fig
    x = np.arange(len(pos))
    keys = (("S", "S: instruction's effect"), ("S_direct", "S_direct: read at the answer position"),
            ("B", "B: baseline (image - text)"))
    for j, ((key, label), color) in enumerate(zip(keys, _palette(3))):
        v = _arr([eff[p][key]["mean"] for p in pos])
        lo, hi = _arr([eff[p][key]["lo"] for p in pos]), _arr([eff[p][key]["hi"] for p in pos])
        ax.bar(x + (j - 1) * 0.26, v, width=0.24, color=color, label=label,
               yerr=[v - lo, hi - v], capsize=2, error_kw={"lw": 0.8})
    ax.axhline(0, color="0.4", lw=0.7)
    n = [eff[p]["n_pairs"] for p in pos]
    ax.set_xticks(x, [f"{p.replace('_', ' ')}\n(n = {k} pairs)" for p, k in zip(pos, n)], fontsize=6.5)
    ax.set_ylabel("log-odds")
    ax.legend(fontsize=6, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2)
    ax.set_title("the instruction's effect on follow-image pairs and their twins", fontsize=8)
    fig.tight_layout()
    return fig


def _edge_panels(edges: Sequence[str], width: float = COLUMN_WIDTH * 2.4, height: float = 2.4
                 ) -> tuple[plt.Figure, Sequence[plt.Axes]]:
    set_theme()
    fig, axes = plt.subplots(1, len(edges), figsize=(width, height), sharey=False)
    return fig, list(np.atleast_1d(axes))


def _x_axis(ax: plt.Axes, n_layers: int, k: int) -> None:
    ax.set_xlim(-0.5, n_layers - 0.5)
    step = max(1, int(round(n_layers / 6)))
    ax.set_xticks(range(0, n_layers, step))
    ax.set_xlabel("first layer of the window" if k > 1 else "layer", fontsize=6.5)


def plot_position_knockout(doc: Mapping[str, Any], subset: str = "follow_image",
                           estimator: str = "ratio_of_means") -> plt.Figure:
    """One panel per edge; in each, one curve per position (INSSD ``estimator`` with its bootstrap band) on
    ``subset``. An edge that does not exist at a position (its source comes after its destination) is named in the
    panel instead of drawn."""
    ko = doc["knockout"]
    pos_docs = ko["positions"]
    edges = list(next(iter(pos_docs.values()))["edges"]) if pos_docs else []
    fig, axes = _edge_panels(edges)
    colors = dict(zip(pos_docs, _palette(len(pos_docs))))
    for ax, edge in zip(axes, edges):
        absent = []
        for pos, pd in pos_docs.items():
            s = pd["edges"][edge].get(subset)
            if not pd["present"][edge]:
                absent.append(pos.replace("_", " "))
                continue
            if not s or not s["n"]:
                continue
            x, (y, lo, hi) = np.array(s["start"]), _curve(s, estimator)
            ax.plot(x, y, color=colors[pos], marker="o", ms=2, lw=1.1)
            ax.fill_between(x, lo, hi, color=colors[pos], alpha=0.12, lw=0)
        ax.axhline(0, color="0.4", lw=0.7)
        ax.set_title(edge, fontsize=7.5)
        _x_axis(ax, int(doc["n_layers"]), int(ko["k"]))
        ax.tick_params(labelsize=6)
        if absent:
            ax.text(0.03, 0.04, "no such edge:\n" + ", ".join(absent), transform=ax.transAxes, fontsize=5.5,
                    color="0.35", va="bottom")
    if axes:
        axes[0].set_ylabel(f"INSSD ({estimator.replace('_', ' ')})", fontsize=6.5)
    n = {p: pd["edges"][edges[0]][subset]["n"] if edges else 0 for p, pd in pos_docs.items()}
    handles = [Line2D([], [], color=colors[p], lw=1.2, marker="o", ms=2, label=f"{p.replace('_', ' ')} (n = {n[p]})")
               for p in pos_docs]
    fig.legend(handles=handles, fontsize=6.5, loc="lower center", ncol=len(handles), frameon=False,
               bbox_to_anchor=(0.5, -0.06))
    fig.suptitle(f"knockout per instruction position, {_INSTR.get(subset, subset)} samples; band: bootstrap 95%",
                 fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    return fig


def plot_failure_curves(doc: Mapping[str, Any], estimator: str = "ratio_of_means") -> plt.Figure:
    """One panel per edge: succeeded, failed and arbitration-failed samples of the failure pool (one position)."""
    fc = doc["failure"]
    edges = list(fc["edges"])
    fig, axes = _edge_panels(edges or ["none"])
    styles = {"succeeded": ("-", 0), "failed": ("--", 1), "failed_arbitration": (":", 2)}
    colors = _palette(3)
    for ax, edge in zip(axes, edges):
        if not fc["present"].get(edge, True):
            _not_applicable(ax, f"{edge}:\nno such edge\nat position {fc['position'].replace('_', ' ')}")
            continue
        for name, (ls, ci) in styles.items():
            s = fc["edges"][edge].get(name)
            if not s or not s["n"]:
                continue
            x, (y, lo, hi) = np.array(s["start"]), _curve(s, estimator)
            if s["n"] < 10:
                continue
            ax.plot(x, y, color=colors[ci], ls=ls, marker="o", ms=2, lw=1.1)
            ax.fill_between(x, lo, hi, color=colors[ci], alpha=0.12, lw=0)
        ax.axhline(0, color="0.4", lw=0.7)
        ax.set_title(edge, fontsize=7.5)
        _x_axis(ax, int(doc["n_layers"]), int(doc["knockout"]["k"]))
        ax.tick_params(labelsize=6)
    if not edges:
        _not_applicable(axes[0], "no failed samples")
    n = fc["n"]
    handles = [Line2D([], [], color=colors[ci], ls=ls, lw=1.2,
                      label=f"{name.replace('_', ' ')} (n = {n.get(name, 0)})" + (" (n < 10: not drawn)"
                                                                                   if n.get(name, 0) < 10 else ""))
               for name, (ls, ci) in styles.items()]
    fig.legend(handles=handles, fontsize=6.5, loc="lower center", ncol=3, frameon=False, bbox_to_anchor=(0.5, -0.06))
    fig.suptitle(f"succeeded vs failed samples of {fc['pool']} (instruction position {fc['position']}); "
                 f"INSSD {estimator.replace('_', ' ')}, band: bootstrap 95%", fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    return fig
