"""The control statistics: empirical p-values, null summaries and the paired bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mfutils.measure.stats import empirical_p, null_summary, paired_bootstrap


def test_empirical_p_counts_the_observed_value_as_a_draw() -> None:
    assert empirical_p(0.5, [0.1, 0.2, 0.6]) == {"p": 0.5, "count": 1, "n": 3, "resolution": 0.25}
    # an observed value beyond every draw gets the resolution, never 0
    p = empirical_p(999.0, np.arange(199.0))
    assert p["count"] == 0 and p["p"] == p["resolution"] == 1 / 200
    # ties count as at least as strong; "smaller" flips the direction
    assert empirical_p(0.2, [0.2, 0.2, 0.1])["count"] == 2
    assert empirical_p(0.2, [0.2, 0.3, 0.1], larger=False)["count"] == 2


def test_empirical_p_drops_non_finite_draws() -> None:
    p = empirical_p(0.5, [math.nan, 0.7, math.inf])
    assert p["n"] == 1 and p["count"] == 1
    assert math.isnan(empirical_p(0.5, [math.nan])["p"])


def test_null_summary_percentile_and_interval() -> None:
    s = null_summary(np.arange(200.0), seed=0)
    assert s["n"] == 200 and s["mean"] == pytest.approx(99.5)
    assert s["lo"] < 99.5 < s["hi"]
    assert s["p95"] == pytest.approx(np.quantile(np.arange(200.0), 0.95))


def test_paired_bootstrap_resamples_rows_together() -> None:
    x = np.arange(1.0, 51.0)
    # stat of two identical arrays resampled together is always 0: a paired bootstrap cannot see noise
    r = paired_bootstrap(lambda a, b: float((a - b).mean()), [x, x.copy()], n_boot=200)
    assert r["value"] == r["lo"] == r["hi"] == 0.0 and r["n"] == 50
    r = paired_bootstrap(lambda d, m: d.mean() / m.mean(), [x, 2 * x], n_boot=200)
    assert r["value"] == r["lo"] == r["hi"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="first axis"):
        paired_bootstrap(np.mean, [x, x[:3]])
    assert math.isnan(paired_bootstrap(np.mean, [np.array([])])["value"])
