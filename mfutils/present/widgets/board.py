"""The head board: a layer x head grid of buttons coloured by head scores (notebook 03); a click cycles a head
normal -> blocked -> amplified (alpha slider) -> normal, and the MFR on a fixed batch and one sample's answer
update.

Public API
----------
head_board(mm, scores, samples, batch, identified=None, alpha=4.0, debounce_s=0.3, score_source=...) -> HeadBoard
HeadBoard      ``.set_state(head, state)``, ``.block(heads)``, ``.amplify(heads)``, ``.reset()``, ``.click(head)``,
               ``.flush()``, ``.set_sample(i)``; ``.state`` {head: state}, ``.alphas()`` {head: alpha}, ``.mfr`` /
               ``.base_mfr`` (proportion dicts: rate, lo, hi, k, n), ``.summary`` / ``.base_summary``; readouts
               ``.mfr_label`` (``mf-mfr``), ``.answer_label`` (``mf-answer``), buttons ``mf-head-L{l}H{h}``
HEAD_STATES    ("normal", "blocked", "amplified")

Every MFR and answer flag is ``mfutils.measure.follow.follows`` (``common.follow_flags``) under the board's
head scaling, so the readout equals notebook 04's measurement on the same batch.

Example::

    hb = head_board(mm, ident["scores"], failed, test[:64], ident["identified"])
    hb.block(hb.identified); hb.mfr["rate"], hb.base_mfr["rate"]
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import numpy as np
import torch

from mfutils.data.sample import Sample
from mfutils.measure.follow import Head
from mfutils.measure.prepared import prepare
from mfutils.measure.stats import proportion
from mfutils.model.hooks import check_head, scale_heads
from mfutils.model.loading import MLLM
from mfutils.present.widgets.common import (BUSY, Debounce, Forwards, answer_summary, busy, busy_label, follow_flags,
                                            margin_text, readout, sample_dropdown)

__all__ = ["head_board", "HeadBoard", "HEAD_STATES"]

HEAD_STATES = ("normal", "blocked", "amplified")


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

    def __init__(self, mm: MLLM, scores: Any, samples: Sequence[Sample], batch: Sequence[Sample],
                 identified: Sequence[Head] | None = None, alpha: float = 4.0, debounce_s: float = 0.3,
                 batch_size: int = 64, score_source: str = "head score of notebook 03") -> None:
        from mfutils.study.selection import top_heads

        self.mm, self.samples, self.batch = mm, list(samples), list(batch)
        L, H = mm.n_layers, mm.n_heads
        self.scores = np.asarray(torch.as_tensor(scores, dtype=torch.float32).cpu().numpy(), dtype=float)
        if self.scores.shape != (L, H):
            raise ValueError(f"scores must be [n_layers, n_heads] = [{L}, {H}] for {mm.name!r}, got "
                             f"{list(self.scores.shape)}: pass the head scores of this model (notebook 03)")
        if not self.batch:
            raise ValueError("head_board needs a non-empty fixed batch of conflict samples for its MFR readout")
        self.identified = [(int(l), int(h)) for l, h in (identified if identified is not None else top_heads(self.scores))]
        self.forwards = Forwards(mm, self.samples)
        self._state: dict[Head, str] = {}
        self._flag_cache: dict[tuple[Any, ...], torch.Tensor] = {}
        self.n_batch_forwards = 0
        self._data = prepare(mm, self.batch, batch_size)         # encoded once, every head setting reuses it
        self.sample = sample_dropdown(self.samples)
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
        self.mfr_label = readout("mf-mfr")
        self.answer_label = readout("mf-answer")
        self.busy_label, self.busy, self.error = busy_label(), False, None
        self.mfr: dict[str, Any] = {}
        self.base_mfr: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}
        self.base_summary: dict[str, Any] = {}
        legend = widgets.HTML(
            f"<div style='font-size:12px'>colour: {html.escape(score_source)} (red supports following the instruction, "
            "blue opposes; sqrt scale); click: normal &rarr; <b>\u2715 blocked</b> (alpha 0) &rarr; "
            "<b>\u25b2 amplified</b> (alpha slider) &rarr; normal; outlined in green: the identified heads</div>")
        self._debounced = Debounce(self._update, debounce_s)
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
        self.busy_label.value = BUSY
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
    def _flags(self, alphas: Mapping[Head, float], positions: str) -> torch.Tensor:
        """BoolTensor [len(batch)]: the fixed batch's follow flags under ``alphas`` (each setting computed once)."""
        key = (tuple(sorted(alphas.items())), positions if alphas else "all")
        if key not in self._flag_cache:
            self._flag_cache[key] = follow_flags(self.mm, self._data, alphas, positions=positions)
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
        fw = self.forwards
        with busy(self):
            base_all = self._rates(self._flags({}, "all"))
            now = self._rates(self._flags(alphas, positions))
            self.base_mfr, self.mfr = base_all["all"], now["all"]
            t, base = fw.targets(i), fw.base(i)
            if alphas:
                with scale_heads(self.mm, alphas, positions=fw.enc(i).groups["last"] if positions == "last" else None):
                    logits = fw.logits(i)
                followed = fw.followed(i, heads=alphas, positions=positions)
            else:
                logits, followed = base, fw.base_followed(i)
            self.base_summary = answer_summary(self.mm, s, base, fw.base_followed(i), t)
            self.summary = answer_summary(self.mm, s, logits, followed, t)
            n_b = sum(st == "blocked" for st in self._state.values())
            n_a = len(self._state) - n_b
            setting = (f"{n_b} blocked, {n_a} amplified x{float(self.alpha.value):.1f}"
                       f" ({'every position' if positions == 'all' else 'answer position only'})") if alphas else "no head changed"
            per = "".join(f"<div>&nbsp;&nbsp;{c}: {_rate_text(now[c])} (unhooked {_rate_text(base_all[c])})</div>"
                          for c in ("follow_image", "follow_text") if c in now)
            self.mfr_label.value = (f"<div><b>MFR {_rate_text(self.mfr)}</b> with {html.escape(setting)}; "
                                    f"unhooked {_rate_text(self.base_mfr)}</div>{per}")
            self.answer_label.value = (
                f"<div><b>sample {i}</b> ({html.escape(s.category)}): {html.escape(margin_text(self.summary))}</div>"
                f"<div>unhooked: {html.escape(margin_text(self.base_summary))}</div>")


def head_board(mm: MLLM, scores: Any, samples: Sequence[Sample], batch: Sequence[Sample],
               identified: Sequence[Head] | None = None, alpha: float = 4.0, debounce_s: float = 0.3,
               score_source: str = "head score of notebook 03") -> HeadBoard:
    """A layer x head grid of buttons coloured by ``scores`` ([n_layers, n_heads], notebook 03); a click cycles
    a head normal -> blocked (alpha 0) -> amplified (alpha slider) -> normal through ``hooks.scale_heads``.

    Readouts: MFR on the fixed ``batch`` (world samples; rate = k/n with a Wilson 95% interval, overall and per
    instruction; each head setting is computed once and cached) and the answer of the sample chosen from
    ``samples``. ``identified`` (default: ``study.selection.top_heads(scores)``) are outlined; ``score_source`` names the
    scores in the legend. Clicks recompute after a ``debounce_s`` pause on the kernel's event loop;
    ``set_state``/``block``/``amplify``/``reset`` recompute at once.

    Example::

        hb = head_board(mm, ident["scores"], failed, test[:64], ident["identified"])
        hb.block(hb.identified); hb.mfr["rate"], hb.base_mfr["rate"]
    """
    return HeadBoard(mm, scores, samples, batch, identified, alpha, debounce_s, score_source=score_source)
