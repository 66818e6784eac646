"""The one retrospective delay-law fit (a *description*, not a verdict; the verdict is the
out-of-sample comparison in :mod:`nht.science.prediction`), made once per experiment by
:func:`nht.science.analyse.analyse_experiment` (``science.json``). ``fit.json`` (:func:`fit_inputs`)
states which cells it uses and excludes, without fitting.

* ``delay_law``: OLS ``delay = k T_pred + b`` with ``T_pred = ln(V_fit / V_final) / (2 eta lambda)``
  (steps; V squared norms), BCa intervals (cells resampled, n >= 8) and Theil-Sen beside it.
* ``baseline_inverse_eta_lambda``: the same with ``x = 1/(eta lambda)`` over the *same* cells.
* ``delay_law.tautology_r2``: R^2 of ``ln T_pred`` on ``ln(delay + margin)`` where ``delay + margin
  = stop_step - T_fit`` is the window over which ``V_fit / V_final`` is read. Because
  ``T_pred = r (delay + margin)`` with ``r`` the cell's mean decay rate over ``2 eta lambda``,
  a value near 1 says the retrospective R^2 mostly restates that ln V falls about linearly in
  time. ``delay_law.decay_fraction`` gives the spread of ``r`` (median, CV).
* ``delay_law_log`` (``ln delay`` on ``ln T_pred``) and ``scaling_exponent`` (``ln delay`` on
  ``ln 1/(eta lambda)``), ``per_op`` with several operations.
* ``censoring``: cells that memorised but had not generalised by the stop (``delay > cap``) are
  not in the fits; they are counted, their caps given, and the delay's Kaplan-Meier median
  (:func:`scipy.stats.ecdf` on right-censored data) is reported beside the fitted cells' median.

Exclusions (``excluded``, counted by reason): ``strong`` (never fitted), ``no_shortcut_fit``
(fitted without the shortcut), ``diverged``, ``censored`` (no T_transition by
the stop), ``no_T_pred``, ``norm_grew`` (``V_final >= V_fit``: the norm did not fall after the
fit, ``T_pred <= 0``, which the law does not describe), ``zero_eta_lambda``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from scipy import stats as st

from nht.core.events import REGIMES
from nht.science import stats
from nht.science.cellrecords import count, delay_status, eta_lambda, num, records

REASONS = ("strong", "no_shortcut_fit", "diverged", "censored", "no_stop_step", "no_T_pred", "norm_grew",
           "zero_eta_lambda")


def usable_cells(recs: list[dict]) -> tuple[list[dict], dict]:
    """Cells that enter the retrospective fits, and ``{reason: count}`` for the others."""
    usable, excluded = [], {}
    for rec in recs:
        kind, value = delay_status(rec)
        if kind != "observed":
            count(excluded, kind)
            continue
        v_mem, v_fin = num(rec.get("V_fit")), num(rec.get("V_final"))
        t_pred = num(rec.get("T_pred"))
        if v_mem is not None and v_fin is not None and v_fin >= v_mem:
            count(excluded, "norm_grew")
        elif t_pred is None:
            count(excluded, "no_T_pred")
        elif eta_lambda(rec) is None:
            count(excluded, "zero_eta_lambda")
        else:
            usable.append(dict(rec, delay=value))
    return usable, excluded


def tautology(usable: list[dict]) -> dict:
    """R^2 of ``ln T_pred`` on ``ln(stop_step - T_fit)`` and the decay fraction
    ``r = T_pred / (stop_step - T_fit)`` (mean decay rate of V over the window, in units of
    ``2 eta lambda``)."""
    pairs = [(num(r["T_pred"]), num(r.get("stop_step")) - num(r["T_fit"])) for r in usable
             if num(r.get("stop_step")) is not None and num(r.get("T_fit")) is not None]
    pairs = [(t, w) for t, w in pairs if t is not None and t > 0 and w > 0]
    out = {"r2": None, "n": len(pairs), "decay_fraction_median": None, "decay_fraction_cv": None,
           "definition": "R^2 of ln T_pred on ln(delay + margin), delay + margin = stop_step - T_fit"}
    if len(pairs) >= 3:
        t, w = np.array(pairs).T
        out["r2"] = stats.line_fit(np.log(w), np.log(t), n_boot=0)["r2"]
        r = t / w
        out["decay_fraction_median"] = float(np.median(r))
        out["decay_fraction_cv"] = float(np.std(r, ddof=1) / np.mean(r))
    return out


def censoring(recs: list[dict], usable: list[dict]) -> dict:
    """Censored cells (``delay > cap``) and the Kaplan-Meier median delay over observed and
    censored delays (``None`` when the survival curve never drops to 0.5: the median then
    exceeds the largest cap, stated in ``km_median_bound``)."""
    obs, caps = [], []
    for rec in recs:
        kind, value = delay_status(rec)
        if kind == "observed" and value is not None:
            obs.append(value)
        elif kind == "censored":
            caps.append(value)
    out = {"n_censored": len(caps), "n_observed": len(obs),
           "caps": sorted(caps), "fitted_median_delay": None, "km_median_delay": None,
           "km_median_bound": None,
           "definition": "censored = memorised, no T_transition by the stop; delay > cap = stop_step - T_fit"}
    if usable:
        out["fitted_median_delay"] = float(np.median([r["delay"] for r in usable]))
    if obs:
        data = st.CensoredData(uncensored=np.asarray(obs, float), right=np.asarray(caps, float))
        sf = st.ecdf(data).sf
        below = np.flatnonzero(sf.probabilities <= 0.5)
        if below.size:
            out["km_median_delay"] = float(sf.quantiles[below[0]])
        else:
            out["km_median_bound"] = f"> {max(obs + caps):g}"
    return out


def _fits(usable: list[dict], excluded: dict, n_boot: int, seed: int) -> dict:
    delay = [r["delay"] for r in usable]
    t_pred = [num(r["T_pred"]) for r in usable]
    inv = [1.0 / eta_lambda(r) for r in usable]
    law = stats.line_fit(t_pred, delay, n_boot=n_boot, seed=seed)
    taut = tautology(usable)
    law.update({"excluded": dict(excluded), "tautology_r2": taut["r2"], "tautology": taut,
                "role": "in-sample description; the verdict is prediction.nht_beats_baseline"})
    base = stats.line_fit(inv, delay, n_boot=n_boot, seed=seed + 1)
    base["excluded"] = dict(excluded)
    log_law = stats.log_fit(t_pred, delay, n_boot=n_boot, seed=seed + 2)
    expo = stats.log_fit(inv, delay, n_boot=n_boot, seed=seed + 3)
    return {"delay_law": law, "baseline_inverse_eta_lambda": base, "delay_law_log": log_law,
            "scaling_exponent": expo}


def fit_delay_laws(cells, n_boot: int = 1000, seed: int = 0) -> dict:
    """All retrospective fits over one experiment's cells (DataFrame or list of norms dicts).

    Returns ``{delay_law, baseline_inverse_eta_lambda, delay_law_log, scaling_exponent, per_op,
    censoring, fit_cells, excluded}``; each fit is :func:`nht.science.stats.line_fit`'s dict (``k, b,
    r2, n, k_ci, b_ci, r2_ci, theil_sen, ...``); ``delay_law`` adds ``excluded``,
    ``tautology_r2`` and ``tautology``.
    """
    recs = records(cells)
    usable, excluded = usable_cells(recs)
    out = _fits(usable, excluded, n_boot, seed)
    out["per_op"] = {}
    ops = sorted({str(r.get("op")) for r in recs if r.get("op") is not None})
    if len(ops) > 1:
        for op in ops:
            sub = [r for r in recs if str(r.get("op")) == op]
            u, e = usable_cells(sub)
            block = _fits(u, e, n_boot, seed)
            out["per_op"][op] = {k: block[k] for k in ("delay_law", "baseline_inverse_eta_lambda",
                                                        "delay_law_log")}
    out["censoring"] = censoring(recs, usable)
    out["fit_cells"] = len(usable)
    out["excluded"] = excluded
    return out


def fit_points(cells) -> dict:
    """``{"law": (T_pred, delay), "baseline": (1/(eta lambda), delay)}`` of the fitted cells."""
    usable, _ = usable_cells(records(cells))
    d = [r["delay"] for r in usable]
    return {"law": ([num(r["T_pred"]) for r in usable], d),
            "baseline": ([1.0 / eta_lambda(r) for r in usable], d)}


def fit_inputs(cells) -> dict:
    """``fit.json`` of an experiment: ``{cells, regimes, fit_cells, excluded, censoring}``, which
    cells the delay-law fits use and why the others are left out, without fitting (the fits are
    made once, by the science stage, :func:`fit_delay_laws`)."""
    recs = records(cells)
    usable, excluded = usable_cells(recs)
    regimes = Counter(r.get("regime") for r in recs)
    return {"cells": len(recs), "regimes": {name: regimes.get(name, 0) for name in REGIMES},
            "fit_cells": len(usable), "excluded": excluded, "censoring": censoring(recs, usable)}
