"""Uncertainty of the head selection (notebook 03): selection stability, the top-k boundary margin and
C5's bootstrap intervals, on constructed per-sample drops with known answers; the per-sample attribution terms;
the C5 measured text and the stability figure."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from mfutils.data.sample import Sample
from mfutils.data.world import make_split
from mfutils.measure.prepared import prepare
from mfutils.model.loading import MLLM, random_model
from mfutils.present.plots_selection import plot_selection_stability
from mfutils.present.report import _tagged
from mfutils.present.rules_heads import RULES
from mfutils.study import scoring
from mfutils.study.identification import (boundary_margin, bootstrap_means, identification_doc, identify_heads,
                                          score_intervals, selection_stability)
from mfutils.study.selection import rank_agreement, top_heads

TH = {"top_share_full": 0.25, "top_share_partly": 0.10}


def _drops(n: int = 200, seed: int = 0) -> np.ndarray:
    """[n, 2, 4] per-sample drops: (0, 0) a clear winner (mean 5), (0, 1) and (0, 2) an exact tie in the full
    sample (mean 2 each, mirrored noise), the rest near 0."""
    rng = np.random.default_rng(seed)
    d = rng.normal(0.0, 0.1, size=(n, 2, 4))
    d[:, 0, 0] = 5.0 + rng.normal(0.0, 1.0, n)
    a = rng.normal(0.0, 1.0, n)
    a -= a.mean()
    d[:, 0, 1], d[:, 0, 2] = 2.0 + a, 2.0 - a
    return d


def _resample_means(x: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """The resample means the slow way: the same index draw, x[idx].mean(1)."""
    idx = np.random.default_rng(seed).integers(0, x.shape[0], size=(n_boot, x.shape[0]))
    return x[idx].mean(1)


def test_bootstrap_means_equal_the_means_of_the_resampled_rows() -> None:
    x = np.random.default_rng(1).normal(size=(30, 5))
    assert np.allclose(bootstrap_means(x, 50, seed=3), _resample_means(x, 50, 3))
    x[4, 2] = math.nan                                           # a NaN spoils only the resamples that draw it
    got, slow = bootstrap_means(x, 50, seed=3), _resample_means(x, 50, 3)
    assert np.array_equal(np.isnan(got), np.isnan(slow)) and np.allclose(got[~np.isnan(got)], slow[~np.isnan(slow)])
    assert np.isnan(bootstrap_means(np.zeros((0, 3)), 4)).all()


def test_a_clear_winner_is_selected_in_every_resample_and_a_tie_in_half() -> None:
    d = _drops()
    scores = d.mean(0)
    win = selection_stability(d, scores, k=1, n_boot=1000, seed=0)
    assert win["heads"][0]["head"] == [0, 0] and win["heads"][0]["frequency"] == 1.0
    assert win["heads"][0]["lo"] > 0.99 and win["set"]["frequency"] == 1.0
    # k = 2: the winner always, then (0, 1) and (0, 2) tie for the second place
    st = selection_stability(d, scores, k=2, n_boot=1000, seed=0)
    freq = {tuple(h["head"]): h["frequency"] for h in st["heads"]}
    assert freq[(0, 0)] == 1.0
    assert 0.4 < freq[(0, 1)] < 0.6 and freq[(0, 1)] + freq[(0, 2)] == pytest.approx(1.0)
    assert np.sum(st["frequency"]) == pytest.approx(2.0)                          # each resample picks k heads
    assert [h["rank"] for h in st["heads"]] == [1, 2, 3, 4] and [h["identified"] for h in st["heads"]] == [
        True, True, False, False]
    assert st["n"] == 200 and st["n_boot"] == 1000
    assert len(selection_stability(d, scores, k=2, n_outside=5)["heads"]) == 7


def test_selection_frequency_equals_top_heads_on_each_resample() -> None:
    d = _drops(n=40, seed=2)
    st = selection_stability(d, d.mean(0), k=2, n_boot=200, seed=5)
    means = _resample_means(d.reshape(40, -1), 200, 5).reshape(200, 2, 4)
    hits = np.zeros((2, 4))
    for m in means:
        for l, h in top_heads(m, 2 / 8):
            hits[l, h] += 1
    assert np.allclose(np.asarray(st["frequency"]), hits / 200)


def test_boundary_interval_covers_zero_for_a_tie_and_not_for_a_clear_gap() -> None:
    d = _drops()
    scores = d.mean(0)
    tie = boundary_margin(d, scores, k=2, n_boot=1000, seed=0)
    assert {tuple(tie["kth"]["head"]), tuple(tie["next"]["head"])} == {(0, 1), (0, 2)}
    diff = tie["difference"]
    assert diff["lo"] < 0 < diff["hi"] and abs(diff["value"]) < 1e-9 and diff["n"] == 200
    assert 0.4 < tie["order_frequency"]["frequency"] < 0.6
    gap = boundary_margin(d, scores, k=1, n_boot=1000, seed=0)
    assert gap["kth"]["head"] == [0, 0] and gap["difference"]["lo"] > 2.0
    assert gap["difference"]["value"] == pytest.approx(scores[0, 0] - max(scores[0, 1], scores[0, 2]))
    assert gap["order_frequency"]["frequency"] == 1.0
    assert boundary_margin(d, scores, k=8) is None                                 # every head identified


def test_score_intervals_recompute_the_statistics_on_each_resample() -> None:
    d = _drops(n=60, seed=4)
    rng = np.random.default_rng(9)
    a = d * 0.5 + rng.normal(0.0, 0.5, size=d.shape)                               # a noisy attribution
    iv = score_intervals(d, a, share=0.25, n_boot=300, seed=1)
    me = _resample_means(d.reshape(60, -1), 300, 1).reshape(300, 2, 4)
    ma = _resample_means(a.reshape(60, -1), 300, 1).reshape(300, 2, 4)

    def top_share(s: np.ndarray) -> float:
        return sum(s[l, h] for l, h in top_heads(s, 0.25)) / s[s > 0].sum()

    agree = [rank_agreement(x, y, 0.25) for x, y in zip(me, ma)]
    slow = {"top_share_of_score": [top_share(m) for m in me], "spearman": [g["spearman"] for g in agree],
            "top_overlap": [g["top_overlap"] for g in agree]}
    for key, boots in slow.items():
        assert iv[key]["lo"] == pytest.approx(np.quantile(boots, 0.025))
        assert iv[key]["hi"] == pytest.approx(np.quantile(boots, 0.975))
        assert iv[key]["n"] == 60
    full = rank_agreement(d.mean(0), a.mean(0), 0.25)
    assert iv["top_share_of_score"]["value"] == pytest.approx(top_share(d.mean(0)))
    assert iv["spearman"]["value"] == pytest.approx(full["spearman"]) and iv["top_overlap"]["k"] == 2
    assert iv["top_overlap"]["count"] == round(full["top_overlap"] * 2)
    only = score_intervals(d, None, share=0.25, n_boot=100)
    assert only["attribution_per_sample"] is False and "spearman" not in only


def test_ties_in_rank_are_averaged_as_in_rank_agreement() -> None:
    d = np.zeros((5, 2, 2))
    d[:, 0, 0], d[:, 1, 1] = 1.0, -1.0                                             # two heads tied at 0
    a = d.copy()
    a[:, 0, 1] = 0.5
    iv = score_intervals(d, a, share=0.25, n_boot=20)
    assert iv["spearman"]["lo"] == pytest.approx(rank_agreement(d.mean(0), a.mean(0))["spearman"])


def test_identification_doc_keeps_its_keys_and_adds_the_uncertainty() -> None:
    d = _drops(n=50)
    ex = torch.tensor(d.mean(0), dtype=torch.float32)
    attr = ex * 0.9
    plain = identification_doc("m", ex, attr, 0.25, n_identify=50).to_doc()
    doc = identification_doc("m", ex, attr, 0.25, n_identify=50, drops=d, attribution_drops=d * 0.9,
                             n_boot=200).to_doc()
    assert {k: doc[k] for k in plain} == plain and list(doc)[:len(plain)] == list(plain)
    assert list(doc)[len(plain):] == ["intervals", "selection_stability", "top_k_boundary"]
    assert doc["selection_stability"]["k"] == doc["k"] == 2 and doc["top_k_boundary"]["k"] == 2
    assert doc["intervals"]["top_share_of_score"]["value"] == pytest.approx(doc["top_share_of_score"])
    assert doc["intervals"]["spearman"]["value"] == doc["spearman"]
    empty = identification_doc("m", torch.full((2, 4), math.nan), torch.full((2, 4), math.nan), 0.25, 0,
                               drops=np.zeros((0, 2, 4)), attribution_drops=np.zeros((0, 2, 4))).to_doc()
    assert math.isnan(empty["selection_stability"]["heads"][0]["frequency"])
    assert math.isnan(empty["top_k_boundary"]["difference"]["lo"])
    assert math.isnan(empty["intervals"]["top_share_of_score"]["lo"])


@pytest.fixture(scope="module")
def llava_data() -> tuple[MLLM, list[Sample]]:
    """A tiny random Llava (4 layers x 4 heads) and six identification samples."""
    return random_model("llava", seed=0), make_split("identify", 6)


def test_attribution_per_sample_terms_average_to_the_scores(llava_data: tuple[MLLM, list[Sample]]) -> None:
    llava, samples = llava_data
    data = prepare(llava, samples, 4)
    attr = scoring.head_attribution(llava, data, progress=False)
    assert attr.per_sample.shape == (6, llava.n_layers, llava.n_heads) and attr.per_sample.dtype == torch.float64
    assert torch.equal(attr.scores, scoring.head_scores_attribution(llava, data, progress=False))
    assert torch.allclose(attr.per_sample.mean(0).float(), attr.scores, atol=1e-6)


def test_identify_heads_writes_the_uncertainty_only_for_exhaustive_scores(llava_data: tuple[MLLM, list[Sample]]
                                                                          ) -> None:
    llava, samples = llava_data
    doc = identify_heads(llava, samples, "random:llava", share=0.1, batch_size=4, progress=False, n_boot=100).to_doc()
    per = scoring.head_scores_exhaustive(llava, samples, progress=False, per_sample=True)
    st = doc["selection_stability"]
    assert st["n"] == 6 and st["n_boot"] == 100 and np.sum(st["frequency"]) == pytest.approx(doc["k"])
    assert [h["head"] for h in st["heads"][:doc["k"]]] == doc["identified"]
    again = selection_stability(per.double(), doc["scores"], doc["k"], n_boot=100)
    assert np.allclose(again["frequency"], st["frequency"])
    assert "spearman" in doc["intervals"] and doc["intervals"]["spearman"]["value"] == doc["spearman"]
    fast = identify_heads(llava, samples, "random:llava", share=0.1, batch_size=4, progress=False,
                          method="fast").to_doc()
    assert not {"intervals", "selection_stability", "top_k_boundary"} & set(fast)


def test_c5_text_shows_n_intervals_stability_and_boundary_with_the_same_verdict() -> None:
    base = {"n_identify": 50, "n_layers": 2, "n_heads": 4, "k": 2, "top_share_of_score": 0.3, "spearman": 0.8,
            "top_overlap": 0.5}
    rule = RULES["C5"].original
    v0, t0 = rule({"03": _tagged(base, "03.json")}, TH)
    assert v0 == "reproduced" and t0 == ("top 2 of 8 heads hold 0.30 of the positive score mass (uniform: 0.25; "
                                         "n=50 identification samples); exhaustive vs attribution patching: "
                                         "Spearman 0.80, top-5% overlap 0.50")
    d = _drops(n=50)
    full = identification_doc("m", d.mean(0), d.mean(0) * 0.9, 0.25, 50, drops=d, attribution_drops=d * 0.9,
                              n_boot=200).to_doc()
    extra = {k: full[k] for k in ("intervals", "selection_stability", "top_k_boundary")}
    v1, t1 = rule({"03": _tagged({**base, **extra}, "03.json")}, TH)
    assert v1 == v0
    iv = extra["intervals"]["top_share_of_score"]
    assert f"0.30 [{iv['lo']:.2f}, {iv['hi']:.2f}]" in t1 and "200 resamples" in t1 and "n=50" in t1
    assert "(0,0) 1.00" in t1 and "first outside" in t1 and "top-2 boundary margin" in t1
    assert "(2 of 2 heads)" in t1                                # exhaustive and attribution agree exactly here
    no_attr = {**extra, "intervals": score_intervals(d, None, 0.25, n_boot=50)}
    text = rule({"03": _tagged({**base, **no_attr}, "03.json")}, TH)[1]
    assert "no interval: attribution not kept per sample" in text


def test_selection_figure_draws_one_bar_per_listed_head() -> None:
    d = _drops(n=50)
    doc = identification_doc("m", d.mean(0), d.mean(0), 0.25, 50, drops=d, n_boot=100).to_doc()
    fig = plot_selection_stability(doc)
    ax = fig.axes[0]
    assert len(ax.patches) == len(doc["selection_stability"]["heads"]) == 4
    assert "boundary margin" in ax.get_title()
    plt.close(fig)
