"""The explorers' shared pieces: the per-sample forward cache, the answer readout, HTML readouts, busy, debounce.

Public API
----------
follow_flags(mm, data, alphas=None, positions="all", knockout=None) -> BoolTensor [N]
                                ``measure.follow.follows`` with per-head alphas {(layer, head): alpha}
Forwards(mm, samples)           per sample, computed once: ``.enc(i)``, ``.targets(i)`` (one prepared batch of one
                                sample), ``.base(i)`` unhooked answer logits [V], ``.base_followed(i)``; and under
                                an intervention: ``.logits(i)`` [V] (the active hooks), ``.followed(i, **how)``
                                (``mfutils.measure.follow.follows`` on that sample)
answer_summary(mm, sample, logits, followed, targets=None) -> dict   probs, margin, prediction of one sample
sample_dropdown(samples) -> Dropdown         the sample chooser (class ``mf-sample``)
image_png(image, size=192) -> bytes          a sample image (PIL, array or file path) as PNG
readout(css_class) -> HTML                   an empty HTML readout with a CSS class (``mf-busy``: busy_label())
distribution_html(sample, columns) -> str    candidate probabilities as bars, one column per run
margin_text(summary) -> str                  "P(instructed ...), margin ..., answer ... (follows ...)"
other_label(sample) -> str                   the other modality's answer, or "best wrong candidate"
busy(owner)                                  context manager: busy indicator on, an error shown instead of raised
Debounce(fn, wait_s)                         call fn once after a burst, on the running asyncio loop
BUSY                                         the busy indicator's HTML

Example::

    fw = Forwards(mm, samples)
    answer_summary(mm, samples[0], fw.base(0), fw.base_followed(0), fw.targets(0))["margin"]
"""

from __future__ import annotations

import asyncio
import html
import io
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import torch

from mfutils.data.sample import Sample
from mfutils.measure.answers import Targets, answer_logits, targets_for
from mfutils.measure.follow import Head, follows
from mfutils.measure.margins import margins
from mfutils.measure.prepared import Batch, Prepared, prepare
from mfutils.model.groups import Encoded, load_image
from mfutils.model.hooks import scale_heads
from mfutils.model.loading import MLLM

__all__ = ["follow_flags", "Forwards", "answer_summary", "sample_dropdown", "image_png", "readout", "busy_label",
           "distribution_html", "margin_text", "other_label", "busy", "Debounce", "BUSY"]

BUSY = '<span style="color:#b35900">&#9203; computing&hellip;</span>'


def _sample_label(i: int, s: Sample) -> str:
    other = f" vs {s.other_answer}" if getattr(s, "other_answer", None) else ""
    return f"{i}: {s.category} / {s.attribute}: {s.answer}{other}"


def sample_dropdown(samples: Sequence[Sample], description: str = "sample") -> widgets.Dropdown:
    """A dropdown over ``samples`` (value: the index), class ``mf-sample``; ValueError when empty."""
    if not samples:
        raise ValueError("the explorers need at least one sample: pass a non-empty list of world samples "
                         "(e.g. mfutils.data.datasets.load_split(model, 'test')[:32])")
    dd = widgets.Dropdown(options=[(_sample_label(i, s), i) for i, s in enumerate(samples)], value=0,
                          description=description, layout=widgets.Layout(width="420px"))
    dd.add_class("mf-sample")
    return dd


def image_png(image: Any, size: int = 192) -> bytes:
    """A PIL image, an HxWx3 uint8 array or an image file (``str`` / ``Path``: an MC2 sample's COCO image, as
    ``mfutils.data.mc2.find_images`` gives it) as PNG bytes, resized to ``size`` x ``size`` (nearest).
    A missing file raises ``FileNotFoundError`` naming it."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"the sample's image file {path} does not exist: MC2 images are read from the "
                                    "COCO root the samples were built with (coco_root); put the image back or "
                                    "rebuild the samples (mfutils.data.mc2.find_images)")
        image = load_image(path)
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    img.convert("RGB").resize((size, size), Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def follow_flags(mm: MLLM, data: Sequence[Sample] | Prepared, alphas: Mapping[Head, float] | None = None,
                 positions: str = "all", knockout: tuple[str, Iterable[int]] | None = None) -> torch.Tensor:
    """BoolTensor [N]: ``mfutils.measure.follow.follows`` with each head of ``alphas`` scaled by its own alpha
    (the head board blocks some heads and amplifies others at once).

    Example::

        follow_flags(mm, data, {(0, 1): 0.0, (2, 3): 4.0}, positions="last")
    """
    by_alpha: dict[float, list[Head]] = {}
    for head, a in (alphas or {}).items():
        by_alpha.setdefault(float(a), []).append(head)
    if len(by_alpha) <= 1:
        alpha, heads = next(iter(by_alpha.items()), (0.0, []))
        return follows(mm, data, heads=heads, alpha=alpha, positions=positions, knockout=knockout)
    # several alphas: follows scales its heads by one alpha, so the other heads' scaling wraps it, one prepared
    # batch at a time (the wrapping hook needs that batch's answer positions). Untouched heads are multiplied
    # by exactly 1, so two hooks give the numbers of one.
    (alpha, heads), *others = by_alpha.items()
    outer = {h: a for a, hs in others for h in hs}
    data = prepare(mm, data)
    out = torch.zeros(len(data), dtype=torch.bool)
    for b in data.batches:
        one = Prepared([data.samples[i] for i in b.index], [Batch(list(range(len(b.index))), b.enc, b.targets)])
        with scale_heads(mm, outer, positions=b.enc.groups["last"] if positions == "last" else None):
            out[b.index] = follows(mm, one, heads=heads, alpha=alpha, positions=positions, knockout=knockout)
    return out


class Forwards:
    """Per-sample encodings, targets, unhooked answer logits and follow flags, each computed once (the
    explorers' cache). Each sample is prepared alone (``measure.prepared.prepare``, a batch of one), so its
    readouts are the forwards of that one prompt, as ``follows`` runs them."""

    def __init__(self, mm: MLLM, samples: Sequence[Sample]) -> None:
        self.mm, self.samples = mm, list(samples)
        self._one: dict[int, Prepared] = {}
        self._base: dict[int, torch.Tensor] = {}
        self._base_followed: dict[int, bool] = {}
        self.n_base_forwards = 0

    def prepared(self, i: int) -> Prepared:
        """Sample i alone, encoded once (one batch of one)."""
        if i not in self._one:
            self._one[i] = prepare(self.mm, [self.samples[i]], batch_size=1)
        return self._one[i]

    def enc(self, i: int) -> Encoded:
        return self.prepared(i).batches[0].enc

    def targets(self, i: int) -> Targets:
        return self.prepared(i).batches[0].targets

    @torch.no_grad()
    def logits(self, i: int) -> torch.Tensor:
        """FloatTensor [V]: sample i's answer logits under whatever hooks are active (not cached)."""
        return answer_logits(self.mm, self.enc(i))[0].float().cpu()

    def base(self, i: int) -> torch.Tensor:
        """FloatTensor [V]: sample i's unhooked answer logits (cached)."""
        if i not in self._base:
            self._base[i] = self.logits(i)
            self.n_base_forwards += 1
        return self._base[i]

    def followed(self, i: int, *, heads: Mapping[Head, float] | None = None, positions: str = "all",
                 knockout: tuple[str, Iterable[int]] | None = None) -> bool:
        """Whether sample i follows its instruction under the intervention (``measure.follow.follows``)."""
        return bool(follow_flags(self.mm, self.prepared(i), heads, positions=positions, knockout=knockout)[0])

    def base_followed(self, i: int) -> bool:
        """Whether sample i follows its instruction, unhooked (cached)."""
        if i not in self._base_followed:
            self._base_followed[i] = self.followed(i)
        return self._base_followed[i]


def answer_summary(mm: MLLM, sample: Sample, logits: torch.Tensor, followed: bool,
                   targets: Targets | None = None) -> dict[str, Any]:
    """What the model answers for one sample, from its answer logits [V] and its follow flag (``followed``,
    from ``mfutils.measure.follow.follows`` under the same intervention).

    Returns ``probs`` {candidate: P} (softmax over the whole vocabulary), ``p_answer`` / ``p_other`` (summed
    P of the instructed / the other modality's candidates), ``pair`` (P of the instructed answer renormalised
    over the pair), ``margin`` (``measure.margins.margins``, binary constraint), ``pred`` (argmax over the
    candidates; with candidate lists, the side that wins) and ``follows``.

    Example::

        fw = Forwards(mm, [s])
        answer_summary(mm, s, fw.base(0), fw.base_followed(0))["margin"]
    """
    t = targets if targets is not None else targets_for(mm, [sample])
    row = logits.float().reshape(1, -1)
    p = torch.softmax(row, dim=-1)[0]
    p_pos, p_neg = float(p[t.pos[0]].sum()), float(p[t.neg[0]].sum())
    if getattr(sample, "answer_img_candidate_list", None) is not None:
        # candidate lists (MC2): one entry per side, P summed over the side's first tokens (answers.targets_for)
        probs = {sample.answer: p_pos, sample.other_answer: p_neg}
        pred = sample.answer if followed else sample.other_answer
    else:
        probs = {c: float(p[i]) for c, i in zip(sample.candidates, t.cand[0])}
        pred = sample.candidates[int(row[0, t.cand[0]].argmax())]
    return {"probs": probs, "p_answer": p_pos, "p_other": p_neg,
            "pair": p_pos / (p_pos + p_neg) if p_pos + p_neg > 0 else math.nan,
            "margin": float(margins(row, t)[0]), "pred": pred, "follows": bool(followed)}


def other_label(sample: Sample) -> str:
    return sample.other_answer if getattr(sample, "other_answer", None) else "best wrong candidate"


def distribution_html(sample: Sample, columns: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """A table of candidate probabilities (bars), one column per run (name, ``answer_summary``); the
    instructed answer and the other modality's answer are marked."""
    head = "".join(f"<th style='text-align:left;padding:0 8px'>{html.escape(name)}</th>" for name, _ in columns)
    rows = []
    for c in (columns[0][1]["probs"] if columns else sample.candidates):
        mark = " (instructed)" if c == sample.answer else (" (other)" if c == getattr(sample, "other_answer", None) else "")
        cells = []
        for _, summ in columns:
            p = summ["probs"][c]
            colour = "#0173b2" if c == sample.answer else ("#de8f05" if mark else "#999999")
            cells.append(f"<td style='padding:0 8px'><div style='display:inline-block;width:{max(1, round(120 * p))}px;"
                         f"height:9px;background:{colour}'></div> {p:.3f}</td>")
        rows.append(f"<tr><td style='font-family:monospace'>{html.escape(c)}{mark}</td>{''.join(cells)}</tr>")
    return f"<table style='font-size:12px'><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def margin_text(summary: Mapping[str, Any]) -> str:
    return (f"P(instructed {summary['pair']:.3f} of the pair), margin {summary['margin']:+.3f}, "
            f"answer {summary['pred']!r} ({'follows' if summary['follows'] else 'does NOT follow'} the instruction)")


@contextmanager
def busy(owner: Any) -> Iterator[None]:
    """Show the owner's busy indicator while the body runs; store an error message instead of raising."""
    owner.busy = True
    owner.busy_label.value = BUSY
    owner.error = None
    try:
        yield
    except Exception as exc:  # a widget callback must not die silently in the kernel log
        owner.error = f"{type(exc).__name__}: {exc}"
        owner.busy_label.value = f'<span class="mf-error" style="color:#c00">{html.escape(owner.error)}</span>'
    else:
        owner.busy_label.value = ""
    finally:
        owner.busy = False


def readout(css_class: str) -> widgets.HTML:
    """An empty HTML readout carrying ``css_class`` (the hook the browser test finds it by)."""
    w = widgets.HTML("")
    w.add_class(css_class)
    return w


def busy_label() -> widgets.HTML:
    return readout("mf-busy")


class Debounce:
    """Call ``fn`` once, ``wait_s`` after the last of a burst of calls, on the running asyncio loop (the
    Jupyter kernel's). Without a running loop (plain Python, tests) or with ``wait_s <= 0`` it calls at once."""

    def __init__(self, fn: Callable[[], None], wait_s: float) -> None:
        self.fn, self.wait_s = fn, wait_s
        self._handle: asyncio.TimerHandle | None = None

    @property
    def pending(self) -> bool:
        return self._handle is not None

    def __call__(self) -> None:
        self.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or self.wait_s <= 0:
            self.fn()
        else:
            self._handle = loop.call_later(self.wait_s, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self.fn()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def flush(self) -> None:
        """Run a pending call now."""
        if self._handle is not None:
            self.cancel()
            self.fn()
