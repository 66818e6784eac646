"""P6 as a predictive verdict: predictors that use only what is known at the fit time ``T_fit``,
scored out of sample by leave-one-group-out (a group = all cells equal in every non-seed axis,
:data:`nht.science.cellrecords.GROUP_AXES`; its seeds leave together). Delays are in steps, V is the
squared norm, ``eta lambda`` is per step.

Predictors of a held-out cell's delay ``T_transition - T_fit`` (all fitted on the *other* groups only):

* ``nht_theory``: the law as stated, ``max(0, ln(V_fit / V_st_hat)) / (2 eta lambda)``. ``V_fit``
  is read from the cell's history at ``T_fit`` (nothing later). ``V_st_hat`` = geometric median of
  ``V_transition`` (the norm at which a cell generalised) over generalised cells of other groups, first
  at the same lambda and task (:data:`nht.science.cellrecords.TASK_AXES`), else the same task, else all.
* ``nht``: ``k x + b`` with ``x`` the ``nht_theory`` value, ``k, b`` fitted by OLS on the other
  groups' cells (their ``x`` computed without the held-out group nor their own group). The law
  is stated up to a constant (Theta), and this gives it the same two fitted numbers as the
  baseline. This is the predictor the verdict uses.
* ``baseline_inverse_eta_lambda``: ``c / (eta lambda) + b`` fitted on the other groups.
* ``per_lambda_mean``: mean delay of the other groups' cells at the same lambda and task (only
  where lambda repeats).

Errors: relative ``|pred - delay| / delay`` per cell with an observed delay (> 0). Censored cells
(no T_transition by the stop, delay > cap) get the stated lower bound ``max(0, 1 - pred / cap)``; they
are reported apart (``median_with_censored_bound``, ``censored_beyond_cap``) and stay out of the
verdict. ``nht_beats_baseline``: over cells predicted by both, the paired difference
``error_baseline - error_nht``; its median with a BCa interval (>= 8 cells); true only when the
interval lies above 0, false when it lies at or below 0, ``"uncertain"`` when it straddles 0 or
with fewer than 8 cells.

Where only lambda varies the law and ``1/(eta lambda)`` are nearly proportional and no data can
separate them (``discriminating`` is false). The law's own discriminating prediction is tested in
``norm_shift``: at fixed ``eta lambda`` (cells equal in every group axis but ``init_scale``),
scaling the norm at the fit by ``c`` shifts the delay by ``ln(c) / (2 eta lambda)``. Within each
such stratum, ``delay`` and ``x = ln(V_fit) / (2 eta lambda)`` are centred; the pooled slope
``sum(x y) / sum(x^2)`` is 1 under the law and 0 when the delay ignores the norm. Its BCa
interval resamples strata (>= 8 strata, else ``uncertain``); ``holds`` when it lies above 0.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as st

from nht.science import stats
from nht.science.cellrecords import (GROUP_AXES, TASK_AXES, count, delay_status, eta_lambda, group_of,
                             is_diverged, key_of, num, records, value_at_fit)

PREDICTORS = ("nht", "nht_theory", "baseline_inverse_eta_lambda", "per_lambda_mean")
SHIFT_AXES = tuple(a for a in GROUP_AXES if a != "init_scale")


def _targets(recs: list[dict], histories: dict) -> tuple[list[dict], dict]:
    out, skipped = [], {}
    for rec in recs:
        kind, value = delay_status(rec)
        if kind not in ("observed", "censored"):
            count(skipped, kind)
            continue
        el = eta_lambda(rec)
        v_mem = value_at_fit(histories.get(rec["cell"]), rec.get("T_fit"), "V",
                             fallback=rec.get("V_fit"))
        if el is None or v_mem is None or v_mem <= 0:
            count(skipped, "zero_eta_lambda" if el is None else "no_V_fit")
            continue
        if kind == "observed" and value <= 0:
            count(skipped, "zero_delay")
            continue
        out.append({"cell": rec["cell"], "group": group_of(rec), "kind": kind, "value": value,
                    "el": el, "V_fit": v_mem, "lam": str(rec.get("weight_decay")),
                    "task": key_of(rec, TASK_AXES), "shift_stratum": key_of(rec, SHIFT_AXES)})
    return out, skipped


def _generalised(recs: list[dict]) -> list[dict]:
    return [{"group": group_of(r), "lam": str(r.get("weight_decay")),
             "task": key_of(r, TASK_AXES), "V_transition": num(r.get("V_transition"))}
            for r in recs if not is_diverged(r) and num(r.get("T_transition")) is not None
            and (num(r.get("V_transition")) or 0) > 0]


def v_st_hat(gen: list[dict], target: dict, excluded_groups: set) -> tuple[float | None, int | None]:
    """Geometric median of ``V_transition`` over generalised cells outside ``excluded_groups``: same
    lambda and task (level 1), else same task (2), else all (3). Returns ``(V_st_hat, level)``."""
    pool = [g for g in gen if g["group"] not in excluded_groups]
    levels = (lambda g: g["lam"] == target["lam"] and g["task"] == target["task"],
              lambda g: g["task"] == target["task"],
              lambda g: True)
    for level, match in enumerate(levels, start=1):
        vals = [g["V_transition"] for g in pool if match(g)]
        if vals:
            return float(np.exp(np.median(np.log(vals)))), level
    return None, None


def _x_theory(gen, t, excluded) -> tuple[float | None, int | None, float | None]:
    vst, level = v_st_hat(gen, t, excluded)
    if vst is None:
        return None, None, None
    return max(0.0, math.log(t["V_fit"] / vst)) / (2.0 * t["el"]), level, vst


def _linear(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 3 or np.ptp(x) == 0:
        return None
    r = st.linregress(x, y)
    return float(r.slope), float(r.intercept)


def loo_predictions(recs: list[dict], histories: dict) -> tuple[dict, dict]:
    """``{cell: {kind, delay_or_cap, group, <predictor>: prediction or None, V_st_hat,
    V_st_level}}`` for every memorising cell, and ``{reason: count}`` of cells left out."""
    targets, skipped = _targets(recs, histories)
    gen = _generalised(recs)
    per_cell = {}
    for g in sorted({t["group"] for t in targets}):
        test = [t for t in targets if t["group"] == g]
        train = [t for t in targets if t["group"] != g and t["kind"] == "observed"]
        xs = [(_x_theory(gen, t, {g, t["group"]})[0], t["value"]) for t in train]
        xs = [(x, d) for x, d in xs if x is not None]
        law = _linear([x for x, _ in xs], [d for _, d in xs])
        base = _linear([1.0 / t["el"] for t in train], [t["value"] for t in train])
        for t in test:
            x, level, vst = _x_theory(gen, t, {g})
            same = [u["value"] for u in train if u["lam"] == t["lam"] and u["task"] == t["task"]]
            per_cell[t["cell"]] = {
                "kind": t["kind"], "delay_or_cap": t["value"], "group": "|".join(g),
                "V_fit": t["V_fit"], "V_st_level": level, "V_st_hat": vst,
                "nht_theory": x,
                "nht": None if (x is None or law is None) else law[0] * x + law[1],
                "baseline_inverse_eta_lambda": None if base is None
                else base[0] / t["el"] + base[1],
                "per_lambda_mean": float(np.mean(same)) if same else None}
    return per_cell, skipped


def _error(pred, kind, value) -> float | None:
    if pred is None:
        return None
    if kind == "observed":
        return abs(pred - value) / value
    return max(0.0, 1.0 - pred / value) if value > 0 else None


def _summary(per_cell: dict, name: str, n_boot: int, seed: int) -> dict:
    obs = [_error(c[name], "observed", c["delay_or_cap"]) for c in per_cell.values()
           if c["kind"] == "observed"]
    cens = [c for c in per_cell.values() if c["kind"] == "censored" and c[name] is not None]
    obs_ok = [e for e in obs if e is not None]
    bounds = [_error(c[name], "censored", c["delay_or_cap"]) for c in cens]
    med = stats.median_ci(obs_ok, n_boot=n_boot, seed=seed)
    return {"median": med["median"], "ci": med["ci"], "ci_method": med["ci_method"],
            "n": med["n"], "not_predicted": len(obs) - len(obs_ok),
            "n_censored": len(cens),
            "median_with_censored_bound": (float(np.median(obs_ok + bounds))
                                           if obs_ok or bounds else None),
            "censored_beyond_cap": (sum(c[name] >= c["delay_or_cap"] for c in cens) / len(cens)
                                    if cens else None)}


def paired_comparison(per_cell: dict, a: str, b: str, n_boot: int, seed: int) -> dict:
    """Median of ``error_b - error_a`` over observed cells predicted by both, BCa interval;
    ``a_better`` is true when the interval lies above 0, false when it lies at or below 0, and
    ``"uncertain"`` when it straddles 0 or below :data:`nht.science.stats.MIN_BOOT_N` cells (no
    interval)."""
    diffs = []
    for c in per_cell.values():
        if c["kind"] == "observed" and c[a] is not None and c[b] is not None:
            diffs.append(_error(c[b], "observed", c["delay_or_cap"])
                         - _error(c[a], "observed", c["delay_or_cap"]))
    med = stats.median_ci(diffs, n_boot=n_boot, seed=seed)
    if med["ci"] is not None and med["ci"][0] > 0:
        better = True
    elif med["ci"] is not None and med["ci"][1] <= 0:
        better = False
    else:
        better = "uncertain"
    return dict(med, a_better=better, definition=f"median over cells of error({b}) - error({a})")


def norm_shift(per_cell: dict, recs: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """The law's discriminating prediction at fixed ``eta lambda`` (module docstring)."""
    by_cell = {r["cell"]: r for r in recs}
    strata: dict[tuple, list] = {}
    for cid, c in per_cell.items():
        if c["kind"] != "observed":
            continue
        rec = by_cell[cid]
        x = math.log(c["V_fit"]) / (2.0 * eta_lambda(rec))
        strata.setdefault(key_of(rec, SHIFT_AXES), []).append((x, c["delay_or_cap"]))
    blocks = []
    for pts in strata.values():
        x, y = np.array(pts, float).T
        if len(pts) >= 2 and np.ptp(x) > 0:
            blocks.append((x - x.mean(), y - y.mean()))
    out = {"slope": None, "ci": None, "ci_method": None, "n_strata": len(blocks),
           "n_cells": int(sum(len(b[0]) for b in blocks)), "theory_slope": 1.0,
           "consistent_with_theory": None, "verdict": "not_enough_data",
           "definition": "pooled within-stratum slope of delay on ln(V_fit)/(2 eta lambda), "
                         "strata = equal in every group axis but init_scale (fixed eta lambda)"}
    if not blocks:
        return out

    def pooled(idx):
        sel = [blocks[int(i)] for i in np.atleast_1d(idx)]
        sxx = sum(float((bx * bx).sum()) for bx, _ in sel)
        return sum(float((bx * by).sum()) for bx, by in sel) / sxx if sxx > 0 else np.nan

    out["slope"] = num(pooled(np.arange(len(blocks))))
    ci, method = stats.bootstrap_ci((np.arange(len(blocks), dtype=float),), pooled,
                                    n_boot=n_boot, seed=seed)
    out.update({"ci": ci, "ci_method": method})
    if ci is None:
        out["verdict"] = "uncertain"
    else:
        out["verdict"] = "holds" if ci[0] > 0 else "fails"
        out["consistent_with_theory"] = bool(ci[0] <= 1.0 <= ci[1])
    return out


def predictive_verdict(cells, histories: dict, n_boot: int = 1000, seed: int = 0) -> dict:
    """The ``prediction`` block of the experiment summary (see the module docstring).

    Returns ``{loo_error: {nht, nht_theory, baseline_inverse_eta_lambda, per_lambda_mean},
    nht_beats_baseline, paired_difference, nht_vs_per_lambda_mean, discriminating, n_groups,
    group_axes, norm_shift, per_cell, not_predicted, definition}``; each ``loo_error`` entry is
    ``{median, ci, ci_method, n, not_predicted, n_censored, median_with_censored_bound,
    censored_beyond_cap}`` (relative errors of the delay).
    """
    recs = records(cells)
    per_cell, skipped = loo_predictions(recs, histories)
    loo = {name: _summary(per_cell, name, n_boot, seed + i) for i, name in enumerate(PREDICTORS)}
    paired = paired_comparison(per_cell, "nht", "baseline_inverse_eta_lambda", n_boot, seed)
    vs_mean = paired_comparison(per_cell, "nht", "per_lambda_mean", n_boot, seed + 7)
    obs = [r for r in recs if r.get("cell") in per_cell]
    by_el: dict[tuple, set] = {}
    for r in obs:
        by_el.setdefault((round(eta_lambda(r), 15), key_of(r, TASK_AXES)), set()).add(group_of(r))
    return {"loo_error": loo, "nht_beats_baseline": paired["a_better"],
            "paired_difference": paired, "nht_vs_per_lambda_mean": vs_mean,
            "discriminating": any(len(g) > 1 for g in by_el.values()),
            "n_groups": len({c["group"] for c in per_cell.values()}),
            "group_axes": list(GROUP_AXES),
            "norm_shift": norm_shift(per_cell, recs, n_boot=n_boot, seed=seed + 11),
            "per_cell": per_cell, "not_predicted": skipped,
            "definition": "leave-one-group-out relative delay error of predictors known at T_fit; "
                          "nht_beats_baseline: paired interval of error(baseline) - error(nht) "
                          "above 0"}
