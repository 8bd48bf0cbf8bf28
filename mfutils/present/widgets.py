"""Interactive explorers (ipywidgets) over the same hooks the notebooks use: pick a sample, cut an edge in a
window of layers, block or amplify heads, look at attention maps, and see the answer move.

Every builder RETURNS a widget (a ``VBox`` subclass) and never displays it. Each returned object carries a
small Python API (``set_*`` methods, readout widgets, the numbers behind them) so tests and ``assert`` cells can
drive it headless, as ipywidgets' own tests do, and stable CSS classes (``mf-*``) for browser tests. Heavy work
stays responsive: the unhooked forward of each sample is cached, sliders fire on release
(``continuous_update=False``), head-board clicks are debounced, and a busy indicator shows while a forward runs.
Interventions are the context managers of ``mfutils.model.hooks``, so no hook outlives a computation.

Public API
----------
sample_browser(mm, samples) -> SampleBrowser
    the image, the prompt's tokens coloured by group, the instruction, both candidate answers and the
    model's probabilities. API: ``.set_sample(i)``, ``.probabilities`` {candidate: P}, ``.summary``.
knockout_explorer(mm, samples, edge=("image", "last"), window=None) -> KnockoutExplorer
    source -> target group dropdowns and a layer-window slider; the candidate distribution and the margin
    under the knockout next to the (cached) unhooked run. API: ``.set_edge(src, dst)``, ``.set_window(lo, hi)``,
    ``.set_sample(i)``, ``.margin``, ``.base_margin``, ``.margin_label`` (class ``mf-margin``).
head_board(mm, scores, samples, batch, identified=None, score_source=...) -> HeadBoard
    a layer x head grid of buttons coloured by head scores (notebook 03); a click cycles
    normal -> blocked -> amplified (alpha slider) -> normal. MFR on the fixed ``batch`` (with its sample
    count and 95% interval) and the chosen sample's answer update. API: ``.set_state(head, state)``,
    ``.block(heads)``, ``.amplify(heads)``, ``.reset()``, ``.click(head)``, ``.flush()``, ``.state``, ``.mfr``, ``.base_mfr``.
attention_view(mm, samples) -> AttentionView
    the attention map of a chosen layer and head (eager attention, switched back afterwards) with the
    token-group boundaries marked, and the share of the answer position's attention on each group.
    API: ``.set(layer=, head=, sample=)``, ``.attention`` [T, T], ``.group_shares``.
answer_summary(mm, sample, logits) -> dict     candidate probabilities, margin and prediction of one sample
HEAD_STATES                                    ("normal", "blocked", "amplified")

Example::

    ex = knockout_explorer(mm, load_split("tiny", "test")[:32])
    ex.set_edge("image", "last"); ex.set_window(2, 5)
    ex.margin - ex.base_margin          # how much cutting image -> last in layers 2-5 moved the margin
"""

from __future__ import annotations

import asyncio
import html
import io
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import ipywidgets as widgets
import numpy as np
import torch

from mfutils.present.display import GROUP_COLORS, legend_html, tokens_html
from mfutils.model.groups import Encoded, edge_cut, encode
from mfutils.model.hooks import check_head, knockout, scale_heads
from mfutils.measure.metrics import Targets, answer_logits, follows, margins, targets_for
from mfutils.model.loading import MLLM
from mfutils.data.prompts import GROUP_NAMES
from mfutils.measure.stats import proportion

__all__ = ["sample_browser", "knockout_explorer", "head_board", "attention_view", "answer_summary",
           "SampleBrowser", "KnockoutExplorer", "HeadBoard", "AttentionView", "HEAD_STATES"]

Head = tuple[int, int]
HEAD_STATES = ("normal", "blocked", "amplified")
SOURCE_GROUPS = ("image", "context", "instruction", "question", "constraint", "system", "image+context", "other")
TARGET_GROUPS = ("last", "instruction", "context", "question", "constraint", "system")
_BUSY = '<span style="color:#b35900">&#9203; computing&hellip;</span>'


# ------------------------------------------------------------------------------------------------
# Shared pieces
# ------------------------------------------------------------------------------------------------
def _sample_label(i: int, s: Any) -> str:
    other = f" vs {s.other_answer}" if getattr(s, "other_answer", None) else ""
    return f"{i}: {s.category} / {s.attribute}: {s.answer}{other}"


def _sample_dropdown(samples: Sequence[Any], description: str = "sample") -> widgets.Dropdown:
    if not samples:
        raise ValueError("the explorers need at least one sample: pass a non-empty list of world samples "
                         "(e.g. mfutils.data.datasets.load_split(model, 'test')[:32])")
    dd = widgets.Dropdown(options=[(_sample_label(i, s), i) for i, s in enumerate(samples)], value=0,
                          description=description, layout=widgets.Layout(width="420px"))
    dd.add_class("mf-sample")
    return dd


def _image_png(image: Any, size: int = 192) -> bytes:
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    img.convert("RGB").resize((size, size), Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


class _Forwards:
    """Per-sample encodings, targets and unhooked answer logits, each computed once (the explorers' cache)."""

    def __init__(self, mm: MLLM, samples: Sequence[Any]) -> None:
        self.mm, self.samples = mm, list(samples)
        self._enc: dict[int, Encoded] = {}
        self._targets: dict[int, Targets] = {}
        self._base: dict[int, torch.Tensor] = {}
        self.n_base_forwards = 0

    def enc(self, i: int) -> Encoded:
        if i not in self._enc:
            self._enc[i] = encode(self.mm, [self.samples[i].prompt]).to(self.mm.device)
        return self._enc[i]

    def targets(self, i: int) -> Targets:
        if i not in self._targets:
            self._targets[i] = targets_for(self.mm, [self.samples[i]])
        return self._targets[i]

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


def answer_summary(mm: MLLM, sample: Any, logits: torch.Tensor, targets: Targets | None = None) -> dict[str, Any]:
    """What the model answers for one sample, from its answer logits [V].

    Returns ``probs`` {candidate: P} (softmax over the whole vocabulary), ``p_answer`` / ``p_other`` (summed
    P of the instructed / the other modality's candidates), ``pair`` (P of the instructed answer renormalised
    over the pair), ``margin`` (``metrics.margins``, binary constraint), ``pred`` (argmax over the
    candidates) and ``follows``.

    Example::

        logits = answer_logits(mm, encode(mm, [s.prompt]))[0]
        answer_summary(mm, s, logits)["margin"]
    """
    t = targets if targets is not None else targets_for(mm, [sample])
    row = logits.float().reshape(1, -1)
    p = torch.softmax(row, dim=-1)[0]
    p_pos, p_neg = float(p[t.pos[0]].sum()), float(p[t.neg[0]].sum())
    if getattr(sample, "answer_img_candidate_list", None) is not None:
        # candidate lists (MC2): one entry per side, P summed over the side's first tokens (metrics.targets_for)
        probs = {sample.answer: p_pos, sample.other_answer: p_neg}
        pred = sample.answer if bool(follows(row, t)[0]) else sample.other_answer
    else:
        probs = {c: float(p[i]) for c, i in zip(sample.candidates, t.cand[0])}
        pred = sample.candidates[int(row[0, t.cand[0]].argmax())]
    return {"probs": probs, "p_answer": p_pos, "p_other": p_neg,
            "pair": p_pos / (p_pos + p_neg) if p_pos + p_neg > 0 else math.nan,
            "margin": float(margins(row, t)[0]), "pred": pred, "follows": bool(follows(row, t)[0])}


def _other_label(sample: Any) -> str:
    return sample.other_answer if getattr(sample, "other_answer", None) else "best wrong candidate"


def _distribution_html(sample: Any, columns: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """A table of candidate probabilities (bars), one column per run; the instructed answer and the other
    modality's answer are marked."""
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


def _margin_text(summary: Mapping[str, Any]) -> str:
    return (f"P(instructed {summary['pair']:.3f} of the pair), margin {summary['margin']:+.3f}, "
            f"answer {summary['pred']!r} ({'follows' if summary['follows'] else 'does NOT follow'} the instruction)")


@contextmanager
def _busy(owner: Any) -> Iterator[None]:
    """Show the owner's busy indicator while the body runs; store an error message instead of raising."""
    owner.busy = True
    owner.busy_label.value = _BUSY
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


def _html(css_class: str) -> widgets.HTML:
    """An empty HTML readout carrying ``css_class`` (the hook the browser test finds it by)."""
    w = widgets.HTML("")
    w.add_class(css_class)
    return w


def _busy_label() -> widgets.HTML:
    return _html("mf-busy")


class _Debounce:
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


# ------------------------------------------------------------------------------------------------
# Sample browser
# ------------------------------------------------------------------------------------------------
class SampleBrowser(widgets.VBox):
    """Returned by ``sample_browser``: one sample, its token groups and the model's answer."""

    def __init__(self, mm: MLLM, samples: Sequence[Any]) -> None:
        self.mm, self.samples = mm, list(samples)
        self.forwards = _Forwards(mm, self.samples)
        self.sample = _sample_dropdown(self.samples)
        self.image = widgets.Image(format="png", layout=widgets.Layout(width="192px", height="192px"))
        self.image.add_class("mf-image")
        self.tokens = _html("mf-tokens")
        self.answers = _html("mf-answers")
        self.busy_label, self.busy, self.error = _busy_label(), False, None
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
        with _busy(self):
            self.image.value = _image_png(s.prompt.image)
            self.tokens.value = ('<div style="white-space:normal;max-width:760px">' + legend_html()
                                 + tokens_html(self.mm, self.forwards.enc(i), 0).replace("</span><span", "</span><wbr><span")
                                 + "</div>")                  # <wbr>: the line may break between tokens
            self.summary = answer_summary(self.mm, s, self.forwards.base(i), self.forwards.targets(i))
            instr = s.prompt.text("instruction")
            self.answers.value = (
                f"<div style='white-space:normal;max-width:760px'><b>instruction</b>: "
                f"{html.escape(instr) if instr else '(none)'} &nbsp; "
                f"<b>instructed answer</b>: {html.escape(s.answer)} &nbsp; "
                f"<b>other modality's answer</b>: {html.escape(_other_label(s))}</div>"
                f"<div>{html.escape(_margin_text(self.summary))}</div>"
                + _distribution_html(s, [("model", self.summary)]))


def sample_browser(mm: MLLM, samples: Sequence[Any]) -> SampleBrowser:
    """A browser over world ``samples``: image, tokens coloured by group, instruction, answers, probabilities.

    One forward per sample shown ([1, T] inputs -> [V] answer logits), cached.

    Example::

        sb = sample_browser(mm, samples); sb.set_sample(3)
        sb.probabilities                      # {"red": 0.91, ...}
    """
    return SampleBrowser(mm, samples)


# ------------------------------------------------------------------------------------------------
# Knockout explorer
# ------------------------------------------------------------------------------------------------
def _groups_of(name: str) -> list[str]:
    parts = name.split("+")
    unknown = [p for p in parts if p not in GROUP_NAMES]
    if unknown:
        raise ValueError(f"unknown token group(s) {unknown} in {name!r}; groups are {list(GROUP_NAMES)}")
    return parts


class KnockoutExplorer(widgets.VBox):
    """Returned by ``knockout_explorer``: cut source -> target in a window of layers for one sample."""

    def __init__(self, mm: MLLM, samples: Sequence[Any], edge: tuple[str, str] = ("image", "last"),
                 window: tuple[int, int] | None = None) -> None:
        self.mm, self.samples = mm, list(samples)
        self.forwards = _Forwards(mm, self.samples)
        L = mm.n_layers
        lo, hi = window if window is not None else (0, L - 1)
        if not 0 <= lo <= hi < L:
            raise ValueError(f"window {(lo, hi)} must satisfy 0 <= lo <= hi < {L} (layer indices, inclusive)")
        self.sample = _sample_dropdown(self.samples)
        src_opts = list(dict.fromkeys([*SOURCE_GROUPS, edge[0]]))
        dst_opts = list(dict.fromkeys([*TARGET_GROUPS, edge[1]]))
        self.src = widgets.Dropdown(options=src_opts, value=edge[0], description="source",
                                    layout=widgets.Layout(width="220px"))
        self.dst = widgets.Dropdown(options=dst_opts, value=edge[1], description="-> target",
                                    layout=widgets.Layout(width="220px"))
        self.src.add_class("mf-src")
        self.dst.add_class("mf-dst")
        self.window = widgets.IntRangeSlider(value=(lo, hi), min=0, max=L - 1, step=1, description="layers",
                                             continuous_update=False, layout=widgets.Layout(width="420px"))
        self.window.add_class("mf-window")
        self.margin_label = _html("mf-margin")
        self.distribution = _html("mf-distribution")
        self.busy_label, self.busy, self.error = _busy_label(), False, None
        self.margin = self.base_margin = math.nan
        self.summary: dict[str, Any] = {}
        self.base_summary: dict[str, Any] = {}
        self.n_cut = 0
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
        for dd, name in ((self.src, src), (self.dst, dst)):
            _groups_of(name)
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
        return edge_cut(enc.groups.to("cpu"), _groups_of(self.src.value), _groups_of(self.dst.value))[0]

    def _update(self) -> None:
        if getattr(self, "_muted", False):
            return
        i = int(self.sample.value)
        s = self.samples[i]
        with _busy(self):
            base = self.forwards.base(i)
            t = self.forwards.targets(i)
            block = self._cut(self.forwards.enc(i))
            self.n_cut = int(block.sum())
            if self.n_cut:
                with knockout(self.mm, block, self.layers):
                    logits = self.forwards.logits(i)
            else:
                logits = base
            self.base_summary = answer_summary(self.mm, s, base, t)
            self.summary = answer_summary(self.mm, s, logits, t)
            self.base_margin, self.margin = self.base_summary["margin"], self.summary["margin"]
            lo, hi = self.window.value
            what = (f"{self.src.value} -> {self.dst.value} cut in layers {lo}-{hi} ({self.n_cut} attention edges)"
                    if self.n_cut else f"nothing to cut: the sample has no {self.src.value} -> {self.dst.value} edge")
            flipped = np.sign(self.margin) != np.sign(self.base_margin)
            self.margin_label.value = (
                f"<div><b>{html.escape(what)}</b></div>"
                f"<div><b>margin {self.margin:+.3f}</b> (unhooked {self.base_margin:+.3f}, change "
                f"{self.margin - self.base_margin:+.3f}{', decision FLIPPED' if flipped else ''})</div>"
                f"<div>knocked out: {html.escape(_margin_text(self.summary))}</div>"
                f"<div>unhooked: {html.escape(_margin_text(self.base_summary))}</div>")
            self.distribution.value = _distribution_html(s, [("unhooked", self.base_summary),
                                                             ("knocked out", self.summary)])


def knockout_explorer(mm: MLLM, samples: Sequence[Any], edge: tuple[str, str] = ("image", "last"),
                      window: tuple[int, int] | None = None) -> KnockoutExplorer:
    """Cut ``edge`` (source group -> target group: target queries may not attend to source keys) in a window
    of layers (inclusive; default all) for one sample, next to its cached unhooked run.

    Uses ``hooks.knockout`` with the causal, non-diagonal edges of ``groups.edge_cut`` ([1, T, T]); one
    forward per change. ``margin`` / ``base_margin``: ``metrics.margins`` (binary constraint).

    Example::

        ex = knockout_explorer(mm, samples); ex.set_edge("instruction", "last"); ex.set_window(0, 0)
        ex.margin, ex.base_margin
    """
    return KnockoutExplorer(mm, samples, edge, window)


# ------------------------------------------------------------------------------------------------
# Head board
# ------------------------------------------------------------------------------------------------
def _score_colours(scores: np.ndarray) -> tuple[list[list[str]], list[list[str]]]:
    """Background and text colours per head: a diverging map of sign(s) * sqrt(|s| / max|s|)."""
    import matplotlib

    cmap = matplotlib.colormaps["RdBu_r"]
    finite = np.nan_to_num(scores, nan=0.0)
    top = float(np.abs(finite).max()) or 1.0
    x = np.sign(finite) * np.sqrt(np.abs(finite) / top)
    bg, fg = [], []
    for row in x:
        bg.append([matplotlib.colors.to_hex(cmap(0.5 + 0.5 * v)) for v in row])
        fg.append(["white" if abs(v) > 0.6 else "black" for v in row])
    return bg, fg


def _rate_text(p: Mapping[str, float]) -> str:
    if not p["n"]:
        return "n/a (0 samples)"
    return f"{p['rate']:.3f} = {p['k']}/{p['n']} samples [{p['lo']:.2f}, {p['hi']:.2f}]"


class HeadBoard(widgets.VBox):
    """Returned by ``head_board``: block or amplify heads, read MFR on a fixed batch and one sample's answer."""

    _SYMBOL = {"normal": "", "blocked": "\u2715", "amplified": "\u25b2"}

    def __init__(self, mm: MLLM, scores: Any, samples: Sequence[Any], batch: Sequence[Any],
                 identified: Sequence[Head] | None = None, alpha: float = 4.0, debounce_s: float = 0.3,
                 batch_size: int = 64, score_source: str = "head score of notebook 03") -> None:
        from mfutils.study.heads import top_heads

        self.mm, self.samples, self.batch = mm, list(samples), list(batch)
        L, H = mm.n_layers, mm.n_heads
        self.scores = np.asarray(torch.as_tensor(scores, dtype=torch.float32).cpu().numpy(), dtype=float)
        if self.scores.shape != (L, H):
            raise ValueError(f"scores must be [n_layers, n_heads] = [{L}, {H}] for {mm.name!r}, got "
                             f"{list(self.scores.shape)}: pass the head scores of this model (notebook 03)")
        if not self.batch:
            raise ValueError("head_board needs a non-empty fixed batch of conflict samples for its MFR readout")
        self.identified = [(int(l), int(h)) for l, h in (identified if identified is not None else top_heads(self.scores))]
        self.forwards = _Forwards(mm, self.samples)
        self._state: dict[Head, str] = {}
        self._flag_cache: dict[tuple[Any, ...], torch.Tensor] = {}
        self.n_batch_forwards = 0
        self._batch = [(encode(mm, [s.prompt for s in self.batch[j:j + batch_size]]).to(mm.device),
                        targets_for(mm, self.batch[j:j + batch_size])) for j in range(0, len(self.batch), batch_size)]
        self.sample = _sample_dropdown(self.samples)
        self.alpha = widgets.FloatSlider(value=alpha, min=1.0, max=8.0, step=0.5, description="amplify x",
                                         continuous_update=False, readout_format=".1f")
        self.alpha.add_class("mf-alpha")
        self.positions = widgets.Dropdown(options=[("every position", "all"), ("answer position only", "last")],
                                          value="all", description="scale at")
        self.reset_button = widgets.Button(description="reset all heads", layout=widgets.Layout(width="160px"))
        self.block_identified_button = widgets.Button(description=f"block the {len(self.identified)} identified heads",
                                                      layout=widgets.Layout(width="240px"))
        self.block_identified_button.add_class("mf-block-identified")
        self.buttons: dict[Head, widgets.Button] = {}
        bg, fg = _score_colours(self.scores)
        cells: list[widgets.Widget] = [widgets.HTML("")]
        cells += [widgets.HTML(f"<b>H{h}</b>") for h in range(H)]
        for l in range(L):
            cells.append(widgets.HTML(f"<b>L{l}</b>"))
            for h in range(H):
                s = self.scores[l, h]
                b = widgets.Button(description="", tooltip=f"layer {l} head {h}: score {s:+.3f}",
                                   layout=widgets.Layout(width="44px", height="30px"))
                b.style.button_color, b.style.text_color = bg[l][h], fg[l][h]
                b.add_class("mf-head")
                b.add_class(f"mf-head-L{l}H{h}")
                if (l, h) in self.identified:
                    b.add_class("mf-identified")
                b.on_click(lambda _b, head=(l, h): self.click(head))
                self.buttons[(l, h)] = b
                cells.append(b)
        self.grid = widgets.GridBox(cells, layout=widgets.Layout(
            grid_template_columns=f"40px repeat({H}, 46px)", grid_gap="2px"))
        self.grid.add_class("mf-grid")
        self.mfr_label = _html("mf-mfr")
        self.answer_label = _html("mf-answer")
        self.busy_label, self.busy, self.error = _busy_label(), False, None
        self.mfr: dict[str, Any] = {}
        self.base_mfr: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}
        self.base_summary: dict[str, Any] = {}
        legend = widgets.HTML(
            f"<div style='font-size:12px'>colour: {html.escape(score_source)} (red supports following the instruction, "
            "blue opposes; sqrt scale); click: normal &rarr; <b>\u2715 blocked</b> (alpha 0) &rarr; "
            "<b>\u25b2 amplified</b> (alpha slider) &rarr; normal; outlined in green: the identified heads</div>")
        self._debounced = _Debounce(self._update, debounce_s)
        super().__init__([widgets.HBox([self.sample, self.busy_label]),
                          widgets.HBox([self.alpha, self.positions]),
                          widgets.HBox([self.block_identified_button, self.reset_button]),
                          legend, self.grid, self.mfr_label, self.answer_label])
        self.add_class("mf-head-board")
        self.reset_button.on_click(lambda _: self.reset())
        self.block_identified_button.on_click(lambda _: self.block(self.identified))
        for w in (self.sample, self.alpha, self.positions):
            w.observe(lambda _: self._update(), names="value")
        self._restyle()
        self._update()

    # ---- state -------------------------------------------------------------------------------------
    @property
    def state(self) -> dict[Head, str]:
        """{(layer, head): "blocked" | "amplified"} for every head not in its normal state."""
        return dict(self._state)

    def alphas(self) -> dict[Head, float]:
        """{(layer, head): alpha} that ``hooks.scale_heads`` receives."""
        a = float(self.alpha.value)
        return {head: (0.0 if st == "blocked" else a) for head, st in sorted(self._state.items())}

    def set_state(self, head: Head, state: str) -> None:
        """Set one head's state and recompute at once (no debounce)."""
        self._set(head, state)
        self._debounced.cancel()
        self._update()

    def block(self, heads: Sequence[Head]) -> None:
        """Block ``heads`` (others keep their state) and recompute once."""
        for head in heads:
            self._set(head, "blocked")
        self._debounced.cancel()
        self._update()

    def amplify(self, heads: Sequence[Head]) -> None:
        """Amplify ``heads`` by the alpha slider's value (others keep their state) and recompute once."""
        for head in heads:
            self._set(head, "amplified")
        self._debounced.cancel()
        self._update()

    def set_sample(self, i: int) -> None:
        self.sample.value = i

    def reset(self) -> None:
        """Every head back to normal."""
        for head in list(self._state):
            self._set(head, "normal")
        self._debounced.cancel()
        self._update()

    def click(self, head: Head) -> None:
        """What a click on the head's button does: cycle its state; the recomputation is debounced."""
        current = self._state.get(head, "normal")
        self._set(head, HEAD_STATES[(HEAD_STATES.index(current) + 1) % len(HEAD_STATES)])
        self.busy_label.value = _BUSY
        self._debounced()

    def flush(self) -> None:
        """Run a pending (debounced) recomputation now."""
        self._debounced.flush()

    def _set(self, head: Head, state: str) -> None:
        head = check_head(self.mm, head)
        if state not in HEAD_STATES:
            raise ValueError(f"state must be one of {HEAD_STATES}, got {state!r}")
        if state == "normal":
            self._state.pop(head, None)
        else:
            self._state[head] = state
        self._restyle(head)

    def _restyle(self, only: Head | None = None) -> None:
        for head in ([only] if only else list(self.buttons)):
            b, st = self.buttons[head], self._state.get(head, "normal")
            b.description = self._SYMBOL[st]
            for s in HEAD_STATES:
                (b.add_class if s == st else b.remove_class)(f"mf-{s}")
            outline = "3px solid #1b9e3a" if head in self.identified else "1px solid #cccccc"
            b.layout.border = {"blocked": "3px solid black", "amplified": "3px dashed black"}.get(st, outline)

    # ---- computation -------------------------------------------------------------------------------
    @torch.no_grad()
    def _flags(self, alphas: Mapping[Head, float], positions: str) -> torch.Tensor:
        key = (tuple(sorted(alphas.items())), positions if alphas else "all")
        if key not in self._flag_cache:
            out = []
            for enc, t in self._batch:
                pos = enc.groups["last"] if positions == "last" else None
                with scale_heads(self.mm, dict(alphas), positions=pos):
                    out.append(follows(answer_logits(self.mm, enc), t).cpu())
            self._flag_cache[key] = torch.cat(out)
            self.n_batch_forwards += 1
        return self._flag_cache[key]

    def _rates(self, flags: torch.Tensor) -> dict[str, Any]:
        x = flags.numpy()
        cats = np.array([s.category for s in self.batch])
        out: dict[str, Any] = {"all": proportion(x)}
        for c in ("follow_image", "follow_text"):
            if (cats == c).any():
                out[c] = proportion(x[cats == c])
        return out

    def _update(self) -> None:
        i = int(self.sample.value)
        s = self.samples[i]
        alphas, positions = self.alphas(), str(self.positions.value)
        with _busy(self):
            base_all = self._rates(self._flags({}, "all"))
            now = self._rates(self._flags(alphas, positions))
            self.base_mfr, self.mfr = base_all["all"], now["all"]
            t = self.forwards.targets(i)
            base = self.forwards.base(i)
            if alphas:
                enc = self.forwards.enc(i)
                with scale_heads(self.mm, alphas, positions=enc.groups["last"] if positions == "last" else None):
                    logits = self.forwards.logits(i)
            else:
                logits = base
            self.base_summary = answer_summary(self.mm, s, base, t)
            self.summary = answer_summary(self.mm, s, logits, t)
            n_b = sum(st == "blocked" for st in self._state.values())
            n_a = len(self._state) - n_b
            setting = (f"{n_b} blocked, {n_a} amplified x{float(self.alpha.value):.1f}"
                       f" ({'every position' if positions == 'all' else 'answer position only'})") if alphas else "no head changed"
            per = "".join(f"<div>&nbsp;&nbsp;{c}: {_rate_text(now[c])} (unhooked {_rate_text(base_all[c])})</div>"
                          for c in ("follow_image", "follow_text") if c in now)
            self.mfr_label.value = (f"<div><b>MFR {_rate_text(self.mfr)}</b> with {html.escape(setting)}; "
                                    f"unhooked {_rate_text(self.base_mfr)}</div>{per}")
            self.answer_label.value = (
                f"<div><b>sample {i}</b> ({html.escape(s.category)}): {html.escape(_margin_text(self.summary))}</div>"
                f"<div>unhooked: {html.escape(_margin_text(self.base_summary))}</div>")


def head_board(mm: MLLM, scores: Any, samples: Sequence[Any], batch: Sequence[Any],
               identified: Sequence[Head] | None = None, alpha: float = 4.0, debounce_s: float = 0.3,
               score_source: str = "head score of notebook 03") -> HeadBoard:
    """A layer x head grid of buttons coloured by ``scores`` ([n_layers, n_heads], notebook 03); a click cycles
    a head normal -> blocked (alpha 0) -> amplified (alpha slider) -> normal through ``hooks.scale_heads``.

    Readouts: MFR on the fixed ``batch`` (world samples; rate = k/n with a Wilson 95% interval, overall and per
    instruction; each head setting is computed once and cached) and the answer of the sample chosen from
    ``samples``. ``identified`` (default: ``heads.top_heads(scores)``) are outlined; ``score_source`` names the
    scores in the legend. Clicks recompute after a ``debounce_s`` pause on the kernel's event loop;
    ``set_state``/``block``/``amplify``/``reset`` recompute at once.

    Example::

        hb = head_board(mm, ident["scores"], failed, test[:64], ident["identified"])
        hb.block(hb.identified); hb.mfr["rate"], hb.base_mfr["rate"]
    """
    return HeadBoard(mm, scores, samples, batch, identified, alpha, debounce_s, score_source=score_source)


# ------------------------------------------------------------------------------------------------
# Attention view
# ------------------------------------------------------------------------------------------------
class AttentionView(widgets.VBox):
    """Returned by ``attention_view``: one layer's (one head's or the mean) attention map for one sample."""

    def __init__(self, mm: MLLM, samples: Sequence[Any], layer: int = 0, head: int = -1) -> None:
        self.mm, self.samples = mm, list(samples)
        self.forwards = _Forwards(mm, self.samples)
        self._maps: dict[int, torch.Tensor] = {}
        self.n_eager_forwards = 0
        self.sample = _sample_dropdown(self.samples)
        self.layer = widgets.IntSlider(value=layer, min=0, max=mm.n_layers - 1, description="layer",
                                       continuous_update=False)
        self.layer.add_class("mf-layer")
        self.head = widgets.Dropdown(options=[("mean of heads", -1)] + [(f"head {h}", h) for h in range(mm.n_heads)],
                                     value=head, description="head")
        self.head.add_class("mf-attn-head")
        self.image = widgets.Image(format="png")
        self.image.add_class("mf-attention")
        self.shares_label = _html("mf-shares")
        self.busy_label, self.busy, self.error = _busy_label(), False, None
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
        if getattr(self, "_muted", False):
            return
        import matplotlib.pyplot as plt

        i, layer, head = int(self.sample.value), int(self.layer.value), int(self.head.value)
        with _busy(self):
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


def attention_view(mm: MLLM, samples: Sequence[Any], layer: int = 0, head: int = -1) -> AttentionView:
    """The attention map ([T, T], query x key) of ``layer`` and ``head`` (-1 = mean over heads) for one sample,
    with token-group boundaries marked, and the share of the answer position's attention on each group.

    Attention weights need eager attention: the model is switched to ``"eager"`` for one forward per sample
    (all layers at once, [L, H, T, T], cached) and switched back in a ``finally``.

    Example::

        av = attention_view(mm, samples); av.set(layer=0, head=1)
        av.group_shares["instruction"]          # share of the last position's attention on the instruction
    """
    return AttentionView(mm, samples, layer, head)
