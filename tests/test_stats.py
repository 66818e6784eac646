"""Tests of nht.stats: fits recover known parameters, bootstrap intervals have nominal coverage."""

import math

import numpy as np
import pytest
from scipy import stats as st

from nht import stats


def test_ols_recovers_known_k_and_b_exactly():
    x = np.linspace(0, 10, 25)
    fit = stats.ols_fit(x, 2.5 * x - 3.0)
    assert fit["k"] == pytest.approx(2.5)
    assert fit["b"] == pytest.approx(-3.0)
    assert fit["r2"] == pytest.approx(1.0)
    assert fit["n"] == 25


def test_ols_r2_matches_squared_pearson_and_ignores_nonfinite():
    rng = np.random.default_rng(1)
    x = rng.normal(size=60)
    y = 0.7 * x + rng.normal(size=60)
    r = st.pearsonr(x, y).statistic
    xs = np.append(x, [np.nan, 1.0])
    ys = np.append(y, [1.0, np.inf])
    fit = stats.ols_fit(xs, ys)
    assert fit["n"] == 60
    assert fit["r2"] == pytest.approx(r * r)
    ref = st.linregress(x, y)
    assert fit["k"] == pytest.approx(ref.slope)
    assert fit["b"] == pytest.approx(ref.intercept)


def test_degenerate_fits_return_none_not_nan():
    assert stats.ols_fit([1.0], [2.0])["k"] is None
    assert stats.ols_fit([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["k"] is None
    boot = stats.bootstrap_fit([1.0, 2.0], [1.0, 2.0])
    assert boot["k_ci"] is None and boot["k"] == pytest.approx(1.0)


def test_bootstrap_is_seeded_and_ci_brackets_estimate():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 5, 40)
    y = 1.5 * x + 2 + rng.normal(0, 0.5, 40)
    a = stats.bootstrap_fit(x, y, n_boot=1000, seed=3)
    b = stats.bootstrap_fit(x, y, n_boot=1000, seed=3)
    assert a == b
    assert a["n_boot"] == 1000 and a["n_boot_valid"] == 1000
    for key in ("k", "b", "r2"):
        lo, hi = a[f"{key}_ci"]
        assert lo <= a[key] <= hi
    assert a["k_ci"][0] < 1.5 < a["k_ci"][1]


def test_bootstrap_ci_covers_truth_at_about_nominal_rate():
    """200 synthetic data sets with known k, b: the 95 % intervals must cover the truth about 95 %
    of the time. Tolerance: 3 binomial standard errors (sd = sqrt(.95*.05/200) = 0.0154), widened
    by 0.02 below for the known small-sample undercoverage of percentile intervals (n = 40)."""
    k_true, b_true, n, reps = 1.6, 300.0, 40, 200
    rng = np.random.default_rng(12345)
    cover_k = cover_b = 0
    for rep in range(reps):
        x = rng.uniform(100, 2000, n)
        y = k_true * x + b_true + rng.normal(0, 150, n)
        fit = stats.bootstrap_fit(x, y, n_boot=1000, seed=rep)
        cover_k += fit["k_ci"][0] <= k_true <= fit["k_ci"][1]
        cover_b += fit["b_ci"][0] <= b_true <= fit["b_ci"][1]
    sd = math.sqrt(0.95 * 0.05 / reps)
    for cover in (cover_k / reps, cover_b / reps):
        assert 0.95 - 3 * sd - 0.02 <= cover <= 0.95 + 3 * sd, cover


def test_log_fit_recovers_power_law_and_counts_dropped():
    x = np.geomspace(10, 1e4, 30)
    y = 3.0 * x ** 0.8
    fit = stats.log_fit(np.append(x, [-1.0, 5.0]), np.append(y, [2.0, 0.0]), n_boot=200)
    assert fit["k"] == pytest.approx(0.8)
    assert fit["b"] == pytest.approx(math.log(3.0))
    assert fit["n"] == 30 and fit["n_dropped_nonpositive"] == 2


def test_exp_decay_fit_recovers_gamma():
    t = np.arange(0, 2000, 20, dtype=float)
    v = 50.0 * np.exp(-0.002 * t)
    fit = stats.exp_decay_fit(t, v)
    assert fit["gamma"] == pytest.approx(0.002)
    assert fit["a"] == pytest.approx(math.log(50.0))
    assert stats.exp_decay_fit([0, 1], [1, 2])["gamma"] is None


def test_spearman_and_wilson_and_median():
    x = np.arange(20.0)
    assert stats.spearman(x, x ** 3) == pytest.approx(1.0)
    assert stats.spearman(x, -x) == pytest.approx(-1.0)
    assert stats.spearman(x, np.ones(20)) is None
    lo, hi = stats.wilson_interval(45, 50)
    assert lo < 0.9 < hi and 0 <= lo and hi <= 1
    assert stats.wilson_interval(0, 0) is None
    m = stats.bootstrap_median([1, 2, 3, 4, 100, float("nan")], n_boot=500)
    assert m["median"] == 3 and m["n"] == 5 and m["ci"][0] <= 3 <= m["ci"][1]
    assert stats.finite_or_none(float("nan")) is None and stats.finite_or_none("x") is None


def test_rank_biserial_matches_mann_whitney():
    rng = np.random.default_rng(4)
    a, b = rng.normal(1, 1, 30), rng.normal(0, 1, 25)
    u = st.mannwhitneyu(a, b).statistic
    assert stats.rank_biserial(a, b) == pytest.approx(2 * u / (30 * 25) - 1)
    assert stats.rank_biserial([3, 4], [1, 2]) == 1.0
    assert stats.rank_biserial([1, 2], [1, 2]) == 0.0
    assert stats.rank_biserial([], [1.0]) is None
