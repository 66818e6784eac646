"""Statistics of the science layer: thin, JSON-friendly wrappers around ``scipy.stats``.

Every function is pure (random draws come from an explicit ``seed``), returns plain Python
floats/ints/lists, and writes ``None`` (never NaN) for an undefined value. Tested in
``tests/test_stats.py``.

Uncertainty rule (issue 12): intervals are 95 % bias-corrected and accelerated (BCa) bootstrap
intervals from :func:`scipy.stats.bootstrap`, computed only with at least :data:`MIN_BOOT_N`
independent units (cells, slices or strata); below that an interval is ``None`` and the verdict
that needs it is ``uncertain``. Where BCa is undefined (a degenerate jackknife, e.g. most resampled
medians equal) the percentile interval of the same resamples is used and ``ci_method`` says so.

* :func:`bootstrap_ci` -- the BCa interval of any statistic of one or several paired samples.
* :func:`line_fit` -- OLS ``y = k x + b`` (:func:`scipy.stats.linregress`) with BCa intervals for
  ``k``, ``b``, ``R^2`` (cells resampled as pairs) and the Theil-Sen slope
  (:func:`scipy.stats.theilslopes`, with its own 95 % interval) beside it.
* :func:`log_fit` -- :func:`line_fit` of ``ln y`` on ``ln x`` over positive pairs.
* :func:`exp_decay_fit` -- ``ln v_t = a - gamma t`` (the decay rate ``gamma``).
* :func:`median_ci` -- median with its BCa interval.
* :func:`group_median_ci` -- median over cells with the interval from resampling whole *groups*
  (the units that share a fit / are held out together), BCa over >= :data:`MIN_BOOT_N` groups.
* :func:`permutation_p` -- ``(1 + #{null >= observed}) / (1 + draws)`` of a permutation null.
* :func:`rank_biserial` -- ``P(h > l) - P(h < l)`` = ``2 U / (n_h n_l) - 1`` (Mann-Whitney U).
* :func:`wilson_interval` -- Wilson 95 % interval of a binomial share
  (:meth:`scipy.stats.binomtest(...).proportion_ci`).
* :func:`spearman` -- :func:`scipy.stats.spearmanr`, ``None`` when undefined.
"""

from __future__ import annotations

import warnings
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy import stats as _st

from nht.core.io import finite_or_none

__all__ = ["MIN_BOOT_N", "finite_or_none", "bootstrap_ci", "line_fit", "log_fit",
           "exp_decay_fit", "median_ci", "group_median_ci", "permutation_p", "rank_biserial",
           "wilson_interval", "spearman"]

MIN_BOOT_N = 8
CI_LEVEL = 0.95


def _finite_pairs(x: Iterable[float], y: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(list(x) if not isinstance(x, np.ndarray) else x, dtype=float)
    y = np.asarray(list(y) if not isinstance(y, np.ndarray) else y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.shape} vs {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def bootstrap_ci(data: Sequence[np.ndarray], statistic: Callable, n_boot: int = 1000,
                 seed: int = 0, paired: bool = True) -> tuple[list | None, str | None]:
    """95 % BCa interval of ``statistic(*data)`` over ``n_boot`` resamples of the units.

    ``data``: one array per sample (paired: resampled together, row by row). ``statistic`` may
    return a scalar or a vector. Returns ``(ci, method)``: ``ci`` is ``[low, high]`` (a list of
    such pairs for a vector statistic) or ``None`` below :data:`MIN_BOOT_N` units, with
    ``n_boot < 1``, or when no interval is finite; ``method`` is ``"BCa"`` or ``"percentile"``
    (BCa undefined) or ``None``.
    """
    data = tuple(np.asarray(d, dtype=float) for d in data)
    n = len(data[0])
    if n < MIN_BOOT_N or n_boot < 1:
        return None, None
    point = np.atleast_1d(np.asarray(statistic(*data), dtype=float))
    if all(np.ptp(d) == 0 for d in data):      # every unit identical: the interval is the point
        ci = [[float(p), float(p)] for p in point]
        return (ci[0] if len(ci) == 1 else ci), "degenerate"
    res = None
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = _st.bootstrap(data, statistic, paired=paired, vectorized=False,
                                n_resamples=int(n_boot) if res is None else 0, method=method,
                                confidence_level=CI_LEVEL, rng=np.random.default_rng(seed),
                                bootstrap_result=res if method == "percentile" else None)
        lo = np.atleast_1d(res.confidence_interval.low)
        hi = np.atleast_1d(res.confidence_interval.high)
        if np.all(np.isfinite(lo) & np.isfinite(hi)):
            ci = [[float(a), float(b)] for a, b in zip(lo, hi)]
            return (ci[0] if len(ci) == 1 else ci), method
    return None, None


def _linregress(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r = _st.linregress(x, y)
    return np.array([r.slope, r.intercept, r.rvalue ** 2])


def _safe_linregress(x, y) -> np.ndarray:
    if len(x) < 2 or np.ptp(x) == 0:
        return np.full(3, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _linregress(x, y)


def line_fit(x: Iterable[float], y: Iterable[float], n_boot: int = 1000, seed: int = 0) -> dict:
    """OLS ``y = k x + b`` over finite pairs, with BCa intervals and Theil-Sen beside it.

    Returns ``{k, b, r2, n, k_ci, b_ci, r2_ci, ci_method, n_boot, ci_level, theil_sen}``;
    ``theil_sen = {slope, intercept, slope_ci}`` (``slope_ci`` from
    :func:`scipy.stats.theilslopes`, valid for small n too). Numbers are ``None`` with fewer than
    2 points or constant ``x``; the bootstrap intervals are ``None`` below :data:`MIN_BOOT_N`.
    """
    x, y = _finite_pairs(x, y)
    n = int(x.size)
    k, b, r2 = (finite_or_none(v) for v in _safe_linregress(x, y))
    out = {"k": k, "b": b, "r2": r2, "n": n, "k_ci": None, "b_ci": None, "r2_ci": None,
           "ci_method": None, "n_boot": int(n_boot), "ci_level": CI_LEVEL,
           "theil_sen": {"slope": None, "intercept": None, "slope_ci": None}}
    if k is None:
        return out
    if n >= 3:
        ts = _st.theilslopes(y, x, alpha=CI_LEVEL)
        out["theil_sen"] = {"slope": finite_or_none(ts.slope),
                            "intercept": finite_or_none(ts.intercept),
                            "slope_ci": [finite_or_none(ts.low_slope),
                                         finite_or_none(ts.high_slope)]}
    ci, method = bootstrap_ci((x, y), _safe_linregress, n_boot=n_boot, seed=seed)
    if ci is not None:
        out.update({"k_ci": ci[0], "b_ci": ci[1], "r2_ci": ci[2], "ci_method": method})
    return out


def log_fit(x: Iterable[float], y: Iterable[float], n_boot: int = 1000, seed: int = 0) -> dict:
    """:func:`line_fit` of ``ln y = k ln x + b`` over pairs with ``x > 0`` and ``y > 0``
    (``k``: the power-law exponent, ``y ∝ x^k``). Adds ``n_dropped_nonpositive``."""
    x, y = _finite_pairs(x, y)
    pos = (x > 0) & (y > 0)
    out = line_fit(np.log(x[pos]), np.log(y[pos]), n_boot=n_boot, seed=seed)
    out["n_dropped_nonpositive"] = int((~pos).sum())
    return out


def exp_decay_fit(t: Iterable[float], v: Iterable[float]) -> dict:
    """Fit ``ln v_t = a - gamma t`` (OLS) over points with ``v > 0``; ``t`` in steps, so
    ``gamma`` is per step. Returns ``{gamma, a, r2, n}``; ``None`` below 3 points or for
    constant ``t``."""
    t, v = _finite_pairs(t, v)
    pos = v > 0
    t, v = t[pos], v[pos]
    if t.size < 3 or np.ptp(t) == 0:
        return {"gamma": None, "a": None, "r2": None, "n": int(t.size)}
    k, b, r2 = _safe_linregress(t, np.log(v))
    return {"gamma": finite_or_none(-k), "a": finite_or_none(b), "r2": finite_or_none(r2),
            "n": int(t.size)}


def median_ci(values: Iterable[float], n_boot: int = 1000, seed: int = 0) -> dict:
    """Median of the finite values with its BCa interval.

    Returns ``{median, ci, ci_method, n}``; ``ci`` is ``None`` below :data:`MIN_BOOT_N` values.
    """
    v = np.asarray([x for x in values if finite_or_none(x) is not None], dtype=float)
    if v.size == 0:
        return {"median": None, "ci": None, "ci_method": None, "n": 0}
    ci, method = bootstrap_ci((v,), np.median, n_boot=n_boot, seed=seed)
    return {"median": float(np.median(v)), "ci": ci, "ci_method": method, "n": int(v.size)}


def group_median_ci(values: Sequence[float], groups: Sequence, n_boot: int = 1000,
                    seed: int = 0) -> dict:
    """Median of the finite ``values`` (one per cell) with its 95 % interval from resampling whole
    groups (``groups[i]`` labels cell ``i``; cells of one group are resampled together, so cells that
    share a fit do not count as independent). BCa over groups, needs >= :data:`MIN_BOOT_N` groups.

    Returns ``{median, ci, ci_method, n, n_groups, resampled}`` (``resampled = "groups"``)."""
    vals = [finite_or_none(v) for v in values]
    if len(vals) != len(groups):
        raise ValueError(f"values and groups differ in length: {len(vals)} vs {len(groups)}")
    by: dict = {}
    for v, g in zip(vals, groups):
        if v is not None:
            by.setdefault(g, []).append(v)
    arrs = [np.asarray(v, dtype=float) for v in by.values()]
    out = {"median": None, "ci": None, "ci_method": None, "n": int(sum(a.size for a in arrs)),
           "n_groups": len(arrs), "resampled": "groups"}
    if not arrs:
        return out
    out["median"] = float(np.median(np.concatenate(arrs)))

    def stat(idx):
        return float(np.median(np.concatenate([arrs[int(i)] for i in np.atleast_1d(idx)])))

    ci, method = bootstrap_ci((np.arange(len(arrs), dtype=float),), stat, n_boot=n_boot, seed=seed)
    if ci is not None and method == "degenerate":
        ci = [out["median"], out["median"]]
    out.update({"ci": ci, "ci_method": method})
    return out


def permutation_p(null_draws: Sequence[float], observed: float | None) -> float | None:
    """One-sided permutation p-value ``(1 + #{null >= observed}) / (1 + draws)`` (never 0; the
    observed arrangement counts as one draw). ``None`` without draws or observation."""
    d = np.asarray([x for x in null_draws if finite_or_none(x) is not None], dtype=float)
    if d.size == 0 or finite_or_none(observed) is None:
        return None
    return float((1 + (d >= observed - 1e-12).sum()) / (1 + d.size))


def rank_biserial(high: Sequence[float], low: Sequence[float]) -> float | None:
    """``P(h > l) - P(h < l)`` over all pairs of ``h`` in ``high`` and ``l`` in ``low`` (ties
    count half each way), i.e. ``2 U / (n_h n_l) - 1`` with the Mann-Whitney U of ``high``
    (= ``2 AUC - 1``). 1 when every ``high`` value exceeds every ``low`` value, about 0 for
    exchangeable samples; ``None`` if a sample is empty."""
    h = np.asarray([v for v in high if finite_or_none(v) is not None], dtype=float)
    lo = np.asarray([v for v in low if finite_or_none(v) is not None], dtype=float)
    if h.size == 0 or lo.size == 0:
        return None
    u = _st.mannwhitneyu(h, lo, method="asymptotic").statistic
    return float(2.0 * u / (h.size * lo.size) - 1.0)


def wilson_interval(successes: int, n: int) -> list | None:
    """Wilson score 95 % interval ``[low, high]`` of a binomial share; ``None`` when ``n == 0``."""
    if n <= 0:
        return None
    ci = _st.binomtest(int(successes), int(n)).proportion_ci(confidence_level=CI_LEVEL,
                                                              method="wilson")
    return [float(ci.low), float(ci.high)]


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """:func:`scipy.stats.spearmanr` over finite pairs; ``None`` below 3 pairs or for a
    constant input."""
    x, y = _finite_pairs(x, y)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return finite_or_none(_st.spearmanr(x, y).statistic)
