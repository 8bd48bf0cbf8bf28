"""The sample browser: one sample's image, its prompt's tokens coloured by group, the instruction, both candidate
answers and the model's probabilities.

Public API
----------
sample_browser(mm, samples) -> SampleBrowser
SampleBrowser     ``.set_sample(i)``; ``.probabilities`` {candidate: P}; ``.summary`` (``common.answer_summary``);
                  readouts ``.image`` (``mf-image``), ``.tokens`` (``mf-tokens``), ``.answers`` (``mf-answers``)

Example::

    sb = sample_browser(mm, samples); sb.set_sample(3)
    sb.probabilities                      # {"red": 0.91, ...}
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets

from mfutils.data.sample import Sample
from mfutils.model.loading import MLLM
from mfutils.present.display import legend_html, tokens_html
from mfutils.present.widgets.common import (Forwards, answer_summary, busy, busy_label, distribution_html, image_png,
                                            margin_text, other_label, readout, sample_dropdown)

__all__ = ["sample_browser", "SampleBrowser"]


class SampleBrowser(widgets.VBox):
    """Returned by ``sample_browser``: one sample, its token groups and the model's answer."""

    def __init__(self, mm: MLLM, samples: Sequence[Sample]) -> None:
        self.mm, self.samples = mm, list(samples)
        self.forwards = Forwards(mm, self.samples)
        self.sample = sample_dropdown(self.samples)
        self.image = widgets.Image(format="png", layout=widgets.Layout(width="192px", height="192px"))
        self.image.add_class("mf-image")
        self.tokens = readout("mf-tokens")
        self.answers = readout("mf-answers")
        self.busy_label, self.busy, self.error = busy_label(), False, None
        self.summary: dict[str, Any] = {}
        super().__init__([widgets.HBox([self.sample, self.busy_label]),
                          widgets.HBox([self.image, widgets.VBox([self.tokens, self.answers],
                                                                 layout=widgets.Layout(padding="0 0 0 12px"))])])
        self.add_class("mf-sample-browser")
        self.sample.observe(lambda _: self._update(), names="value")
        self._update()

    @property
    def probabilities(self) -> dict[str, float]:
        """{candidate: P} of the shown sample (softmax over the whole vocabulary)."""
        return dict(self.summary.get("probs", {}))

    def set_sample(self, i: int) -> None:
        self.sample.value = i

    def _update(self) -> None:
        i = int(self.sample.value)
        s = self.samples[i]
        fw = self.forwards
        with busy(self):
            self.image.value = image_png(s.prompt.image)
            self.tokens.value = ('<div style="white-space:normal;max-width:760px">' + legend_html()
                                 + tokens_html(self.mm, fw.enc(i), 0).replace("</span><span", "</span><wbr><span")
                                 + "</div>")                  # <wbr>: the line may break between tokens
            self.summary = answer_summary(self.mm, s, fw.base(i), fw.base_followed(i), fw.targets(i))
            instr = s.prompt.text("instruction")
            self.answers.value = (
                f"<div style='white-space:normal;max-width:760px'><b>instruction</b>: "
                f"{html.escape(instr) if instr else '(none)'} &nbsp; "
                f"<b>instructed answer</b>: {html.escape(s.answer)} &nbsp; "
                f"<b>other modality's answer</b>: {html.escape(other_label(s))}</div>"
                f"<div>{html.escape(margin_text(self.summary))}</div>"
                + distribution_html(s, [("model", self.summary)]))


def sample_browser(mm: MLLM, samples: Sequence[Sample]) -> SampleBrowser:
    """A browser over world ``samples``: image, tokens coloured by group, instruction, answers, probabilities.

    One forward per sample shown ([1, T] inputs -> [V] answer logits), cached, and its follow flag
    (``mfutils.measure.follow.follows``), cached.

    Example::

        sb = sample_browser(mm, samples); sb.set_sample(3)
        sb.probabilities                      # {"red": 0.91, ...}
    """
    return SampleBrowser(mm, samples)
