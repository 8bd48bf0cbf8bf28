"""The amended controls of notebooks 04-06 (A1, A2, A6, A7): control sets drawn without the identified heads,
empirical p-values, the held-out alpha, the training-stream overlap, and the same sets across the notebooks."""

from __future__ import annotations

import inspect
import math
from types import SimpleNamespace
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from mfutils.data.world import TRAIN_SEED, make_sample, make_samples, make_split
from mfutils.measure.stats import empirical_p
from mfutils.model.loading import MLLM
from mfutils.present import plots_heads
from mfutils.study import amplification, overlap, selection, train
from mfutils.study.amplification import amplification_experiment, choose_alpha, split_halves
from mfutils.study.blocking import block_experiment, share_counts
from mfutils.study.control import CONTROL_STREAM, against, control_sets, set_drops, sets_digest
from mfutils.study.results import jsonable
from mfutils.study.retention import ANSWER_IN_TEXT, capability_experiment


# ------------------------------------------------------------------------------------------------
# A1: the control sets and the p-value
# ------------------------------------------------------------------------------------------------
def test_control_sets_never_hold_an_identified_head_and_are_reproducible() -> None:
    ident = [(0, 1), (0, 3), (0, 4)]
    sets = control_sets(8, 8, ident, n_sets=200, seed=0)
    assert len(sets) == 200 and all(len(s) == 3 == len(set(s)) for s in sets)
    assert not {h for s in sets for h in s} & set(ident)
    assert len({h for s in sets for h in s}) == 61                  # every other head is drawn at some point
    assert sets == control_sets(8, 8, ident, n_sets=200, seed=0)
    assert sets[:50] == control_sets(8, 8, ident, n_sets=50, seed=0)  # fewer sets = the first ones
    assert sets != control_sets(8, 8, ident, n_sets=200, seed=1)
    assert sets == selection.random_head_sets(8, 8, 3, 200, [CONTROL_STREAM, 0], exclude=ident)
    assert control_sets(8, 8, ident, n_sets=5, seed=0, k=6)[0] != sets[0] and control_sets(8, 8, [], 5, 0) == []


def test_the_original_control_is_reproduced_when_nothing_is_excluded() -> None:
    # the first sets of results/tiny/04_block_heads.json before the amendments (10 sets from all heads, seed 0)
    old = selection.random_head_sets(8, 8, k=3, n_sets=10, seed=0)
    assert old[:2] == [[(4, 0), (5, 0), (6, 4)], [(0, 1), (0, 2), (0, 4)]]
    assert old == selection.random_head_sets(8, 8, k=3, n_sets=10, seed=0, exclude=[])
    assert old == selection.random_head_sets(8, 8, k=3, n_sets=10, seed=0, exclude=None)


def test_set_drops_and_the_identified_against_the_sets() -> None:
    base = np.array([1, 1, 1, 1, 1, 1, 1, 0], dtype=bool)              # MFR 7/8
    sets = [np.array([1, 1, 1, 1, 1, 1, 0, 0]), np.array([1, 1, 1, 1, 1, 1, 1, 0]), np.array([0, 0, 0, 0, 1, 1, 1, 0])]
    drops = set_drops(base, sets)
    assert drops == pytest.approx([1 / 7, 0.0, 4 / 7])
    assert all(math.isnan(d) for d in set_drops(np.zeros(3, bool), sets[:2]))
    res = against(0.5, drops)
    assert res["empirical_p"] == {"p": 0.5, "count": 1, "n": 3, "resolution": 0.25}   # (1 + 1) / (1 + 3)
    assert res["null"]["mean"] == pytest.approx(np.mean(drops)) and res["null"]["n"] == 3
    assert against(0.9, [0.0] * 199)["empirical_p"]["p"] == pytest.approx(1 / 200)


def test_share_counts_are_distinct() -> None:
    assert share_counts(8, 8, [0.01, 0.02, 0.05, 0.1]) == [(0.01, 1), (0.02, 2), (0.05, 3), (0.1, 6)]
    assert share_counts(8, 8, [0.1, 0.01]) == [(0.01, 1), (0.1, 6)]          # sorted by share
    assert [k for _, k in share_counts(32, 32, [0.01, 0.02, 0.05, 0.1])] == [10, 20, 51, 102]
    assert share_counts(1, 2, [0.1, 0.2, 0.5, 1.0]) == [(0.1, 1), (0.2, 2)]  # no more heads than exist


# ------------------------------------------------------------------------------------------------
# A2: the halves and the alpha
# ------------------------------------------------------------------------------------------------
def test_split_halves_and_choose_alpha() -> None:
    sel, ev = split_halves(147, 0)
    assert len(sel) == 73 and len(ev) == 74 and not set(sel) & set(ev) and sorted(sel + ev) == list(range(147))
    assert (sel, ev) == split_halves(147, 0) and (sel, ev) != split_halves(147, 1)
    assert split_halves(0, 0) == ([], [])
    assert choose_alpha([1, 2, 4, 8], [0.0, 0.3, 0.3, 0.1]) == 1                  # tie -> the smaller alpha
    assert choose_alpha([1, 2, 4], [float("nan"), 0.1, 0.2]) == 2
    assert choose_alpha([1, 2], [float("nan"), None]) is None


class _Cache:
    """A stand-in FlagCache: flags from a table (sample index, alpha, identified?) -> follows."""

    table: dict[tuple[int, float, bool], bool] = {}

    def __init__(self, mm: Any, data: Any, positions: str) -> None:
        self.samples = data.samples

    def fill(self, jobs: Any, desc: str, progress: bool) -> None:
        pass

    def __call__(self, heads: Any, alpha: float = 0.0) -> torch.Tensor:
        ident = [tuple(h) for h in heads] == [(0, 1)]
        return torch.tensor([self.table.get((s.index, float(alpha), ident), False) for s in self.samples])


def test_alpha_chosen_on_the_selection_half_never_sees_the_evaluation_half(monkeypatch: pytest.MonkeyPatch) -> None:
    failed = make_split("fail_pool", 20)
    sel, ev = split_halves(len(failed), 3)
    alphas = [1.0, 2.0, 4.0, 8.0]

    def table(eval_best: float) -> dict[tuple[int, float, bool], bool]:
        t: dict[tuple[int, float, bool], bool] = {}
        for j in sel:                    # selection half: alpha 2 recovers 6 of 10, alpha 4 recovers 3
            t[(failed[j].index, 2.0, True)] = sel.index(j) < 6
            t[(failed[j].index, 4.0, True)] = sel.index(j) < 3
        for j in ev:                     # evaluation half: ``eval_best`` recovers all, alpha 2 recovers 4 of 10
            t[(failed[j].index, eval_best, True)] = True
            t[(failed[j].index, 2.0, True)] = t.get((failed[j].index, 2.0, True), False) or ev.index(j) < 4
        return t

    monkeypatch.setattr(amplification, "FlagCache", _Cache)
    monkeypatch.setattr(amplification, "prepare", lambda mm, samples, bs=64: SimpleNamespace(samples=list(samples)))
    mm = SimpleNamespace(n_layers=4, n_heads=4)
    reference = _Cache(None, SimpleNamespace(samples=make_split("fail_pool", 30)[20:]), "all")
    docs = []
    for best in (4.0, 8.0):
        _Cache.table = table(best)
        docs.append(amplification._held_out(mm, failed, [(0, 1)], alphas, torch.zeros(20, dtype=torch.bool),
                                            reference, 3, "all", 64, 5, 2, False))
    for doc in docs:
        assert doc["selection"] == sel and doc["evaluation"] == ev
        assert doc["alpha"] == 2.0                                   # chosen on the selection half alone
        assert doc["selection_recovery"][1]["k"] == 6 and doc["recovery"]["k"] == 4 and doc["recovery"]["n"] == 10
        assert len(doc["random"]["recovery"]) == 5 and doc["random"]["empirical_p"]["n"] == 5
    assert docs[0]["recovery_curve"][2]["rate"] == 1.0 and docs[1]["recovery_curve"][3]["rate"] == 1.0


# ------------------------------------------------------------------------------------------------
# A6: prompts in the training stream
# ------------------------------------------------------------------------------------------------
def test_training_stream_is_read_from_the_card_and_matches_train() -> None:
    card = {"card": {"config": {"seed": 0, "steps": 1800, "batch_size": 64}}}
    assert overlap.training_stream(card)["n"] == 115200 and overlap.training_stream({}) is None
    # the stream train() draws: make_samples(batch, seed, None, start=step * batch, variant=None)
    assert "make_samples(cfg.batch_size, cfg.seed, None, start=step * cfg.batch_size, variant=None)" in \
        inspect.getsource(train.train)
    for i in (0, 7, 1000):
        s = make_sample(TRAIN_SEED, i, None, variant=None)
        assert overlap._kind(TRAIN_SEED, i) == (s.category, s.variant)


def test_in_training_is_exact_and_the_fast_path_agrees() -> None:
    n = 600
    inside = make_samples(40, TRAIN_SEED, None, start=500, variant=None)         # indices 500..539: in the stream
    outside = make_split("capability", 30)
    samples = inside + outside
    fast = overlap.in_training(samples, TRAIN_SEED, n, fast=True, progress=False)
    brute = overlap.in_training(samples, TRAIN_SEED, n, fast=False, progress=False)
    assert fast == brute and all(fast[:40])
    texts = {overlap.prompt_text(s) for s in make_samples(n, TRAIN_SEED, None, variant=None)}
    assert fast[40:] == [overlap.prompt_text(s) in texts for s in outside]
    kinds = {overlap._kind(TRAIN_SEED, i): tuple(nm for nm, _ in overlap.prompt_text(make_sample(TRAIN_SEED, i)))
             for i in range(300)}
    for i in range(300, 900):                    # the segment layout is a function of (category, variant)
        s = make_sample(TRAIN_SEED, i)
        assert kinds.get((s.category, s.variant), tuple(nm for nm, _ in overlap.prompt_text(s))) == \
            tuple(nm for nm, _ in overlap.prompt_text(s))
    summary = overlap.overlap_summary(samples, fast, {"n": n})
    assert summary["in_training"] == sum(fast) and summary["n"] == 70 and summary["stream"] == {"n": n}
    assert sum(v["n"] for v in summary["per_category"].values()) == 70


# ------------------------------------------------------------------------------------------------
# The same sets in 04, 05 and 06
# ------------------------------------------------------------------------------------------------
def test_notebooks_04_05_06_score_the_same_control_sets(llava: MLLM) -> None:
    scores = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    ident = selection.top_heads(scores, 0.2)                                # 3 of 16 heads
    test = make_split("test", 10)
    b = block_experiment(llava, test, scores, share=0.2, n_random=2, n_control=12, control_samples=6,
                         shares=[0.1, 0.2], progress=False).to_doc()
    c = b["control"]
    assert c["n_sets"] == 12 and c["n_samples"] == 6 and len(c["relative_drops"]) == 12
    assert not {tuple(h) for s in c["sets"] for h in s} & set(ident)
    finite = [d for d in c["relative_drops"] if d is not None and math.isfinite(d)]
    assert c["empirical_p"] == empirical_p(c["identified_relative_drop"]["mean"], finite)
    assert [p["k"] for p in b["share_sweep"]["points"]] == [2, 3]
    assert b["random_sets"] == [[list(h) for h in r] for r in selection.random_head_sets(4, 4, 3, 2, 0)]  # original kept
    pool = make_split("fail_pool", 10)
    a = amplification_experiment(llava, pool[:6], pool[6:], ident, alphas=[1.0, 2.0], n_random=2, n_control=8,
                                 n_control_curve=2, progress=False).to_doc()
    caps = make_split("capability", 9)                   # image_only, text_only, agree, image_only, ...
    seen = [i in (0, 1, 5) for i in range(9)]             # one seen prompt of each category
    r = capability_experiment(llava, caps, ident, n_random=2, n_control=5, seen=seen, progress=False).to_doc()
    # held out: all but the seen prompts whose text states the answer; the seen image-only prompt stays
    assert [caps[i].category for i in (0, 1, 5)] == ["image_only", "text_only", "agree"]
    assert set(ANSWER_IN_TEXT) == {"text_only", "agree"}
    assert a["held_out"]["random"]["digest"] == sets_digest(c["sets"][:8]) == sets_digest(control_sets(4, 4, ident, 8, 0))
    assert r["held_out"]["random"]["digest"] == sets_digest(c["sets"][:5]) != sets_digest(c["sets"][:6])
    assert c["digest"] == sets_digest(c["sets"])
    assert r["held_out"]["n_total"] == 7 and r["held_out"]["n"] == {"image_only": 3, "text_only": 2, "agree": 2}
    assert len(r["held_out"]["random"]["max_drops"]) == 5
    # the figures draw from these documents, also from their JSON form (NaN as null)
    for doc in (b, jsonable(b)):
        assert len(plots_heads.plot_block_figure(doc).axes) == 2
        plots_heads.plot_share_sweep(doc)
    assert len(plots_heads.plot_amplification_figure(jsonable(a)).axes) == 2
    assert len(plots_heads.plot_capability_figure(jsonable(r)).axes) == 2
    plt.close("all")
