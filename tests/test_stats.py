"""Tests of nht.science.stats: fits recover known parameters, BCa intervals have about nominal coverage,
and small samples get no interval."""

import math

import numpy as np
import pytest
from scipy import stats as st

from nht.science import stats


def test_line_fit_recovers_known_k_and_b_and_matches_linregress():
    x = np.linspace(0, 10, 25)
    fit = stats.line_fit(x, 2.5 * x - 3.0, n_boot=200)
    assert fit["k"] == pytest.approx(2.5) and fit["b"] == pytest.approx(-3.0)
    assert fit["r2"] == pytest.approx(1.0) and fit["n"] == 25
    rng = np.random.default_rng(1)
    x = rng.normal(size=60)
    y = 0.7 * x + rng.normal(size=60)
    fit = stats.line_fit(np.append(x, [np.nan, 1.0]), np.append(y, [1.0, np.inf]), n_boot=200)
    ref = st.linregress(x, y)
    assert fit["n"] == 60
    assert fit["k"] == pytest.approx(ref.slope) and fit["b"] == pytest.approx(ref.intercept)
    assert fit["r2"] == pytest.approx(st.pearsonr(x, y).statistic ** 2)
    assert fit["ci_method"] == "BCa"


def test_small_or_degenerate_samples_give_none_not_nan():
    assert stats.line_fit([1.0], [2.0])["k"] is None
    assert stats.line_fit([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["k"] is None
    few = stats.line_fit(np.arange(7.0), np.arange(7.0) * 2 + np.r_[0, 1, 0, 1, 0, 1, 0])
    assert few["k"] is not None and few["k_ci"] is None       # n < 8: no bootstrap interval
    assert few["theil_sen"]["slope_ci"] is not None            # Theil-Sen's own interval stays
    assert stats.median_ci([1, 2, 3, 4, 5, 6, 7])["ci"] is None
    assert stats.median_ci([])["median"] is None
    assert stats.median_ci([2.0] * 10)["ci"] == [2.0, 2.0]


def test_bootstrap_is_seeded_and_ci_brackets_estimate():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 5, 40)
    y = 1.5 * x + 2 + rng.normal(0, 0.5, 40)
    a = stats.line_fit(x, y, n_boot=500, seed=3)
    assert a == stats.line_fit(x, y, n_boot=500, seed=3)
    for key in ("k", "b", "r2"):
        lo, hi = a[f"{key}_ci"]
        assert lo <= a[key] <= hi
    assert a["k_ci"][0] < 1.5 < a["k_ci"][1]


def test_bca_ci_covers_truth_at_about_nominal_rate():
    """100 synthetic data sets with known k: the 95 % BCa intervals must cover the truth about
    95 % of the time (3 binomial sd = 0.065, widened by 0.03 for small-sample undercoverage)."""
    k_true, n, reps = 1.6, 30, 100
    rng = np.random.default_rng(12345)
    cover = 0
    for rep in range(reps):
        x = rng.uniform(100, 2000, n)
        y = k_true * x + 300 + rng.normal(0, 150, n)
        ci = stats.line_fit(x, y, n_boot=300, seed=rep)["k_ci"]
        cover += ci[0] <= k_true <= ci[1]
    sd = math.sqrt(0.95 * 0.05 / reps)
    assert 0.95 - 3 * sd - 0.03 <= cover / reps <= 0.95 + 3 * sd


def test_theil_sen_resists_an_outlier_that_moves_ols():
    x = np.arange(20.0)
    y = 2 * x + 1
    y[-1] = 500.0
    fit = stats.line_fit(x, y, n_boot=100)
    assert fit["theil_sen"]["slope"] == pytest.approx(2.0)
    assert fit["k"] > 5


def test_log_fit_recovers_power_law_and_counts_dropped():
    x = np.geomspace(10, 1e4, 30)
    fit = stats.log_fit(np.append(x, [-1.0, 5.0]), np.append(3.0 * x ** 0.8, [2.0, 0.0]),
                        n_boot=100)
    assert fit["k"] == pytest.approx(0.8) and fit["b"] == pytest.approx(math.log(3.0))
    assert fit["n"] == 30 and fit["n_dropped_nonpositive"] == 2


def test_exp_decay_fit_recovers_gamma():
    t = np.arange(0, 2000, 20, dtype=float)
    fit = stats.exp_decay_fit(t, 50.0 * np.exp(-0.002 * t))
    assert fit["gamma"] == pytest.approx(0.002) and fit["a"] == pytest.approx(math.log(50.0))
    assert stats.exp_decay_fit([0, 1], [1, 2])["gamma"] is None


def test_median_ci_brackets_and_covers():
    rng = np.random.default_rng(5)
    cover = 0
    for rep in range(60):
        m = stats.median_ci(rng.exponential(1.0, 40), n_boot=300, seed=rep)
        assert m["ci"][0] <= m["median"] <= m["ci"][1]
        cover += m["ci"][0] <= math.log(2) <= m["ci"][1]
    assert cover / 60 >= 0.8


def test_rank_biserial_wilson_spearman():
    rng = np.random.default_rng(4)
    a, b = rng.normal(1, 1, 30), rng.normal(0, 1, 25)
    u = st.mannwhitneyu(a, b).statistic
    assert stats.rank_biserial(a, b) == pytest.approx(2 * u / (30 * 25) - 1)
    assert stats.rank_biserial([3, 4], [1, 2]) == 1.0
    assert stats.rank_biserial([1, 2], [1, 2]) == 0.0
    assert stats.rank_biserial([], [1.0]) is None
    lo, hi = stats.wilson_interval(45, 50)
    assert lo < 0.9 < hi and 0 <= lo and hi <= 1
    assert stats.wilson_interval(0, 0) is None
    x = np.arange(20.0)
    assert stats.spearman(x, x ** 3) == pytest.approx(1.0)
    assert stats.spearman(x, np.ones(20)) is None
    assert stats.finite_or_none(float("nan")) is None and stats.finite_or_none("x") is None


def test_group_median_ci_resamples_groups_not_cells():
    rng = np.random.default_rng(6)
    # 10 groups of 5 identical cells: 50 "cells" but only 10 independent units
    centres = rng.normal(0, 1, 10)
    values = np.repeat(centres, 5)
    groups = np.repeat(np.arange(10), 5)
    by_group = stats.group_median_ci(values, groups, n_boot=400, seed=0)
    by_cell = stats.median_ci(values, n_boot=400, seed=0)
    assert by_group["median"] == by_cell["median"] and by_group["n"] == 50
    assert by_group["n_groups"] == 10 and by_group["resampled"] == "groups"
    width = lambda ci: ci[1] - ci[0]
    assert width(by_group["ci"]) > width(by_cell["ci"])        # cells as units: too narrow
    few = stats.group_median_ci(values[:35], groups[:35], n_boot=400)
    assert few["n_groups"] == 7 and few["ci"] is None          # < 8 groups: no interval
    assert stats.group_median_ci([1.0, None, float("nan")], ["a", "b", "c"])["n"] == 1
    with pytest.raises(ValueError, match="differ in length"):
        stats.group_median_ci([1.0, 2.0], ["a"])


def test_permutation_p_counts_the_observation():
    assert stats.permutation_p([0.1, 0.2, 0.3], 0.5) == pytest.approx(1 / 4)
    assert stats.permutation_p([0.1, 0.5, 0.9], 0.5) == pytest.approx(3 / 4)
    assert stats.permutation_p([], 0.5) is None and stats.permutation_p([0.1], None) is None
