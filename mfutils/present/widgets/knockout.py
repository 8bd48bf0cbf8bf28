"""The knockout explorer: cut one attention edge (source group -> target group) in a window of layers for one
sample, and see the candidate distribution and the margin move against the (cached) unhooked run.

Public API
----------
knockout_explorer(mm, samples, edge=("image", "last"), window=None) -> KnockoutExplorer
KnockoutExplorer     ``.set_edge(src, dst)``, ``.set_window(lo, hi)``, ``.set_sample(i)``; ``.margin``,
                     ``.base_margin``, ``.summary``, ``.base_summary``, ``.n_cut``, ``.layers``; readouts
                     ``.margin_label`` (class ``mf-margin``) and ``.distribution`` (``mf-distribution``)
SOURCE_GROUPS / TARGET_GROUPS   the dropdowns' groups: the edge registry's (``mfutils.model.edges.edge_groups``),
                     then every other token group

Example::

    ex = knockout_explorer(mm, samples); ex.set_edge("instruction", "last"); ex.set_window(0, 0)
    ex.margin, ex.base_margin
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import ipywidgets as widgets
import numpy as np
import torch

from mfutils.data.prompts import GROUP_NAMES
from mfutils.data.sample import Sample
from mfutils.model.edges import edge_groups, parse_edge
from mfutils.model.groups import Encoded, edge_cut
from mfutils.model.hooks import knockout
from mfutils.model.loading import MLLM
from mfutils.present.widgets.common import (Forwards, answer_summary, busy, busy_label, distribution_html,
                                            margin_text, readout, sample_dropdown)

__all__ = ["knockout_explorer", "KnockoutExplorer", "SOURCE_GROUPS", "TARGET_GROUPS"]

# The registered edges' groups first, then every other group ("last" is no source: nothing comes after it).
SOURCE_GROUPS = tuple(dict.fromkeys([*edge_groups("src"), *(g for g in GROUP_NAMES if g != "last")]))
TARGET_GROUPS = tuple(dict.fromkeys([*edge_groups("dst"), *GROUP_NAMES]))


def _edge(src: str, dst: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(edge name, source groups, target groups) of ``src -> dst``; ValueError for an unknown group."""
    name = f"{src}->{dst}"
    s, d = parse_edge(name)
    unknown = [p for p in (*s, *d) if p not in GROUP_NAMES]
    if unknown:
        raise ValueError(f"unknown token group(s) {unknown} in {name!r}; groups are {list(GROUP_NAMES)}")
    return name, s, d


class KnockoutExplorer(widgets.VBox):
    """Returned by ``knockout_explorer``: cut source -> target in a window of layers for one sample."""

    def __init__(self, mm: MLLM, samples: Sequence[Sample], edge: tuple[str, str] = ("image", "last"),
                 window: tuple[int, int] | None = None) -> None:
        self.mm, self.samples = mm, list(samples)
        self.forwards = Forwards(mm, self.samples)
        L = mm.n_layers
        lo, hi = window if window is not None else (0, L - 1)
        if not 0 <= lo <= hi < L:
            raise ValueError(f"window {(lo, hi)} must satisfy 0 <= lo <= hi < {L} (layer indices, inclusive)")
        _edge(*edge)
        self.sample = sample_dropdown(self.samples)
        self.src = widgets.Dropdown(options=list(dict.fromkeys([*SOURCE_GROUPS, edge[0]])), value=edge[0],
                                    description="source", layout=widgets.Layout(width="220px"))
        self.dst = widgets.Dropdown(options=list(dict.fromkeys([*TARGET_GROUPS, edge[1]])), value=edge[1],
                                    description="-> target", layout=widgets.Layout(width="220px"))
        self.src.add_class("mf-src")
        self.dst.add_class("mf-dst")
        self.window = widgets.IntRangeSlider(value=(lo, hi), min=0, max=L - 1, step=1, description="layers",
                                             continuous_update=False, layout=widgets.Layout(width="420px"))
        self.window.add_class("mf-window")
        self.margin_label = readout("mf-margin")
        self.distribution = readout("mf-distribution")
        self.busy_label, self.busy, self.error = busy_label(), False, None
        self.margin = self.base_margin = math.nan
        self.summary: dict[str, Any] = {}
        self.base_summary: dict[str, Any] = {}
        self.n_cut = 0
        self._muted = False
        super().__init__([widgets.HBox([self.sample, self.busy_label]), widgets.HBox([self.src, self.dst]),
                          self.window, self.margin_label, self.distribution])
        self.add_class("mf-knockout")
        for w in (self.sample, self.src, self.dst, self.window):
            w.observe(lambda _: self._update(), names="value")
        self._update()

    @property
    def layers(self) -> list[int]:
        lo, hi = self.window.value
        return list(range(int(lo), int(hi) + 1))

    def set_edge(self, src: str, dst: str) -> None:
        """Cut ``src`` -> ``dst`` (groups joined by '+', e.g. ``"image+context"``); one recomputation."""
        _edge(src, dst)
        for dd, name in ((self.src, src), (self.dst, dst)):
            if name not in dd.options:
                dd.options = [*dd.options, name]
        with self._quiet():
            self.src.value, self.dst.value = src, dst
        self._update()

    def set_window(self, lo: int, hi: int) -> None:
        """Cut in layers lo..hi (inclusive)."""
        self.window.value = (lo, hi)

    def set_sample(self, i: int) -> None:
        self.sample.value = i

    @contextmanager
    def _quiet(self) -> Iterator[None]:
        self._muted = True
        try:
            yield
        finally:
            self._muted = False

    def _cut(self, enc: Encoded) -> torch.Tensor:
        """BoolTensor [1, T, T]: the edge's attention edges (causal, not a token to itself)."""
        _, src, dst = _edge(self.src.value, self.dst.value)
        return edge_cut(enc.groups.to("cpu"), src, dst)[0]

    def _update(self) -> None:
        if self._muted:
            return
        i = int(self.sample.value)
        s = self.samples[i]
        fw = self.forwards
        with busy(self):
            base = fw.base(i)
            t = fw.targets(i)
            block = self._cut(fw.enc(i))
            self.n_cut = int(block.sum())
            if self.n_cut:
                with knockout(self.mm, block, self.layers):
                    logits = fw.logits(i)
                followed = fw.followed(i, knockout=(_edge(self.src.value, self.dst.value)[0], self.layers))
            else:
                logits, followed = base, fw.base_followed(i)
            self.base_summary = answer_summary(self.mm, s, base, fw.base_followed(i), t)
            self.summary = answer_summary(self.mm, s, logits, followed, t)
            self.base_margin, self.margin = self.base_summary["margin"], self.summary["margin"]
            lo, hi = self.window.value
            what = (f"{self.src.value} -> {self.dst.value} cut in layers {lo}-{hi} ({self.n_cut} attention edges)"
                    if self.n_cut else f"nothing to cut: the sample has no {self.src.value} -> {self.dst.value} edge")
            flipped = np.sign(self.margin) != np.sign(self.base_margin)
            self.margin_label.value = (
                f"<div><b>{html.escape(what)}</b></div>"
                f"<div><b>margin {self.margin:+.3f}</b> (unhooked {self.base_margin:+.3f}, change "
                f"{self.margin - self.base_margin:+.3f}{', decision FLIPPED' if flipped else ''})</div>"
                f"<div>knocked out: {html.escape(margin_text(self.summary))}</div>"
                f"<div>unhooked: {html.escape(margin_text(self.base_summary))}</div>")
            self.distribution.value = distribution_html(s, [("unhooked", self.base_summary),
                                                            ("knocked out", self.summary)])


def knockout_explorer(mm: MLLM, samples: Sequence[Sample], edge: tuple[str, str] = ("image", "last"),
                      window: tuple[int, int] | None = None) -> KnockoutExplorer:
    """Cut ``edge`` (source group -> target group: target queries may not attend to source keys) in a window
    of layers (inclusive; default all) for one sample, next to its cached unhooked run.

    Uses ``hooks.knockout`` with the causal, non-diagonal edges of ``groups.edge_cut`` ([1, T, T]) for the
    distribution; the follow flag is ``measure.follow.follows`` with the same ``knockout=(edge, layers)``.
    ``margin`` / ``base_margin``: ``measure.margins.margins`` (binary constraint).

    Example::

        ex = knockout_explorer(mm, samples); ex.set_edge("instruction", "last"); ex.set_window(0, 0)
        ex.margin, ex.base_margin
    """
    return KnockoutExplorer(mm, samples, edge, window)
