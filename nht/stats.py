"""Small, dependency-light statistics used by the science layer.

Everything here is a pure function of its arguments (random draws come from an explicit
``seed``), returns plain Python floats/ints/lists (JSON-serialisable; undefined values are
``None``, never NaN), and is tested in ``tests/test_stats.py``.

* :func:`ols_fit` -- least squares ``y = k x + b`` with the coefficient of determination
  ``R^2 = 1 - SS_res / SS_tot`` (for a simple linear fit with intercept this equals the squared
  Pearson correlation).
* :func:`bootstrap_fit` -- the same fit with percentile bootstrap intervals for ``k``, ``b`` and
  ``R^2``: the rows (cells) are resampled with replacement ``n_boot`` times (default 1,000) from a
  seeded generator; draws in which ``x`` is constant are dropped and counted. Intervals are the
  ``alpha/2`` and ``1 - alpha/2`` quantiles of the valid draws ("pairs" bootstrap, which does not
  assume homoscedastic errors). Note that the bootstrap distribution of ``R^2`` is biased
  (resampling duplicates points); its interval describes sampling variability, not a test.
* :func:`log_fit` -- :func:`bootstrap_fit` on ``(ln x, ln y)`` using only pairs with both values
  positive; dropped pairs are counted.
* :func:`exp_decay_fit` -- fit ``ln V_t = a - gamma t`` (returns the decay rate ``gamma``).
* :func:`spearman` -- Spearman rank correlation (average ranks for ties; ``None`` if either
  input is constant or fewer than 3 pairs).
* :func:`rank_biserial` -- ``P(h > l) - P(h < l)`` between two samples (``2 AUC - 1``).
* :func:`wilson_interval` -- 95 % Wilson score interval for a binomial share.
* :func:`bootstrap_median` -- median with a percentile bootstrap interval.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from scipy import stats as _st

__all__ = ["ols_fit", "bootstrap_fit", "bootstrap_draws", "log_fit", "exp_decay_fit", "spearman", "rank_biserial",
           "wilson_interval", "bootstrap_median", "finite_or_none"]


def finite_or_none(value) -> float | None:
    """``float(value)`` if it is a finite number, else ``None`` (JSON has no NaN)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _as_xy(x: Iterable[float], y: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(list(x) if not isinstance(x, np.ndarray) else x, dtype=float)
    y = np.asarray(list(y) if not isinstance(y, np.ndarray) else y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.shape} vs {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _fit_arrays(x: np.ndarray, y: np.ndarray):
    """Vectorised OLS over the last axis: returns (k, b, r2); NaN where x is constant."""
    mx = x.mean(axis=-1, keepdims=True)
    my = y.mean(axis=-1, keepdims=True)
    dx, dy = x - mx, y - my
    sxx = (dx * dx).sum(axis=-1)
    sxy = (dx * dy).sum(axis=-1)
    syy = (dy * dy).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(sxx > 0, sxy / sxx, np.nan)
        b = my[..., 0] - k * mx[..., 0]
        # R^2 = 1 - SS_res/SS_tot; a perfect fit of constant y counts as R^2 = 1 only if sxy==0
        ss_res = syy - k * sxy
        r2 = np.where(syy > 0, 1.0 - ss_res / syy, np.where(sxx > 0, 1.0, np.nan))
    return k, b, r2


def ols_fit(x: Iterable[float], y: Iterable[float]) -> dict:
    """Least squares ``y = k x + b``. Non-finite pairs are ignored.

    Returns ``{k, b, r2, n}``; ``k``, ``b``, ``r2`` are ``None`` when fewer than 2 points
    remain or ``x`` is constant.
    """
    x, y = _as_xy(x, y)
    n = int(x.size)
    if n < 2:
        return {"k": None, "b": None, "r2": None, "n": n}
    k, b, r2 = _fit_arrays(x, y)
    return {"k": finite_or_none(k), "b": finite_or_none(b), "r2": finite_or_none(r2), "n": n}


def _quantile_ci(values: np.ndarray, alpha: float) -> list | None:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def bootstrap_draws(x, y, n_boot: int = 1000, seed: int = 0):
    """The raw bootstrap draws behind :func:`bootstrap_fit`: arrays ``(k, b, r2)`` of length
    ``n_boot`` (NaN where a resample had constant ``x``). Same seed, same draws."""
    x, y = _as_xy(x, y)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(int(n_boot), x.size))
    return _fit_arrays(x[idx], y[idx])


def bootstrap_fit(x: Iterable[float], y: Iterable[float], n_boot: int = 1000, seed: int = 0,
                  alpha: float = 0.05) -> dict:
    """:func:`ols_fit` plus percentile-bootstrap ``(1 - alpha)`` intervals over resampled rows.

    Returns ``{k, b, r2, n, k_ci, b_ci, r2_ci, n_boot, n_boot_valid, ci_level}``; each ``*_ci``
    is ``[low, high]`` or ``None`` (fewer than 3 points, or no valid draw).
    """
    x, y = _as_xy(x, y)
    out = ols_fit(x, y)
    out.update({"k_ci": None, "b_ci": None, "r2_ci": None, "n_boot": int(n_boot),
                "n_boot_valid": 0, "ci_level": 1 - alpha})
    n = x.size
    if n < 3 or out["k"] is None or n_boot < 1:
        return out
    k, b, r2 = bootstrap_draws(x, y, n_boot=n_boot, seed=seed)
    valid = np.isfinite(k)
    out["n_boot_valid"] = int(valid.sum())
    out["k_ci"] = _quantile_ci(k[valid], alpha)
    out["b_ci"] = _quantile_ci(b[valid], alpha)
    out["r2_ci"] = _quantile_ci(r2[valid], alpha)
    return out


def log_fit(x: Iterable[float], y: Iterable[float], n_boot: int = 1000, seed: int = 0,
            alpha: float = 0.05) -> dict:
    """:func:`bootstrap_fit` of ``ln y = k ln x + b`` over pairs with ``x > 0`` and ``y > 0``.

    ``k`` is then the power-law exponent (``y ∝ x^k``). Adds ``n_dropped_nonpositive``.
    """
    x, y = _as_xy(x, y)
    pos = (x > 0) & (y > 0)
    out = bootstrap_fit(np.log(x[pos]), np.log(y[pos]), n_boot=n_boot, seed=seed, alpha=alpha)
    out["n_dropped_nonpositive"] = int((~pos).sum())
    return out


def exp_decay_fit(t: Iterable[float], v: Iterable[float]) -> dict:
    """Fit ``ln v_t = a - gamma * t`` by least squares over points with ``v > 0``.

    Returns ``{gamma, a, r2, n}`` (``gamma`` > 0 means decay); ``None`` values when fewer than
    3 usable points or ``t`` is constant.
    """
    t, v = _as_xy(t, v)
    pos = v > 0
    t, v = t[pos], v[pos]
    if t.size < 3:
        return {"gamma": None, "a": None, "r2": None, "n": int(t.size)}
    fit = ols_fit(t, np.log(v))
    gamma = None if fit["k"] is None else -fit["k"]
    return {"gamma": gamma, "a": fit["b"], "r2": fit["r2"], "n": fit["n"]}


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation over finite pairs; ``None`` if < 3 pairs or an input is constant."""
    x, y = _as_xy(x, y)
    if x.size < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return None
    return finite_or_none(_st.spearmanr(x, y).statistic)


def rank_biserial(high: Sequence[float], low: Sequence[float]) -> float | None:
    """Rank-biserial correlation ``P(h > l) - P(h < l)`` over all pairs of a value ``h`` from
    ``high`` and ``l`` from ``low`` (ties count half each way; equals ``2 AUC - 1``, i.e.
    ``2 U / (n_h n_l) - 1`` with the Mann-Whitney U of ``high``). 1 when every ``high`` value
    exceeds every ``low`` value, about 0 when the two samples are exchangeable; ``None`` if a
    sample is empty."""
    h = np.asarray([v for v in high if finite_or_none(v) is not None], dtype=float)
    lo = np.asarray([v for v in low if finite_or_none(v) is not None], dtype=float)
    if h.size == 0 or lo.size == 0:
        return None
    diff = h[:, None] - lo[None, :]
    return float(((diff > 0).sum() - (diff < 0).sum()) / diff.size)


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> list | None:
    """Wilson score interval ``[low, high]`` for a binomial share; ``None`` when ``n == 0``."""
    if n <= 0:
        return None
    z = float(_st.norm.ppf(1 - alpha / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, round(centre - half, 12)), min(1.0, round(centre + half, 12))]


def bootstrap_median(values: Iterable[float], n_boot: int = 1000, seed: int = 0,
                     alpha: float = 0.05) -> dict:
    """Median of the finite values with a percentile-bootstrap interval.

    Returns ``{median, ci, n}``; ``ci`` is ``None`` for fewer than 3 values.
    """
    v = np.asarray([x for x in values if finite_or_none(x) is not None], dtype=float)
    if v.size == 0:
        return {"median": None, "ci": None, "n": 0}
    out = {"median": float(np.median(v)), "ci": None, "n": int(v.size)}
    if v.size >= 3 and n_boot >= 1:
        rng = np.random.default_rng(seed)
        meds = np.median(v[rng.integers(0, v.size, size=(int(n_boot), v.size))], axis=1)
        out["ci"] = _quantile_ci(meds, alpha)
    return out
