"""Head scores, head sets and the blocking/amplification measures of mfutils.study (notebooks 03-06)."""

from __future__ import annotations

from typing import Any

import json
import math

import numpy as np
import pytest
import torch

from mfutils.measure import follow
from mfutils.measure.follow import follows
from mfutils.measure.prepared import prepare
from mfutils.measure.stats import relative_drop, spread
from mfutils.study import scoring, selection
from mfutils.study.amplification import amplification_experiment
from mfutils.study.blocking import block_summary
from mfutils.study.identification import identification_doc, identify_heads, load_identification
from mfutils.study.results import write_results
from mfutils.model.groups import encode
from mfutils.model.hooks import active_hooks, scale_heads
from mfutils.measure.answers import answer_logits, targets_for
from mfutils.measure.margins import margins
from mfutils.model.loading import MLLM, random_model
from mfutils.data.sample import Sample
from mfutils.data.world import make_split


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return make_split("identify", 6)


def direct_drop(mm: MLLM, samples: list[Sample], head: tuple[int, int]) -> float:
    """Mean margin drop with ``head`` blocked at the answer position, one batched full forward each way."""
    enc = encode(mm, [s.prompt for s in samples])
    t = targets_for(mm, samples)
    with torch.no_grad():
        m0 = margins(answer_logits(mm, enc), t)
        with scale_heads(mm, {head: 0.0}, positions=enc.groups["last"]):
            m1 = margins(answer_logits(mm, enc), t)
    return float((m0 - m1).mean())


# ------------------------------------------------------------------------------------------------
# Scores
# ------------------------------------------------------------------------------------------------
def test_exhaustive_score_equals_direct_computation(llava: MLLM, samples: list[Sample]) -> None:
    data = prepare(llava, samples, 4)                                                   # 2 batches, padded
    scores = scoring.head_scores_exhaustive(llava, data, progress=False)
    assert scores.shape == (llava.n_layers, llava.n_heads)
    assert data.fast_path == "prefix-reuse"
    for head in [(0, 1), (2, 3), (3, 0)]:
        assert float(scores[head]) == pytest.approx(direct_drop(llava, samples, head), abs=1e-5)
    assert float(scores[2, 3]) == pytest.approx(scoring.head_score_reference(llava, samples[:6], (2, 3)), abs=1e-5)
    per = scoring.head_scores_exhaustive(llava, prepare(llava, samples, 3), progress=False, per_sample=True)
    assert per.shape == (len(samples), llava.n_layers, llava.n_heads)
    assert torch.allclose(per.mean(0), scores, atol=1e-5)


def test_exhaustive_falls_back_to_full_forwards_on_qwen(samples: list[Sample]) -> None:
    mm = random_model("qwen2_5_vl", n_layers=2, seed=1)
    scores = scoring.head_scores_exhaustive(mm, samples[:3], batch_size=3, progress=False)
    assert float(scores[1, 2]) == pytest.approx(direct_drop(mm, samples[:3], (1, 2)), abs=1e-5)
    assert active_hooks(mm) == 0


def test_attribution_equals_autograd_gradient_times_activation(llava: MLLM, samples: list[Sample]) -> None:
    attr = scoring.head_scores_attribution(llava, samples, batch_size=4, progress=False)
    assert attr.shape == (llava.n_layers, llava.n_heads) and torch.isfinite(attr).all()
    # d m / d alpha at alpha = 1, where alpha scales head (2, 1) at the answer position, is a_h . dm/da_h
    layer, head, hd = 2, 1, llava.head_dim
    enc = encode(llava, [s.prompt for s in samples])
    t = targets_for(llava, samples)
    alpha = torch.ones((), requires_grad=True)

    def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0]
        where = torch.zeros(x.shape, dtype=torch.bool)
        where[:, -1, head * hd:(head + 1) * hd] = True        # the head's slice at the answer position
        return (torch.where(where, x * alpha, x),)

    handle = llava.o_proj(layer).register_forward_pre_hook(hook)
    try:
        m = margins(answer_logits(llava, enc), t).mean()
        (grad,) = torch.autograd.grad(m, [alpha])
    finally:
        handle.remove()
    assert float(attr[layer, head]) == pytest.approx(float(grad), rel=1e-4, abs=1e-6)
    assert all(p.grad is None for p in llava.model.parameters())     # no gradient left on the weights


def test_attribution_ranks_heads_like_exhaustive(llava: MLLM, samples: list[Sample]) -> None:
    data = prepare(llava, samples, 6)
    ex = scoring.head_scores_exhaustive(llava, data, progress=False)
    attr = scoring.head_scores_attribution(llava, data, progress=False)
    agree = selection.rank_agreement(ex, attr, share=0.25)
    assert agree["spearman"] > 0.5          # first order is close for a random model's small effects
    assert 0.0 <= agree["top_overlap"] <= 1.0


def test_empty_sample_sets_give_nan_not_errors(llava: MLLM) -> None:
    assert torch.isnan(scoring.head_scores_exhaustive(llava, [], progress=False)).all()
    assert torch.isnan(scoring.head_scores_attribution(llava, [], progress=False)).all()
    flags = follows(llava, [])
    assert flags.shape == (0,) and flags.dtype == torch.bool
    summary = block_summary([], flags)
    assert summary["all"]["n"] == 0 and math.isnan(summary["follow_image"]["rate"])
    assert math.isnan(relative_drop(flags, flags)["mean"])
    doc = amplification_experiment(llava, [], [], [(0, 0)], alphas=[1, 2], n_random=2, progress=False).to_doc()
    assert doc["n_failed"] == 0 and doc["arbitration"]["n"] == 0 and doc["best"]["alpha"] is None
    assert math.isnan(doc["identified"]["recovery"][1]["rate"])
    held = doc["held_out"]                                   # A2 on no failed samples: nothing chosen, nothing scored
    assert held["n_evaluation"] == held["n_selection"] == 0 and held["alpha"] is None
    assert math.isnan(held["recovery"]["rate"]) and math.isnan(held["random"]["empirical_p"]["p"])


# ------------------------------------------------------------------------------------------------
# Head sets
# ------------------------------------------------------------------------------------------------
def test_top_heads_and_agreement() -> None:
    scores = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    assert selection.n_top(8, 8, 0.05) == 3 and selection.n_top(8, 8, 0.01) == 1 and selection.n_top(8, 8, 0.1) == 6
    assert selection.top_heads(scores, 0.05) == [(7, 7), (7, 6), (7, 5)]
    scores[0, 0] = float("nan")
    assert (0, 0) not in selection.top_heads(scores, 1.0)[:63]
    a = np.random.default_rng(0).normal(size=(4, 5))
    assert selection.rank_agreement(a, a)["spearman"] == pytest.approx(1.0)
    assert selection.rank_agreement(a, -a)["spearman"] == pytest.approx(-1.0)
    assert selection.rank_agreement(a, a, 0.2)["top_overlap"] == 1.0
    assert selection.rank_agreement(a, -a, 0.2)["top_overlap"] == 0.0
    none = selection.rank_agreement(np.full((4, 5), np.nan), a)
    assert math.isnan(none["spearman"]) and math.isnan(none["top_overlap"])


def test_random_head_sets_sizes_reproducibility_and_exclusion() -> None:
    sets = selection.random_head_sets(8, 8, k=3, n_sets=10, seed=0)
    assert len(sets) == 10 and all(len(s) == 3 == len(set(s)) for s in sets)
    assert all(0 <= l < 8 and 0 <= h < 8 for s in sets for l, h in s)
    assert sets == selection.random_head_sets(8, 8, k=3, n_sets=10, seed=0)
    assert sets != selection.random_head_sets(8, 8, k=3, n_sets=10, seed=1)
    excluded = [(l, h) for l in range(8) for h in range(8) if (l + h) % 2 == 0]
    kept = selection.random_head_sets(8, 8, k=5, n_sets=20, seed=3, exclude=excluded)
    assert not {hd for s in kept for hd in s} & set(excluded)
    with pytest.raises(ValueError, match="cannot draw"):
        selection.random_head_sets(2, 2, k=3, n_sets=1, seed=0, exclude=[(0, 0), (1, 1)])


# ------------------------------------------------------------------------------------------------
# MFR and summaries
# ------------------------------------------------------------------------------------------------
def test_mfr_with_alpha_one_equals_baseline(llava: MLLM, samples: list[Sample]) -> None:
    base = follows(llava, samples, batch_size=4)
    data = prepare(llava, samples, 4)
    for positions in ("all", "last"):
        same = follows(llava, data, heads=[(0, 1), (3, 2)], alpha=1.0, positions=positions)
        assert torch.equal(same, base)
    with torch.no_grad():
        enc = encode(llava, [s.prompt for s in samples])
        logits = answer_logits(llava, enc)
        with scale_heads(llava, {(0, 1): 1.0, (3, 2): 1.0}):
            assert torch.equal(answer_logits(llava, enc), logits)
    with pytest.raises(ValueError, match="positions"):
        follows(llava, data, positions="first")
    with pytest.raises(ValueError, match="out of range"):
        follows(llava, data, heads=[(9, 0)])


@pytest.mark.parametrize("positions", ["all", "last"])
def test_prefix_reuse_equals_full_forwards(llava: MLLM, samples: list[Sample], positions: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    data = prepare(llava, samples, 4)
    jobs = [((), 1.0), (((1, 2), (3, 0)), 0.0), (((2, 1),), 4.0), (((3, 3),), 0.0)]

    def full(batch: object, hs: tuple, alpha: float) -> torch.Tensor:
        pos = None if positions == "all" else batch.enc.groups["last"]
        with torch.no_grad(), scale_heads(llava, {h: alpha for h in hs}, positions=pos):
            return answer_logits(llava, batch.enc).float()

    for batch in data.batches:
        got = list(follow.scaled_logits(llava, batch, jobs, positions)[1])
        for (hs, alpha), logits in zip(jobs, got):
            assert torch.allclose(logits, full(batch, hs, alpha), atol=1e-5)
    cache = follow.FlagCache(llava, data, positions)
    cache.fill([(hs, a) for hs, a in jobs], "", progress=False)
    for hs, alpha in jobs:
        assert torch.equal(cache(list(hs), alpha), follows(llava, data, heads=list(hs), alpha=alpha, positions=positions))
    monkeypatch.setattr(follow, "checked_trace", lambda mm, enc, rows_from_last: (None, "full forwards (test)"))
    fallback = follow.FlagCache(llava, data, positions)
    assert torch.equal(fallback(list(jobs[1][0]), 0.0), cache(list(jobs[1][0]), 0.0))
    assert active_hooks(llava) == 0


def test_blocking_every_head_changes_answers_and_order_is_kept(llava: MLLM, samples: list[Sample]) -> None:
    every = [(l, h) for l in range(llava.n_layers) for h in range(llava.n_heads)]
    sorted_batches = follows(llava, prepare(llava, samples, 2), heads=every, alpha=0.0)
    one_by_one = torch.cat([follows(llava, [s], heads=every, alpha=0.0) for s in samples])
    assert torch.equal(sorted_batches, one_by_one)


def test_relative_drop_and_spread() -> None:
    base = np.array([1, 1, 1, 1, 0, 1, 1, 1, 1, 1], dtype=bool)
    blocked = np.array([1, 0, 1, 0, 0, 1, 0, 1, 0, 1], dtype=bool)
    rd = relative_drop(base, blocked, n_boot=200)
    assert rd["mean"] == pytest.approx((0.9 - 0.5) / 0.9) and rd["n"] == 10
    assert rd["lo"] <= rd["mean"] <= rd["hi"]
    assert math.isnan(relative_drop(np.zeros(4, bool), np.zeros(4, bool))["mean"])
    sp = spread([0.5, 0.7, float("nan")])
    assert sp["mean"] == pytest.approx(0.6) and sp["sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert math.isnan(spread([0.3])["sd"])


def test_identification_doc_and_json_round_trip(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MF_OUT", str(tmp_path))
    ex = torch.tensor([[0.0, 2.0, -1.0, 0.5], [1.0, float("nan"), 0.0, 0.5]])
    doc = identification_doc("random:llava", ex, ex * 0.9, share=0.25, n_identify=5).to_doc()
    assert doc["k"] == 2 and doc["identified"] == [[0, 1], [1, 0]]
    assert doc["top_share_of_score"] == pytest.approx(3.0 / 4.0)
    assert doc["per_layer_top_count"] == [1, 1] and doc["spearman"] == pytest.approx(1.0)
    path = write_results(doc, "random:llava", "03_head_identification")
    assert json.loads(path.read_text())["scores_exhaustive"][1][1] is None      # NaN -> null
    back = load_identification("random:llava")
    assert back["identified"] == [(0, 1), (1, 0)] and torch.isnan(back["scores_exhaustive"][1, 1])
    with pytest.raises(FileNotFoundError, match="run 03 first"):
        load_identification("tiny")


# ------------------------------------------------------------------------------------------------
# Hooks never leak
# ------------------------------------------------------------------------------------------------
def test_hooks_are_removed_after_an_exception(llava: MLLM, samples: list[Sample],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    before = active_hooks(llava)
    with pytest.raises(RuntimeError, match="boom"):
        with scoring._o_proj_inputs(llava) as acts:
            answer_logits(llava, encode(llava, [samples[0].prompt]))
            assert len(acts) == llava.n_layers and active_hooks(llava) == before + llava.n_layers
            raise RuntimeError("boom")
    assert active_hooks(llava) == before

    calls = {"n": 0}
    real = scoring.margins

    def flaky(*args: object, **kwargs: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "margins", flaky)
    for run in (lambda: scoring.head_scores_exhaustive(llava, samples, batch_size=3, progress=False),
                lambda: scoring.head_scores_attribution(llava, samples, batch_size=2, progress=False)):
        calls["n"] = 0
        with pytest.raises(RuntimeError, match="boom"):
            run()
        assert active_hooks(llava) == before


# ------------------------------------------------------------------------------------------------
# Fast paths: prefix reuse, attribution + verification, the identification entry point
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "qwen2_5_vl"])
def test_prefix_scores_equal_full_forward_scores(arch: str, samples: list[Sample]) -> None:
    mm = random_model(arch, n_layers=3, seed=2)
    data = prepare(mm, samples, 4)
    fast = scoring.head_scores_exhaustive(mm, data, progress=False)
    assert data.fast_path == "prefix-reuse"
    full = scoring.head_scores_exhaustive(mm, data, progress=False, method="full")
    assert torch.allclose(fast, full, atol=1e-5) and full.abs().max() > 1e-3
    with pytest.raises(ValueError, match="method"):
        scoring.head_scores_exhaustive(mm, samples, method="kv")


def test_fast_scores_verify_the_top_candidates(llava: MLLM, samples: list[Sample]) -> None:
    data = prepare(llava, samples, 4)
    ex = scoring.head_scores_exhaustive(llava, data, progress=False)
    attr = scoring.head_scores_attribution(llava, data, progress=False)
    share = 0.1                                        # k = 2 of 16 heads: 6 candidates
    fast = scoring.head_scores_fast(llava, data, share=share, progress=False)
    L, H = llava.n_layers, llava.n_heads
    k = selection.n_top(L, H, share)
    candidates = selection.ranked(attr)[:3 * k]
    assert torch.allclose(fast.attribution, attr, atol=1e-6)
    assert all(fast.verified[hd] for hd in candidates) and int(fast.verified.sum()) >= 3 * k
    v = fast.verified
    assert torch.allclose(fast.scores[v], ex[v], atol=1e-5)                  # verified: the exact score
    assert torch.equal(fast.scores[~v], attr[~v])                            # the others: attribution
    assert all(fast.verified[hd] for hd in selection.top_heads(fast.scores, share))
    assert 0 < fast.forward_equivalents and fast.rounds >= 1
    # verifying every head reproduces the exhaustive table
    every = scoring.head_scores_fast(llava, data, share=share, factor=L * H / k, progress=False)
    assert bool(every.verified.all()) and torch.allclose(every.scores, ex, atol=1e-5)
    none = scoring.head_scores_fast(llava, [], progress=False)
    assert torch.isnan(none.scores).all() and not none.verified.any()


def test_identify_heads_document(llava: MLLM, samples: list[Sample], tmp_path: object,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MF_OUT", str(tmp_path))
    doc = identify_heads(llava, samples, "random:llava", share=0.1, batch_size=4, progress=False,
                         method="fast", check_exhaustive=True).to_doc()
    assert doc["method"] == "fast" and doc["k"] == 2 and len(doc["identified"]) == 2
    ex = torch.tensor(doc["scores_exhaustive"])
    cmp = doc["fast_vs_exhaustive"]
    assert cmp["top_exhaustive"] == [list(h) for h in selection.top_heads(ex, 0.1)]
    assert cmp["top_fast"] == doc["identified"] and cmp["equal"] == (set(map(tuple, cmp["top_fast"]))
                                                                     == set(map(tuple, cmp["top_exhaustive"])))
    verified = torch.tensor(doc["scores_verified"])
    assert all(verified[l, h] for l, h in doc["identified"])
    write_results(doc, "random:llava", "03_head_identification")
    back = load_identification("random:llava", llava)
    assert back["identified"] == [tuple(h) for h in doc["identified"]]
    assert selection.top_heads(back["scores"], 0.1) == back["identified"]
    plain = identify_heads(llava, samples, "random:llava", share=0.1, progress=False).to_doc()      # the default
    assert plain["method"] == "exhaustive" and all(map(all, plain["scores_verified"]))
    assert plain["scores"] == plain["scores_exhaustive"] and "fast_vs_exhaustive" not in plain
    reference = scoring.head_scores_exhaustive(llava, samples, progress=False).double()
    assert torch.allclose(torch.tensor(plain["scores"], dtype=torch.float64), reference, atol=1e-6)
    with pytest.raises(ValueError, match="method"):
        identify_heads(llava, samples, "random:llava", method="attribution")


def test_head_loops_survive_out_of_memory(llava: MLLM, samples: list[Sample], small_memory: Any) -> None:
    data = prepare(llava, samples, 6)
    ex = scoring.head_scores_exhaustive(llava, data, progress=False)
    attr = scoring.head_scores_attribution(llava, data, progress=False)
    small_memory(scoring)
    with pytest.warns(RuntimeWarning, match="out of memory at batch size 6; retrying at 3"):
        again = scoring.head_scores_attribution(llava, data, progress=False)
    assert torch.allclose(again, attr, atol=1e-5)
    with pytest.warns(RuntimeWarning, match="out of memory at batch size 6; retrying at 3"):
        full = scoring.head_scores_exhaustive(llava, data, progress=False, method="full")
    assert torch.allclose(full, ex, atol=1e-5)


def test_identify_heads_holds_notebook_03s_document(llava: MLLM, samples: list[Sample]) -> None:
    data = prepare(llava, samples, 4)
    ex = scoring.head_scores_exhaustive(llava, data, progress=False)
    attr = scoring.head_scores_attribution(llava, data, progress=False)
    fast = scoring.head_scores_fast(llava, data, share=0.1, batch_size=4, progress=False)
    ft, et = selection.top_heads(fast.scores, 0.1), selection.top_heads(ex, 0.1)
    expected = identification_doc("random:llava", ex, attr, 0.1, n_identify=len(samples)).to_doc()
    expected["attribution_verify"] = {"identified": [list(h) for h in ft], "overlap_with_exhaustive":
                                      len(set(ft) & set(et)) / len(et), "n_verified": int(fast.verified.sum()),
                                      "forward_equivalents": round(float(fast.forward_equivalents), 2)}
    doc = identify_heads(llava, samples, "random:llava", share=0.1, batch_size=4, progress=False,
                         compare_fast=True).to_doc()
    assert {k: doc[k] for k in expected} == expected and doc["fast_path"] == "prefix-reuse"
    assert list(identification_doc("m", ex, attr, 0.1, 1).to_doc())[6] == "scores_exhaustive"    # the 03 key order
