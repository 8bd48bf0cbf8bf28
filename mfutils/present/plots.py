"""Figures: one seaborn theme, one way to save.

Public API
----------
set_theme()                               the paper theme (seaborn "paper" context, colour-blind palette)
save_figure(fig, name, model=None, folder=None) -> list[Path]   PDF + PNG, tight, no dates; closes fig
plot_training_curve(curve, ax=None) -> Figure                   accuracy per category against step
plot_accuracy_bars(table, ax=None, x, hue) -> Figure             proportions with 95% intervals as bars
COLUMN_WIDTH                              3.5 inches

Example::

    fig = plot_training_curve(card["curve"])
    save_figure(fig, "training_curve", folder=Path("checkpoints/tiny-llava"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import seaborn as sns

from mfutils.core.paths import atomic_output, figures_dir

__all__ = ["set_theme", "save_figure", "plot_training_curve", "plot_accuracy_bars", "COLUMN_WIDTH"]

COLUMN_WIDTH = 3.5
_THEMED = False


def set_theme() -> None:
    """Set the project's seaborn theme once (idempotent)."""
    global _THEMED
    if not _THEMED:
        sns.set_theme(context="paper", style="whitegrid", palette="colorblind")
        plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 200, "figure.figsize": (COLUMN_WIDTH, 2.4)})
        _THEMED = True


def save_figure(fig: plt.Figure, name: str, model: str | None = None, folder: Path | None = None,
                formats: Sequence[str] = ("png", "pdf"), close: bool = True) -> list[Path]:
    """Save ``fig`` as ``<folder or figures/<model>>/<name>.{png,pdf}`` with fixed metadata; close it."""
    if folder is None:
        if model is None:
            raise ValueError("save_figure needs a model (-> figures/<model>/) or an explicit folder")
        folder = figures_dir(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = folder / f"{name}.{fmt}"
        meta: dict[str, Any] = {"Software": None} if fmt == "png" else {"CreationDate": None, "Producer": None, "Creator": None}
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format=fmt, bbox_inches="tight", metadata=meta)
        paths.append(path)
    if close:
        plt.close(fig)
    return paths


def plot_training_curve(curve: Sequence[dict[str, Any]], ax: plt.Axes | None = None,
                        xlabel: str = "training step (batch 64)") -> plt.Figure:
    """Held-out-monitor accuracy per category against the training step (one line per category)."""
    set_theme()
    if ax is None:
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH * 1.6, 2.6))
    else:
        fig = ax.figure
    steps = [p["step"] for p in curve]
    keys = [k for k in curve[0] if k.startswith("acc_")] if curve else []
    for k in keys:
        ax.plot(steps, [p[k] for p in curve], marker="o", ms=2.5, lw=1.2, label=k[4:])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (monitor set)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    return fig


def plot_accuracy_bars(table: Sequence[dict[str, Any]], ax: plt.Axes | None = None, x: str = "category",
                       hue: str | None = None, title: str = "") -> plt.Figure:
    """Bars of proportion dicts (``rate``, ``lo``, ``hi``, ``n``) with their 95% intervals.

    ``table``: rows with keys ``x`` (and ``hue``) plus a proportion's ``rate``, ``lo``, ``hi``, ``n``.
    """
    set_theme()
    if ax is None:
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH * 1.6, 2.4))
    else:
        fig = ax.figure
    xs = list(dict.fromkeys(r[x] for r in table))
    hues = list(dict.fromkeys(r[hue] for r in table)) if hue else [None]
    width = 0.8 / len(hues)
    colors = sns.color_palette("colorblind", len(hues))
    for j, h in enumerate(hues):
        rows = [r for r in table if hue is None or r[hue] == h]
        pos = [xs.index(r[x]) - 0.4 + width * (j + 0.5) for r in rows]
        rates = [r["rate"] for r in rows]
        err = [[max(0.0, r["rate"] - r["lo"]) for r in rows], [max(0.0, r["hi"] - r["rate"]) for r in rows]]
        ax.bar(pos, rates, width=width * 0.92, color=colors[j], label=h, yerr=err, capsize=2, error_kw={"lw": 0.8})
    ax.set_xticks(range(len(xs)), [str(v).replace("_", "\n") for v in xs], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    if hue:
        ax.legend(fontsize=6, loc="lower right")
    if title:
        ax.set_title(title, fontsize=8)
    return fig
