"""The attention view: one layer's attention map (one head, or the mean of heads) for one sample, with the
token-group boundaries marked, and the share of the answer position's attention on each group.

Public API
----------
attention_view(mm, samples, layer=0, head=-1) -> AttentionView
AttentionView     ``.set(layer=, head=, sample=)``; ``.attention`` [T, T] (query x key); ``.group_shares``
                  {group: share of the last position's attention}; ``.maps(i)`` [L, H, T, T]; readouts
                  ``.image`` (``mf-attention``), ``.shares_label`` (``mf-shares``)

Attention weights need eager attention: the model is switched to ``"eager"`` for one forward per sample and
switched back in a ``finally``.

Example::

    av = attention_view(mm, samples); av.set(layer=0, head=1)
    av.group_shares["instruction"]
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence

import ipywidgets as widgets
import numpy as np
import torch

from mfutils.data.prompts import GROUP_NAMES
from mfutils.data.sample import Sample
from mfutils.model.loading import MLLM
from mfutils.present.display import GROUP_COLORS
from mfutils.present.widgets.common import Forwards, busy, busy_label, readout, sample_dropdown

__all__ = ["attention_view", "AttentionView"]


class AttentionView(widgets.VBox):
    """Returned by ``attention_view``: one layer's (one head's or the mean) attention map for one sample."""

    def __init__(self, mm: MLLM, samples: Sequence[Sample], layer: int = 0, head: int = -1) -> None:
        self.mm, self.samples = mm, list(samples)
        self.forwards = Forwards(mm, self.samples)
        self._maps: dict[int, torch.Tensor] = {}
        self.n_eager_forwards = 0
        self.sample = sample_dropdown(self.samples)
        self.layer = widgets.IntSlider(value=layer, min=0, max=mm.n_layers - 1, description="layer",
                                       continuous_update=False)
        self.layer.add_class("mf-layer")
        self.head = widgets.Dropdown(options=[("mean of heads", -1)] + [(f"head {h}", h) for h in range(mm.n_heads)],
                                     value=head, description="head")
        self.head.add_class("mf-attn-head")
        self.image = widgets.Image(format="png")
        self.image.add_class("mf-attention")
        self.shares_label = readout("mf-shares")
        self.busy_label, self.busy, self.error = busy_label(), False, None
        self._muted = False
        self.attention = np.zeros((0, 0))
        self.group_shares: dict[str, float] = {}
        super().__init__([widgets.HBox([self.sample, self.busy_label]), widgets.HBox([self.layer, self.head]),
                          self.shares_label, self.image])
        self.add_class("mf-attention-view")
        for w in (self.sample, self.layer, self.head):
            w.observe(lambda _: self._update(), names="value")
        self._update()

    def set(self, layer: int | None = None, head: int | None = None, sample: int | None = None) -> None:
        """Change any of layer, head (-1 = mean of heads) and sample; one redraw."""
        self._muted = True
        try:
            if sample is not None:
                self.sample.value = sample
            if layer is not None:
                self.layer.value = layer
            if head is not None:
                self.head.value = head
        finally:
            self._muted = False
        self._update()

    @torch.no_grad()
    def maps(self, i: int) -> torch.Tensor:
        """FloatTensor [L, H, T, T]: sample i's attention weights (eager attention; the last two samples
        viewed are cached: one map is L*H*T*T floats, about 1.5 GB for a 7B model at T = 620)."""
        if i not in self._maps:
            while len(self._maps) >= 2:
                self._maps.pop(next(iter(self._maps)))
            enc = self.forwards.enc(i)
            previous = self.mm.attn_implementation
            try:
                self.mm.set_attn_implementation("eager")
                out = self.mm.model(**enc.inputs, output_attentions=True)
            finally:
                self.mm.set_attn_implementation(previous)
            self._maps[i] = torch.stack([a[0].float().cpu() for a in out.attentions])
            self.n_eager_forwards += 1
        return self._maps[i]

    def _segments(self, i: int) -> list[tuple[str, int, int]]:
        """(group, start, stop) runs over the sample's positions (one sample, no padding)."""
        g = self.forwards.enc(i).groups
        names = [next((n for n in GROUP_NAMES if n != "last" and bool(g[n][0, t])), "other")
                 for t in range(g.shape[1])]
        names[int(g.last_index()[0])] = "last"
        runs: list[tuple[str, int, int]] = []
        for t, n in enumerate(names):
            if runs and runs[-1][0] == n:
                runs[-1] = (n, runs[-1][1], t + 1)
            else:
                runs.append((n, t, t + 1))
        return runs

    def _update(self) -> None:
        if self._muted:
            return
        import matplotlib.pyplot as plt

        i, layer, head = int(self.sample.value), int(self.layer.value), int(self.head.value)
        with busy(self):
            att = self.maps(i)[layer]
            a = att.mean(0) if head < 0 else att[head]
            self.attention = a.numpy()
            runs = self._segments(i)
            last = self.attention[-1]
            self.group_shares = {}
            for n, lo, hi in runs:
                self.group_shares[n] = self.group_shares.get(n, 0.0) + float(last[lo:hi].sum())
            fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=90)
            im = ax.imshow(self.attention, cmap="magma", vmin=0, vmax=max(1e-6, float(self.attention.max())))
            for n, lo, hi in runs:
                for pos in (lo - 0.5,):
                    ax.axhline(pos, color="white", lw=0.6)
                    ax.axvline(pos, color="white", lw=0.6)
            centres = [(lo + hi - 1) / 2 for _, lo, hi in runs]
            ax.set_xticks(centres, [n for n, _, _ in runs], rotation=60, fontsize=7)
            ax.set_yticks(centres, [n for n, _, _ in runs], fontsize=7)
            for tick, (n, _, _) in zip([*ax.get_xticklabels(), *ax.get_yticklabels()], runs + runs):
                tick.set_color(GROUP_COLORS.get(n, "#444444"))
            ax.set_xlabel("key")
            ax.set_ylabel("query")
            ax.set_title(f"layer {layer}, {'mean of heads' if head < 0 else f'head {head}'}, sample {i}", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
            plt.close(fig)
            self.image.value = buf.getvalue()
            shares = ", ".join(f"{n} {v:.3f}" for n, v in sorted(self.group_shares.items(), key=lambda kv: -kv[1]))
            self.shares_label.value = f"<div>answer position's attention by group: {html.escape(shares)}</div>"


def attention_view(mm: MLLM, samples: Sequence[Sample], layer: int = 0, head: int = -1) -> AttentionView:
    """The attention map ([T, T], query x key) of ``layer`` and ``head`` (-1 = mean over heads) for one sample,
    with token-group boundaries marked, and the share of the answer position's attention on each group.

    Attention weights need eager attention: the model is switched to ``"eager"`` for one forward per sample
    (all layers at once, [L, H, T, T], cached) and switched back in a ``finally``.

    Example::

        av = attention_view(mm, samples); av.set(layer=0, head=1)
        av.group_shares["instruction"]          # share of the last position's attention on the instruction
    """
    return AttentionView(mm, samples, layer, head)
