"""Headless tests of mfutils.present.widgets (one module per explorer): set widget values as a user would, assert on what changed.

The explorers run on the shipped tiny model and a few held-out samples; every readout is checked against the
library function it shows (knockout margins, measure.follow.follows), and no hook may stay on the model.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from mfutils.present.widgets.attention import attention_view
from mfutils.present.widgets.board import head_board
from mfutils.present.widgets.browser import sample_browser
from mfutils.present.widgets.common import Debounce
from mfutils.present.widgets.knockout import knockout_explorer
from mfutils.model.groups import encode
from mfutils.model.hooks import active_hooks, knockout
from mfutils.measure.answers import answer_logits, targets_for
from mfutils.measure.follow import follows
from mfutils.measure.margins import instructed_wins, margins
from mfutils.model.loading import load_model
from mfutils.data.world import make_split


@pytest.fixture(scope="module")
def mm():
    return load_model("tiny")


@pytest.fixture(scope="module")
def samples():
    return make_split("test", 8)


@pytest.fixture(scope="module")
def batch():
    return make_split("test", 24)


def test_sample_browser_shows_the_chosen_sample(mm, samples) -> None:
    sb = sample_browser(mm, samples)
    first_image, first_tokens = sb.image.value, sb.tokens.value
    sb.sample.value = 1                                       # as the dropdown would
    assert sb.error is None
    assert sb.image.value != first_image and sb.tokens.value != first_tokens
    s = samples[1]
    assert s.prompt.text("instruction") in sb.answers.value and s.answer in sb.answers.value
    assert set(sb.probabilities) == set(s.candidates)
    with torch.no_grad():
        logits = answer_logits(mm, encode(mm, [s.prompt]))[0]
    p = torch.softmax(logits.float(), -1)
    t = targets_for(mm, [s])
    for c, i in zip(s.candidates, t.cand[0]):
        assert sb.probabilities[c] == pytest.approx(float(p[i]), abs=1e-6)
    assert sb.summary["margin"] == pytest.approx(float(margins(logits[None], t)[0]), abs=1e-5)
    assert active_hooks(mm) == 0


def test_knockout_explorer_margin_moves_when_an_edge_is_cut(mm, samples) -> None:
    ex = knockout_explorer(mm, samples, edge=("instruction", "last"), window=(3, 6))
    label_before, margin_before = ex.margin_label.value, ex.margin
    ex.window.value = (0, 0)                                  # as the slider would, on release
    assert ex.error is None
    assert ex.margin != margin_before and ex.margin_label.value != label_before
    assert f"{ex.margin:+.3f}" in ex.margin_label.value
    # the readout equals a direct knockout of the same edge
    enc = encode(mm, [samples[0].prompt])
    T = enc.groups.shape[1]
    block = (enc.groups["last"][:, :, None] & enc.groups["instruction"][:, None, :]) & ~torch.eye(T, dtype=torch.bool)
    with knockout(mm, block, [0]), torch.no_grad():
        direct = margins(answer_logits(mm, enc), targets_for(mm, [samples[0]]))
    assert ex.margin == pytest.approx(float(direct[0]), abs=1e-5)
    # the unhooked forward is cached: changing the edge and the window does not rerun it
    ex.set_edge("image", "last")
    ex.set_window(0, mm.n_layers - 1)
    assert ex.forwards.n_base_forwards == 1 and ex.base_margin == pytest.approx(ex.base_summary["margin"])
    ex.sample.value = 2
    assert ex.forwards.n_base_forwards == 2
    assert active_hooks(mm) == 0


def test_knockout_explorer_absent_group_is_a_no_op(mm, samples) -> None:
    ex = knockout_explorer(mm, samples)
    ex.set_edge("system", "last")                             # test samples have no system prompt
    assert ex.n_cut == 0 and ex.margin == ex.base_margin
    assert "nothing to cut" in ex.margin_label.value
    with pytest.raises(ValueError, match="unknown token group"):
        ex.set_edge("pictures", "last")


def test_head_board_click_cycles_state_and_moves_mfr(mm, samples, batch) -> None:
    ident = [(0, 1), (0, 3), (0, 4)]
    scores = torch.zeros(mm.n_layers, mm.n_heads)
    hb = head_board(mm, scores, samples, batch, identified=ident)
    assert hb.mfr == hb.base_mfr and hb.state == {}
    shown = [w for w in hb.grid.children if w in hb.buttons.values()]
    assert len(shown) == mm.n_layers * mm.n_heads                                      # every head is on the grid
    assert {h for h, b in hb.buttons.items() if "mf-identified" in b._dom_classes} == set(ident)
    assert f"{hb.base_mfr['k']}/{hb.base_mfr['n']} samples" in hb.mfr_label.value      # rates carry their counts
    label = hb.mfr_label.value
    head = ident[0]
    hb.buttons[head].click()                                  # no event loop here: recomputes at once
    assert hb.state == {head: "blocked"} and "mf-blocked" in hb.buttons[head]._dom_classes
    assert hb.mfr_label.value != label
    assert hb.mfr["k"] == int(follows(mm, batch, heads=[head], alpha=0.0).sum())
    hb.buttons[head].click()
    assert hb.state == {head: "amplified"} and "mf-amplified" in hb.buttons[head]._dom_classes
    assert hb.alphas() == {head: hb.alpha.value}
    hb.alpha.value = 8.0                                      # the slider recomputes with the new alpha
    assert hb.mfr["k"] == int(follows(mm, batch, heads=[head], alpha=8.0).sum())
    hb.buttons[head].click()
    assert hb.state == {} and hb.mfr == hb.base_mfr and "mf-normal" in hb.buttons[head]._dom_classes
    hb.block(ident)
    assert hb.mfr["k"] == int(follows(mm, batch, heads=ident, alpha=0.0).sum())
    assert hb.mfr["k"] < hb.base_mfr["k"]                     # the tiny model's layer-0 heads carry following
    assert hb.summary["margin"] != hb.base_summary["margin"]  # the chosen sample's answer moved too
    hb.reset()
    assert hb.state == {} and hb.mfr == hb.base_mfr
    assert active_hooks(mm) == 0


def test_head_board_rejects_scores_of_another_shape(mm, samples, batch) -> None:
    with pytest.raises(ValueError, match="scores must be"):
        head_board(mm, torch.zeros(2, 3), samples, batch)


def test_debounce_coalesces_a_burst_on_the_event_loop() -> None:
    calls: list[int] = []

    async def burst() -> None:
        d = Debounce(lambda: calls.append(1), wait_s=0.05)
        for _ in range(5):
            d()
        assert d.pending and calls == []
        await asyncio.sleep(0.2)
        assert not d.pending
        d()
        d.flush()                                             # a pending call runs at once when flushed
        assert not d.pending

    asyncio.run(burst())
    assert calls == [1, 1]
    Debounce(lambda: calls.append(2), wait_s=0.05)()  # no running loop: immediate
    assert calls == [1, 1, 2]


def test_attention_view_map_is_causal_and_restores_sdpa(mm, samples) -> None:
    av = attention_view(mm, samples, layer=0, head=1)
    a = av.attention
    assert a.shape[0] == a.shape[1] == encode(mm, [samples[0].prompt]).groups.shape[1]
    assert np.allclose(a.sum(-1), 1, atol=1e-5) and np.allclose(np.triu(a, 1), 0)
    assert sum(av.group_shares.values()) == pytest.approx(1, abs=1e-5)
    assert mm.attn_implementation == "sdpa"
    image = av.image.value
    av.head.value = 2                                         # cached: no second eager forward
    assert av.image.value != image and av.n_eager_forwards == 1
    av.set(layer=3, head=-1)
    assert np.allclose(av.attention, av.maps(0)[3].mean(0).numpy())
    assert av.error is None and mm.attn_implementation == "sdpa" and active_hooks(mm) == 0


def test_builders_return_widgets_without_displaying(mm, samples, batch, capsys) -> None:
    import ipywidgets

    built = [sample_browser(mm, samples[:2]), knockout_explorer(mm, samples[:2]),
             head_board(mm, torch.zeros(mm.n_layers, mm.n_heads), samples[:2], batch[:4]),
             attention_view(mm, samples[:2])]
    assert all(isinstance(w, ipywidgets.VBox) for w in built)
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="at least one sample"):
        sample_browser(mm, [])


def test_knockout_explorer_groups_come_from_the_edge_registry(mm, samples) -> None:
    from mfutils.data.prompts import GROUP_NAMES
    from mfutils.model.edges import edge_groups
    from mfutils.present.widgets.knockout import SOURCE_GROUPS, TARGET_GROUPS

    src, dst = edge_groups("src"), edge_groups("dst")
    assert SOURCE_GROUPS[:len(src)] == src and TARGET_GROUPS[:len(dst)] == dst
    assert set(SOURCE_GROUPS) == set(src) | (set(GROUP_NAMES) - {"last"})
    assert set(TARGET_GROUPS) == set(dst) | set(GROUP_NAMES)
    ex = knockout_explorer(mm, samples[:2])
    assert tuple(ex.src.options) == SOURCE_GROUPS and tuple(ex.dst.options) == TARGET_GROUPS


def test_answer_readouts_are_the_follows_flags(mm, samples) -> None:
    ex = knockout_explorer(mm, samples, edge=("instruction", "last"), window=(0, 0))
    for i in range(3):
        ex.set_sample(i)
        assert ex.error is None
        s = samples[i]
        cut = bool(follows(mm, [s], knockout=("instruction->last", [0]))[0])
        assert ex.summary["follows"] == cut and ex.base_summary["follows"] == bool(follows(mm, [s])[0])
        # and the flag agrees with the distribution shown beside it (the same knockout, by hand)
        enc = encode(mm, [s.prompt])
        T = enc.groups.shape[1]
        block = (enc.groups["last"][:, :, None] & enc.groups["instruction"][:, None, :]) & ~torch.eye(T, dtype=torch.bool)
        with knockout(mm, block, [0]), torch.no_grad():
            assert bool(instructed_wins(answer_logits(mm, enc), targets_for(mm, [s]))[0]) == cut
    assert active_hooks(mm) == 0


def test_head_board_blocks_and_amplifies_at_once(mm, samples, batch) -> None:
    from mfutils.measure.prepared import prepare
    from mfutils.model.hooks import scale_heads

    hb = head_board(mm, torch.zeros(mm.n_layers, mm.n_heads), samples, batch)
    for positions in ("all", "last"):
        hb.positions.value = positions
        hb.set_state((0, 1), "blocked")
        hb.set_state((0, 3), "amplified")
        assert hb.error is None and hb.alphas() == {(0, 1): 0.0, (0, 3): hb.alpha.value}
        flags = torch.zeros(len(batch), dtype=torch.bool)
        for b in prepare(mm, batch).batches:                # the same per-head alphas, by hand
            with scale_heads(mm, hb.alphas(), positions=b.enc.groups["last"] if positions == "last" else None), \
                    torch.no_grad():
                flags[b.index] = instructed_wins(answer_logits(mm, b.enc), b.targets).cpu()
        assert hb.mfr["k"] == int(flags.sum())
        enc = encode(mm, [samples[0].prompt])                # the chosen sample's answer flag, by hand
        with scale_heads(mm, hb.alphas(), positions=enc.groups["last"] if positions == "last" else None), \
                torch.no_grad():
            assert hb.summary["follows"] == bool(instructed_wins(answer_logits(mm, enc), targets_for(mm, samples[:1]))[0])
        hb.reset()
    assert active_hooks(mm) == 0
