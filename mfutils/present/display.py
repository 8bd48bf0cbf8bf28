"""Showing prompts to a reader: tokens coloured by group, sample galleries, tables.

Public API
----------
GROUP_COLORS                                   one colour per token group (colour-blind safe)
tokens_html(mm, enc, i, collapse_image=True) -> str   sample i's tokens as HTML spans coloured by group
legend_html() -> str                           the colour legend
plot_gallery(samples, ncols=3) -> Figure       images with their segments and answers as captions
dataset_note(notebook, dataset, mc2_json="", model="") -> str   Markdown: which data this run reads, and which
                                               of the notebook's sections describe it

Example::

    from IPython.display import HTML
    HTML(legend_html() + tokens_html(mm, encode(mm, [s.prompt]), 0))
"""

from __future__ import annotations

import html
import textwrap
from typing import Any, Sequence

import matplotlib.pyplot as plt
import seaborn as sns

from mfutils.model.groups import Encoded
from mfutils.model.loading import MLLM
from mfutils.data.prompts import GROUP_NAMES

__all__ = ["GROUP_COLORS", "tokens_html", "legend_html", "plot_gallery", "dataset_note"]

_PALETTE = sns.color_palette("colorblind", len(GROUP_NAMES)).as_hex()
GROUP_COLORS: dict[str, str] = {g: c for g, c in zip(GROUP_NAMES, _PALETTE)}
GROUP_COLORS["other"] = "#bbbbbb"


def _span(text: str, group: str) -> str:
    return (f'<span title="{group}" style="background:{GROUP_COLORS[group]}55;border-bottom:2px solid '
            f'{GROUP_COLORS[group]};padding:0 2px;margin:0 1px;font-family:monospace">{html.escape(text)}</span>')


def legend_html() -> str:
    return "<div>" + " ".join(_span(g, g) for g in GROUP_NAMES) + "</div>"


def tokens_html(mm: MLLM, enc: Encoded, i: int, collapse_image: bool = True) -> str:
    """Sample ``i`` of ``enc`` as coloured token spans (pad tokens omitted; image tokens collapsed to one
    span ``<image> x N`` when ``collapse_image``)."""
    ids = enc.inputs["input_ids"][i].tolist()
    parts: list[str] = []
    n_img = int(enc.groups["image"][i].sum())
    shown_image = False
    for t, tid in enumerate(ids):
        if bool(enc.groups.pad[i, t]):
            continue
        group = next((g for g in GROUP_NAMES if bool(enc.groups[g][i, t])), "other")
        if group == "image" and collapse_image:
            if not shown_image:
                parts.append(_span(f"<image> x {n_img}", "image"))
                shown_image = True
            continue
        parts.append(_span(mm.tokenizer.convert_ids_to_tokens(tid), group))
    return '<div style="line-height:1.9">' + "".join(parts) + "</div>"


def plot_gallery(samples: Sequence[Any], ncols: int = 3, width: float = 7.0) -> plt.Figure:
    """A grid of sample images, each captioned with its category, question, instruction and answers."""
    from mfutils.present.plots import set_theme

    set_theme()
    nrows = (len(samples) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 3.6 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, s in zip(axes.flat, samples):
        ax.imshow(s.prompt.image)
        lines = [f"[{s.category}]", s.prompt.text("context") or "(no context)", s.prompt.text("instruction") or "(no instruction)",
                 s.prompt.text("question") or "", f"answer: {s.answer}" + (f"   other: {s.other_answer}" if s.other_answer else "")]
        ax.set_title("\n".join(textwrap.fill(x, 34) for x in lines), fontsize=5.5, loc="left")
    fig.tight_layout()
    return fig


def dataset_note(notebook: str, dataset: str, mc2_json: str = "", model: str = "") -> str:
    """A Markdown paragraph for notebooks 00 (``notebook="00"``) and 01 (``"01"``): the data this run reads (the
    synthetic world, or MC² from ``mc2_json`` in the format its fields show), and which sections of the notebook
    describe it; the prose cells of those notebooks are written for the world.

    Example: ``display(Markdown(dataset_note("01", dataset, mc2_json, model)))``
    """
    if dataset != "mc2":
        return (f"**Data of this run: the synthetic world** (`dataset=\"world\"`), for `{model or 'the model'}`. "
                "Every section below describes it.")
    import json
    from pathlib import Path

    from mfutils.data.mc2_files import detect_format

    path = Path(mc2_json)
    try:
        fmt = detect_format(json.loads(path.read_text()), str(path))
        kind = ("MC²'s evaluation file (no instruction in the records: both of ours are built)" if fmt == "mc2" else
                "a per-model file of the Instruction Anchor authors (its own instruction sentence, question form "
                "and candidate lists)")
    except (OSError, ValueError) as exc:
        kind = f"a file that could not be read here ({type(exc).__name__})"
    head = f"**Data of this run: MC²**, `{path.name}`: {kind}; model `{model or 'in use'}`. "
    if notebook == "00":
        return head + ("The model card describes how the model was trained (for the shipped models: on the synthetic "
                       "world). The rates below are MC²'s modality-following ratios per instruction and the accuracy "
                       "on each record's image-only and text-only versions, not the world's categories.")
    return head + ("The gallery, the instruction paraphrases and the training mix below describe the synthetic world "
                   "the shipped models were trained on, shown for reference only; the token groups, the splits, the "
                   "per-model filter and the checks use MC²'s records.")
