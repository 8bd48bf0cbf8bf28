"""INSSD estimators (mfutils.measure.margins, amendment A3): on constructed margins with known answers, against
stats.paired_bootstrap, and as SweepResult.summary and the stability analysis report them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from mfutils.core.paths import repo_root
from mfutils.measure.margins import EPS, SMALL_MARGIN, inssd, inssd_estimators, ratio_of_means
from mfutils.measure.stats import paired_bootstrap, summarize
from mfutils.study.knockout import SweepResult
from mfutils.study.stability import stability


def _constructed(n: int = 200, tiny: int = 0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Margins m in [2, 4] each losing 30% under the intervention (known answer: every estimator is -0.3),
    the first ``tiny`` of them replaced by |m| = 0.002 margins that move by 0.5 (ratio about -167)."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(2.0, 4.0, n)
    m_new = 0.7 * m
    m[:tiny], m_new[:tiny] = 0.002, -0.498
    return m, m_new[None]


def test_ratio_of_means_is_the_mean_change_over_the_mean_margin() -> None:
    assert ratio_of_means(np.array([1.0, 3.0]), np.array([0.0, 3.0])) == pytest.approx(-0.25)
    assert ratio_of_means(np.array([-2.0, 2.0]), np.array([[-1.0, 1.0], [-2.0, 2.0]])).tolist() == [0.0, 0.0]
    assert ratio_of_means(np.array([2.0, 2.0]), np.array([[0.0, 0.0], [4.0, 4.0]])).tolist() == [-1.0, 1.0]
    assert math.isnan(float(ratio_of_means(np.zeros(2), np.ones(2))))
    assert "ours" in (ratio_of_means.__doc__ or "").lower()


def test_the_three_agree_when_margins_are_large_and_differ_when_a_few_are_tiny() -> None:
    m, m_new = _constructed()
    est = inssd_estimators(m, m_new, n_boot=300)
    values = [est[k]["value"][0] for k in ("mean_of_ratios", "median", "ratio_of_means")]
    assert values == pytest.approx([-0.3] * 3, abs=1e-3)                # eps = 1e-3 against |m| >= 2
    for k in ("mean_of_ratios", "median", "ratio_of_means"):
        assert est[k]["lo"][0] <= est[k]["value"][0] <= est[k]["hi"][0]
        assert est[k]["lo"][0] == pytest.approx(-0.3, abs=2e-3) and est[k]["hi"][0] == pytest.approx(-0.3, abs=2e-3)
    # 4 of 200 samples with |m| = 0.002: the mean of ratios is dragged far below -1, the median does not move,
    # the ratio of means moves a little (those samples barely change mean(m' - m))
    m, m_new = _constructed(tiny=4)
    est = inssd_estimators(m, m_new, n_boot=300)
    mor, med, rom = (est[k]["value"][0] for k in ("mean_of_ratios", "median", "ratio_of_means"))
    assert mor < -3.0
    assert med == pytest.approx(-0.3, abs=1e-3)
    assert -0.35 < rom < -0.25
    assert est["mean_of_ratios"]["hi"][0] < est["ratio_of_means"]["lo"][0]     # the intervals do not overlap
    # the stratified view finds the 4 samples
    st = est["strata"]
    assert st["small_margin"] == SMALL_MARGIN and st["small"]["n"] == 4 and st["large"]["n"] == 196
    assert st["large"]["mean_of_ratios"]["value"][0] == pytest.approx(-0.3, abs=1e-3)
    assert st["large"]["ratio_of_means"]["value"][0] == pytest.approx(-0.3, abs=1e-12)
    assert st["small"]["mean_of_ratios"]["value"][0] == pytest.approx(-0.5 / (0.002 + EPS))
    assert st["small"]["ratio_of_means"]["value"][0] == pytest.approx(-0.5 / 0.002)
    assert "median" not in st["small"]


def test_vectorised_bootstrap_equals_stats_paired_bootstrap() -> None:
    rng = np.random.default_rng(3)
    m = rng.normal(size=57) * 2
    m_new = m[None] + rng.normal(size=(3, 57))
    est = inssd_estimators(m, m_new, n_boot=400, seed=5)
    stats = {"mean_of_ratios": lambda a, b: np.mean((b - a) / (np.abs(a) + EPS)),
             "median": lambda a, b: np.median((b - a) / (np.abs(a) + EPS)),
             "ratio_of_means": lambda a, b: np.mean(b - a) / np.mean(np.abs(a))}
    for name, stat in stats.items():
        for w in range(3):
            ref = paired_bootstrap(stat, [m, m_new[w]], n_boot=400, seed=5)
            got = [est[name][k][w] for k in ("value", "lo", "hi")]
            np.testing.assert_allclose(got, [ref["value"], ref["lo"], ref["hi"]], rtol=1e-12, atol=1e-14, err_msg=name)
    # the mean of ratios is the original INSSD (metrics.inssd, stats.summarize) to the last bits
    for w in range(3):
        x = inssd(torch.from_numpy(m), torch.from_numpy(m_new[w])).numpy()
        s = summarize(x, n_boot=400, seed=5)
        np.testing.assert_allclose([est["mean_of_ratios"][k][w] for k in ("value", "lo", "hi")],
                                   [s["mean"], s["lo"], s["hi"]], rtol=1e-12)


def test_even_and_odd_sample_counts_and_empty_strata() -> None:
    for n in (1, 2, 5, 6):
        m = np.linspace(1.5, 3.0, n)
        est = inssd_estimators(m, np.stack([m * 0.5, m]), n_boot=50)
        assert est["median"]["value"] == pytest.approx([-0.5 * 1.5 / (1.5 + EPS) if n == 1 else
                                                        float(np.median(-0.5 * m / (m + EPS))), 0.0])
        assert est["strata"]["small"] == {"n": 0, "mean_of_ratios": {"value": [], "lo": [], "hi": []},
                                          "ratio_of_means": {"value": [], "lo": [], "hi": []}}
    empty = inssd_estimators(np.zeros(0), np.zeros((2, 0)))
    assert empty["ratio_of_means"] == {"value": [], "lo": [], "hi": []}
    with pytest.raises(ValueError, match=r"\[W, N\]"):
        inssd_estimators(np.zeros(3), np.zeros(3))


def test_small_margin_is_the_threshold_of_claims_yaml() -> None:
    claims = yaml.safe_load((repo_root() / "paper" / "claims.yaml").read_text())
    assert claims["amendments"]["thresholds"]["small_margin"] == SMALL_MARGIN


def _sweep(seed: int = 0, n: int = 60) -> SweepResult:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=n) * 2
    effect = np.array([-0.8, -0.4, -0.1, 0.0])[:, None]                   # a pattern over 4 windows
    knocked = np.stack([base + effect * np.abs(base) + 0.05 * rng.normal(size=(4, n)),
                        base[None].repeat(4, 0)])                            # a no-op edge
    knocked[0, :, :3] = np.nan                                               # 3 samples lack the first edge
    return SweepResult(edges=["a->b", "c->d"], windows=[(w, w + 1) for w in range(4)], base=base, knocked=knocked,
                       follows=base > 0, categories=np.array(["follow_image"] * n), tags=np.array(["test"] * n),
                       n_layers=4)


def test_summary_keeps_the_original_keys_and_adds_the_estimators() -> None:
    sw = _sweep()
    s = sw.summary("a->b", n_boot=200)
    x = sw.inssd()[0][:, 3:]
    ref = [summarize(row, n_boot=200) for row in x]
    assert s["inssd"] == [r["mean"] for r in ref] and s["lo"] == [r["lo"] for r in ref]     # exactly as before
    assert s["n"] == 57 and list(s)[:6] == ["start", "inssd", "lo", "hi", "flip", "n"]
    keep = sw.valid("a->b")
    est = inssd_estimators(sw.base[keep], sw.knocked[0][:, keep], n_boot=200)
    assert s["ratio_of_means"] == est["ratio_of_means"] and s["median"] == est["median"]
    assert s["strata"]["small"]["n"] + s["strata"]["large"]["n"] == 57
    assert s["ratio_of_means"]["value"] == pytest.approx([-0.8, -0.4, -0.1, 0.0], abs=0.02)
    assert sw.summary("c->d", n_boot=50)["ratio_of_means"]["value"] == [0.0] * 4
    assert sw.summary("a->b", np.zeros(60, dtype=bool)) == {"start": [], "inssd": [], "lo": [], "hi": [],
                                                            "flip": [], "n": 0}


def _old_stability(sweep: SweepResult, fractions: tuple[float, ...], seed: int, n_draws: int) -> dict[str, list[float]]:
    """The stability loop as it was before amendment A3 (the reference for the kept ``corr`` key)."""
    rng = np.random.default_rng(seed)
    out = {}
    for edge in sweep.edges:
        keep = np.flatnonzero(sweep.valid(edge))
        x = sweep.inssd()[sweep.edges.index(edge)][:, keep]
        full = x.mean(1)
        row = []
        for frac in fractions:
            n_sub = max(2, int(round(frac * keep.size)))
            if np.std(full) == 0:
                row.append(math.nan)
                continue
            rs = []
            for _ in range(n_draws if n_sub < keep.size else 1):
                pick = np.sort(rng.choice(keep.size, size=n_sub, replace=False))
                rs.append(float(np.clip(np.corrcoef(x[:, pick].mean(1), full)[0, 1], -1, 1)))
            row.append(float(np.nanmean(rs)))
        out[edge] = row
    return out


def test_stability_keeps_corr_and_adds_ratio_of_means_with_intervals_over_draws() -> None:
    sw = _sweep()
    st = stability(sw, fractions=(0.3, 0.6, 1.0), seed=4, rom_draws=100)
    old = _old_stability(sw, (0.3, 0.6, 1.0), 4, 10)
    assert st["corr"]["a->b"] == old["a->b"] and all(math.isnan(c) for c in st["corr"]["c->d"])
    assert st["n_draws"] == 10 and st["n"] == {"a->b": 57, "c->d": 60}
    rom = st["ratio_of_means"]
    assert rom["n_draws"] == 100
    for c, lo, hi in zip(rom["corr"]["a->b"], rom["lo"]["a->b"], rom["hi"]["a->b"]):
        assert -1 <= lo <= c <= hi <= 1
    assert rom["corr"]["a->b"][-1] == pytest.approx(1.0) and rom["lo"]["a->b"][-1] == pytest.approx(1.0)
    assert rom["corr"]["a->b"][0] > 0.9                                   # a clear pattern is stable
    assert all(math.isnan(c) for c in rom["corr"]["c->d"])                # a flat curve has no correlation
    again = stability(sw, fractions=(0.3, 0.6, 1.0), seed=4, rom_draws=100)["ratio_of_means"]["corr"]["a->b"]
    assert again == rom["corr"]["a->b"]                                   # seeded
    with pytest.raises(ValueError, match="fractions"):
        stability(sw, fractions=(0.0,))
