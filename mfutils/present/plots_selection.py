"""Figure of notebook 03's selection stability: how often each head is again in the top k under resampling.

Drawn from notebook 03's document (``mfutils.study.identification``: ``selection_stability`` and
``top_k_boundary``); save it with ``mfutils.present.plots.save_figure``.

Public API
----------
plot_selection_stability(doc03, ax=None) -> Figure     per-head top-k frequency, identified vs the next heads

Example::

    fig = plot_selection_stability(read_results("tiny", "03_head_identification"))
    save_figure(fig, "03_selection_stability", model="tiny")
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from mfutils.present.plots import COLUMN_WIDTH, set_theme

__all__ = ["plot_selection_stability"]


def _f(x: Any) -> float:
    return math.nan if x is None else float(x)


def plot_selection_stability(doc: Mapping[str, Any], ax: plt.Axes | None = None) -> plt.Figure:
    """Bars: for the identified heads and the next ones by score (in rank order), the share of bootstrap
    resamples of the identification samples in which the head is in the top k, with the Wilson interval over
    resamples; a dashed line at the top-k boundary, whose margin (k-th minus (k+1)-th score, paired bootstrap
    interval) is in the title. ``doc``: notebook 03's document (needs ``selection_stability``)."""
    st = doc["selection_stability"]
    heads = st["heads"]
    set_theme()
    if ax is None:
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.4))
    else:
        fig = ax.figure
    pal = sns.color_palette("colorblind")
    freq = np.array([_f(h["frequency"]) for h in heads])
    err = np.nan_to_num(np.vstack([freq - [_f(h["lo"]) for h in heads], [_f(h["hi"]) for h in heads] - freq]),
                        nan=0.0).clip(min=0.0)
    x = np.arange(len(heads))
    inside = np.array([bool(h["identified"]) for h in heads])
    for keep, colour, label in ((inside, pal[3], "identified"), (~inside, pal[0], "next by score")):
        ax.bar(x[keep], freq[keep], color=colour, yerr=err[:, keep], capsize=2, label=label)
    for xi, h in zip(x, heads):
        ax.annotate(f"{_f(h['score']):.2f}", (xi, 1.02), ha="center", fontsize=5)
    ax.axvline(st["k"] - 0.5, color="grey", ls="--", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([f"({h['head'][0]},{h['head'][1]})" for h in heads], rotation=45, fontsize=6)
    ax.set_xlabel("head (layer, head), highest score first")
    ax.legend(fontsize=6, loc="center right")
    ax.set_ylabel(f"share of {st['n_boot']} resamples\nin the top {st['k']}")
    ax.set_ylim(0, 1.12)
    title = f"selection stability, n = {st['n']} identification samples (scores above the bars)"
    b = doc.get("top_k_boundary")
    if b:
        d = b["difference"]
        title += (f"\nboundary margin {_f(d['value']):.3f} [{_f(d['lo']):.3f}, {_f(d['hi']):.3f}] "
                  f"(rank {st['k']} minus rank {st['k'] + 1})")
    ax.set_title(title, fontsize=7)
    return fig
