"""Clean-norm separation S (P5) with nulls that keep each curve's shape.

Per cell: shortcut reliance ``phi_t`` (modular: ``1 - test_acc``; image: the ``reliance``
column, time ``epoch``); window = evaluations from the first maximum of V -- or from ``T_fit``
if that is earlier -- to the end. Rows with ``phi > 0.5`` are shortcut-reliant, the others
structured; ``S_cell = P(ln V_reliant > ln V_structured) - P(<)`` (rank-biserial, ``2 AUC - 1``).
``None`` below :data:`S_MIN_POINTS` rows or with fewer than 2 rows on either side.
The experiment's ``S`` is the median of ``S_cell`` over transition cells.

A steady fall of V plus one late rise of accuracy gives ``S ~ 1`` whatever the link between the
two, so S alone holds by construction. Two nulls keep every curve and break the link:

* ``null_pairing``: cell i's V window paired with cell j's ``phi`` on the same time axis (the
  last ``phi`` value carried forward/back where j has no row), over random derangements of the
  transition cells; it asks whether a cell's own norm tells when *it* leaves the shortcut.
* ``null_circular``: each cell's ``phi`` circularly shifted within its window by a random lag.

The null statistic is the median over cells, as for ``S``; ``null_*.q95`` is its 95th
percentile over ``n_null`` draws and ``p`` = (1 + #null >= S) / (1 + draws). Verdict: ``holds``
when ``S >= threshold`` (0.8) and ``S`` exceeds both nulls' 95th percentiles, ``fails``
otherwise, ``not_enough_data`` below 3 transition cells. ``S_ci``: BCa interval over cells
(>= 8 cells).

**Descriptive when no S could beat the nulls.** S is at most 1. Where V falls monotonically over
the window (the usual case under weight decay), *any* split of the rows into an early reliant and
a late structured phase gives S = 1, so the pairing null's 95th percentile is 1 and no data, not
even data that follow the law exactly, can pass. Then ``verdict`` is ``descriptive`` (``scored``
false, ``reason`` says why): S is reported, not scored. The scored test needs V histories where
the pairing matters (V stops falling, or wobbles, once a cell leaves the shortcut, so another
cell's switch time splits its rows worse than its own).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nht.science import stats
from nht.science.cellrecords import num, records, time_sorted

S_THRESHOLD = 0.8
S_MIN_POINTS = 5
PHI_SPLIT = 0.5
TRANSITION_REGIMES = ("intermediate", "immediate")


def _window(history: pd.DataFrame, T_fit, v_column: str = "V"):
    h = time_sorted(history)
    v = h[v_column].to_numpy(float) if v_column in h.columns else np.array([])
    if len(h) == 0 or not np.isfinite(v).any():
        return None
    peak = int(np.nanargmax(v))
    start = float(h["step"].iloc[peak])
    if num(T_fit) is not None:
        start = min(start, float(T_fit))
    return h, float(h["step"].iloc[peak]), start


def _phi(h: pd.DataFrame, phi_column: str | None) -> np.ndarray:
    """The shortcut reliance phi_t: ``phi_column``, else the history's ``phi`` (one schema,
    nht.core.history), else ``1 - test_acc`` (older modular tables)."""
    col = phi_column or ("phi" if "phi" in h.columns else None)
    return h[col].to_numpy(float) if col else 1.0 - h["test_acc"].to_numpy(float)


def _s_of(lv: np.ndarray, reliant: np.ndarray) -> float | None:
    """Rank-biserial of ``lv`` between ``reliant`` rows and the others (via ranks)."""
    n1 = int(reliant.sum())
    if n1 < 2 or reliant.size - n1 < 2:
        return None
    return stats.rank_biserial(lv[reliant], lv[~reliant])


def clean_norm_separation_cell(history: pd.DataFrame, phi_split: float = PHI_SPLIT,
                               phi_column: str | None = None, v_column: str = "V",
                               T_fit: float | None = None) -> dict:
    """Per-cell S (module docstring). Returns ``{S, S_spearman, n_points, n_reliant, n_other,
    peak_step, window_start, reason}``; ``S_spearman`` = Spearman(ln V_t, phi_t) over the same
    rows (bounded by ~0.87 for a step-like transition, so not the verdict's statistic)."""
    out = {"S": None, "S_spearman": None, "n_points": 0, "n_reliant": 0, "n_other": 0,
           "peak_step": None, "window_start": None, "reason": None}
    w = _window(history, T_fit, v_column)
    if w is None:
        out["reason"] = "no history"
        return out
    h, peak_step, start = w
    win = h.loc[h["step"] >= start]
    vv, phi = win[v_column].to_numpy(float), _phi(win, phi_column)
    ok = np.isfinite(vv) & (vv > 0) & np.isfinite(phi)
    lv, phi = np.log(vv[ok]), phi[ok]
    reliant = phi > phi_split
    out.update({"n_points": int(ok.sum()), "n_reliant": int(reliant.sum()),
                "n_other": int((~reliant).sum()), "peak_step": peak_step, "window_start": start})
    if out["n_points"] < S_MIN_POINTS:
        out["reason"] = f"fewer than {S_MIN_POINTS} evaluations in the window"
        return out
    out["S_spearman"] = stats.spearman(lv, phi)
    if out["n_reliant"] < 2 or out["n_other"] < 2:
        out["reason"] = ("no structured phase in the window" if out["n_other"] < 2
                         else "no shortcut phase in the window")
        return out
    out["S"] = _s_of(lv, reliant)
    return out


def _series(history, T_fit, phi_column):
    """``(window steps, ln V in the window, all steps, phi at all steps)`` of one cell."""
    w = _window(history, T_fit)
    if w is None:
        return None
    h, _, start = w
    phi = _phi(h, phi_column)
    v = h["V"].to_numpy(float)
    steps = h["step"].to_numpy(float)
    keep = (steps >= start) & np.isfinite(v) & (v > 0) & np.isfinite(phi)
    return steps[keep], np.log(v[keep]), steps[np.isfinite(phi)], phi[np.isfinite(phi)]


def _phi_at(steps: np.ndarray, src_steps: np.ndarray, src_phi: np.ndarray) -> np.ndarray:
    idx = np.clip(np.searchsorted(src_steps, steps, side="right") - 1, 0, src_steps.size - 1)
    return src_phi[idx]


def _q(draws: list[float], s_obs: float | None) -> dict:
    if not draws:
        return {"q95": None, "median": None, "p": None, "n_draws": 0}
    d = np.asarray(draws, float)
    p = None if s_obs is None else float((1 + (d >= s_obs).sum()) / (1 + d.size))
    return {"q95": float(np.quantile(d, 0.95)), "median": float(np.median(d)), "p": p,
            "n_draws": int(d.size)}


def separation_nulls(series: list, s_obs: float | None, n_null: int = 1000,
                     seed: int = 0, phi_split: float = PHI_SPLIT) -> dict:
    """Both nulls (module docstring) for the transition cells' ``series`` (from :func:`_series`)."""
    rng = np.random.default_rng(seed)
    n = len(series)
    circ = []
    for ws, lv, ps, ph in series:
        reliant = _phi_at(ws, ps, ph) > phi_split
        circ.append(np.array([np.nan if (s := _s_of(lv, np.roll(reliant, k))) is None else s
                              for k in range(1, max(2, reliant.size))]))
    circ_draws = []
    for _ in range(n_null if n else 0):
        vals = [c[rng.integers(c.size)] for c in circ if c.size]
        vals = [v for v in vals if np.isfinite(v)]
        if vals:
            circ_draws.append(float(np.median(vals)))
    pair = np.full((n, n), np.nan)
    for i, (ws, lv, _, _) in enumerate(series):
        for j, (_, _, ps, ph) in enumerate(series):
            if i != j:
                s = _s_of(lv, _phi_at(ws, ps, ph) > phi_split)
                pair[i, j] = np.nan if s is None else s
    pair_draws = []
    for _ in range(n_null if n >= 2 else 0):
        perm = rng.permutation(n)
        while np.any(perm == np.arange(n)):
            perm = rng.permutation(n)
        vals = pair[np.arange(n), perm]
        vals = vals[np.isfinite(vals)]
        if vals.size:
            pair_draws.append(float(np.median(vals)))
    return {"null_pairing": _q(pair_draws, s_obs), "null_circular": _q(circ_draws, s_obs)}


def _separation(entries, n_boot, seed, threshold, estimator, n_null=1000) -> dict:
    """Aggregate per-cell S: ``entries`` = [(cell id, history, T_fit, is_transition, phi_column,
    regime)] for cells that fitted the shortcut."""
    per_cell, untrusted, series = {}, [], []
    for cid, hist, t_mem, is_transition, phi_column, regime in entries:
        res = clean_norm_separation_cell(hist, T_fit=t_mem, phi_column=phi_column)
        res["regime"] = regime
        res["transition"] = bool(is_transition)
        res["S_from_peak"] = clean_norm_separation_cell(hist, phi_column=phi_column)["S"]
        per_cell[cid] = res
        if res["S"] is None:
            untrusted.append({"cell": cid, "S": None, "reason": f"S undefined: {res['reason']}"})
        elif res["S"] < threshold:
            untrusted.append({"cell": cid, "S": res["S"], "reason": f"S < {threshold}"})
        if is_transition and res["S"] is not None:
            series.append(_series(hist, t_mem, phi_column))
    trans = [c for c in per_cell.values() if c["transition"]]
    med = stats.median_ci([c["S"] for c in trans], n_boot=n_boot, seed=seed)
    nulls = separation_nulls(series, med["median"], n_null=n_null, seed=seed)
    reason, scored = None, True
    if med["n"] < 3:
        verdict, scored = "not_enough_data", False
        reason = f"{med['n']} transition cells with S, fewer than 3"
    elif any(nl["q95"] is not None and nl["q95"] >= 1.0 - 1e-12 for nl in nulls.values()):
        verdict, scored = "descriptive", False
        reason = ("a null's 95th percentile is already S = 1 (V falls monotonically over the "
                  "window: any switch time gives S = 1), so no S can beat it; reported, not scored")
    else:
        beats = all(nl["q95"] is None or med["median"] > nl["q95"] for nl in nulls.values())
        verdict = "holds" if (med["median"] >= threshold and beats) else "fails"
    sp = stats.median_ci([c["S_spearman"] for c in trans], n_boot=0)
    pk = stats.median_ci([c["S_from_peak"] for c in trans], n_boot=0)
    return {"S": med["median"], "S_ci": med["ci"], "S_ci_method": med["ci_method"],
            "n": med["n"], "threshold": threshold, "verdict": verdict, "scored": scored,
            "reason": reason, **nulls,
            "S_all_cells": stats.median_ci([c["S"] for c in per_cell.values()],
                                               n_boot=0)["median"],
            "S_spearman": sp["median"], "n_spearman": sp["n"],
            "S_from_peak": pk["median"], "n_from_peak": pk["n"],
            "estimator": estimator, "per_cell": per_cell, "untrusted_cells": untrusted}


def clean_norm_separation(cells, histories: dict[str, pd.DataFrame], n_boot: int = 1000,
                          seed: int = 0, threshold: float = S_THRESHOLD,
                          n_null: int = 1000) -> dict:
    """Experiment-level S of an experiment of any domain, with both nulls and the verdict
    (phi_t = the history's ``phi``: ``1 - test_acc`` for modular, border reliance for images).

    Returns ``{S, S_ci, S_ci_method, n, threshold, verdict, scored, reason, null_pairing, null_circular,
    S_all_cells, S_spearman, n_spearman, S_from_peak, n_from_peak, estimator, per_cell,
    untrusted_cells}``; ``null_* = {q95, median, p, n_draws}``; ``per_cell[id]`` is
    :func:`clean_norm_separation_cell`'s dict plus ``regime``, ``transition``, ``S_from_peak``.
    """
    entries = [(r["cell"], histories[r["cell"]], r.get("T_fit"),
                r.get("regime") in TRANSITION_REGIMES, None, r.get("regime"))
               for r in records(cells)
               if num(r.get("T_fit")) is not None and r["cell"] in histories]
    return _separation(entries, n_boot, seed, threshold,
                       "median over intermediate/immediate cells of the rank-biserial correlation of "
                       "ln V_t between rows with shortcut reliance phi_t > 0.5 and the other rows, "
                       "from the norm peak (or T_fit if earlier) to the end of training; holds "
                       "only above both nulls' 95th percentiles", n_null)
