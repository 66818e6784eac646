"""P6 as a predictive verdict, and the norm-shift test: predictors that use only what is known at
the fit time ``T_fit``, scored out of sample by leave-one-group-out (a group = all cells equal in
every non-seed axis, :data:`nht.science.cellrecords.GROUP_AXES`: the cells that share a fit and are
held out together). Delays are in steps, V is the squared norm, ``eta lambda`` is per step.

Predictors of a held-out cell's delay ``T_transition - T_fit`` (all fitted on the *other* groups only):

* ``nht_theory``: the law as stated, ``max(0, ln(V_fit / V_st_hat)) / (2 eta lambda)``. ``V_fit``
  is read from the cell's history at ``T_fit`` (nothing later). ``V_st_hat`` = geometric median of
  ``V_transition`` (the norm at which a cell generalised) over generalised cells of other groups, first
  at the same lambda and task (:data:`nht.science.cellrecords.TASK_AXES`), else the same task, else all.
* ``nht``: ``k x + b`` with ``x`` the ``nht_theory`` value, ``k, b`` fitted by OLS on the other
  groups' observed cells (their ``x`` computed without the held-out group nor their own group). The
  law is stated up to a constant (Theta), and this gives it the same two fitted numbers as the
  baseline. This is the predictor the verdict uses.
* ``baseline_inverse_eta_lambda``: ``c / (eta lambda) + b`` fitted on the other groups.
* ``same_eta_lambda_mean`` (the *fair null*): mean observed delay of the other groups' cells at the
  same ``eta lambda`` and task. It knows everything a ``1/(eta lambda)`` account can know about the
  held-out cell and nothing about its norm; it exists only where another group shares the
  ``eta lambda`` (e.g. grids over ``init_scale`` or over ``lr`` x ``weight_decay`` with equal products).
* ``per_lambda_mean``: mean delay of the other groups' cells at the same lambda and task (pools
  different learning rates; kept for comparison).

Errors (relative): observed cells ``|pred - delay| / delay``; censored cells (memorised, no
``T_transition`` by the stop: ``delay > cap = stop_step - T_fit``) are scored as bounds, not dropped:
error ``0`` when the prediction is at or beyond the cap (consistent with the bound), else the
shortfall ``1 - pred / cap``. ``loo_error[name].median`` is over observed and censored cells
together; ``median_observed_only`` beside it.

Intervals resample held-out *groups*, not cells (:func:`nht.science.stats.group_median_ci`, BCa,
>= 8 groups; fewer: no interval). ``paired_difference`` = median over cells of ``error(1/(eta
lambda)) - error(nht)``; ``nht_vs_same_eta_lambda_mean`` the same against the fair null (cells where
it exists). ``nht_beats_baseline`` / ``nht_beats_same_eta_lambda_mean``: true when the interval lies
above 0, false when it lies at or below 0, ``"uncertain"`` when it straddles 0 or has no interval.
``nht_beats_nulls`` (the P6 verdict input): true when NHT beats the ``1/(eta lambda)`` baseline and
(where the fair null exists for some cell) the same-``eta lambda`` mean; false when either
comparison is false; else ``"uncertain"``.

Where only lambda varies the law and ``1/(eta lambda)`` are nearly proportional and no data can
separate them (``discriminating`` is false). The law's own discriminating prediction is tested by
:func:`norm_shift`: at fixed ``eta lambda`` (a *stratum*: cells equal in every group axis but
``init_scale``), scaling the norm at the fit by ``c`` shifts the delay by ``ln(c) / (2 eta lambda)``.
Within each stratum, ``delay`` and ``x = ln(V_fit) / (2 eta lambda)`` are centred on the stratum's
means; the pooled slope ``sum(x y) / sum(x^2)`` is 1 under the law and 0 when the delay ignores the
norm (the ``1/(eta lambda)`` account). See :func:`norm_shift` for its interval, p-value and verdict.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as st

from nht.science import stats
from nht.science.cellrecords import (GROUP_AXES, TASK_AXES, count, delay_status, eta_lambda, group_of,
                             is_diverged, key_of, num, records, value_at_fit)

PREDICTORS = ("nht", "nht_theory", "baseline_inverse_eta_lambda", "same_eta_lambda_mean",
              "per_lambda_mean")
SHIFT_AXES = tuple(a for a in GROUP_AXES if a != "init_scale")
N_PERM = 2000


def _el_key(el: float) -> str:
    """``eta lambda`` as a key robust to float products (5e-4 * 2 == 1e-3 * 1)."""
    return f"{el:.6g}"


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
        if value is None or value <= 0:
            count(skipped, "zero_delay" if kind == "observed" else "zero_cap")
            continue
        out.append({"cell": rec["cell"], "group": group_of(rec), "kind": kind, "value": value,
                    "el": el, "el_key": _el_key(el), "V_fit": v_mem,
                    "lam": str(rec.get("weight_decay")), "task": key_of(rec, TASK_AXES),
                    "shift_stratum": key_of(rec, SHIFT_AXES)})
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
    """``{cell: {kind, delay_or_cap, group, V_fit, V_st_hat, V_st_level, <predictor>: prediction
    or None}}`` for every memorising cell (observed and censored), and ``{reason: count}`` of cells
    left out. Every predictor of a cell is fitted without the cell's group."""
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
            same_lam = [u["value"] for u in train if u["lam"] == t["lam"] and u["task"] == t["task"]]
            same_el = [u["value"] for u in train
                       if u["el_key"] == t["el_key"] and u["task"] == t["task"]]
            per_cell[t["cell"]] = {
                "kind": t["kind"], "delay_or_cap": t["value"], "group": "|".join(g),
                "V_fit": t["V_fit"], "V_st_level": level, "V_st_hat": vst,
                "eta_lambda": t["el"], "stratum": "|".join(t["shift_stratum"]),
                "nht_theory": x,
                "nht": None if (x is None or law is None) else law[0] * x + law[1],
                "baseline_inverse_eta_lambda": None if base is None
                else base[0] / t["el"] + base[1],
                "same_eta_lambda_mean": float(np.mean(same_el)) if same_el else None,
                "per_lambda_mean": float(np.mean(same_lam)) if same_lam else None}
    return per_cell, skipped


def _error(pred, kind, value) -> float | None:
    """Relative error of ``pred``: observed ``|pred - delay| / delay``; censored (``value`` = the
    cap) ``max(0, 1 - pred / cap)``: 0 when the prediction is beyond the cap, else the shortfall."""
    if pred is None or value is None or value <= 0:
        return None
    if kind == "observed":
        return abs(pred - value) / value
    return max(0.0, 1.0 - pred / value)


def _cell_error(c: dict, name: str) -> float | None:
    return _error(c.get(name), c["kind"], c["delay_or_cap"])


def _group(cid: str, c: dict) -> str:
    return c.get("group") or cid


def _summary(per_cell: dict, name: str, n_boot: int, seed: int) -> dict:
    errs = [(_cell_error(c, name), _group(cid, c), c["kind"]) for cid, c in per_cell.items()]
    scored = [(e, g, k) for e, g, k in errs if e is not None]
    med = stats.group_median_ci([e for e, _, _ in scored], [g for _, g, _ in scored],
                                n_boot=n_boot, seed=seed)
    obs = [e for e, _, k in scored if k == "observed"]
    cens = [c for c in per_cell.values() if c["kind"] == "censored" and c.get(name) is not None]
    return {"median": med["median"], "ci": med["ci"], "ci_method": med["ci_method"],
            "n": med["n"], "n_groups": med["n_groups"], "resampled": "groups",
            "n_observed": len(obs), "n_censored": len(cens),
            "not_predicted": sum(1 for e, _, _ in errs if e is None),
            "median_observed_only": float(np.median(obs)) if obs else None,
            "median_with_censored_bound": med["median"],
            "censored_beyond_cap": (sum(c[name] >= c["delay_or_cap"] for c in cens) / len(cens)
                                    if cens else None)}


def _better(ci) -> bool | str:
    if ci is not None and ci[0] > 0:
        return True
    if ci is not None and ci[1] <= 0:
        return False
    return "uncertain"


def paired_comparison(per_cell: dict, a: str, b: str, n_boot: int, seed: int) -> dict:
    """Median over cells predicted by both (observed and censored, module docstring) of
    ``error_b - error_a``, interval from resampling groups (a cell without ``group`` is its own
    group); ``a_better`` is true when the interval lies above 0, false when it lies at or below 0,
    and ``"uncertain"`` when it straddles 0 or has no interval (fewer than
    :data:`nht.science.stats.MIN_BOOT_N` groups)."""
    diffs, groups = [], []
    for cid, c in per_cell.items():
        ea, eb = _cell_error(c, a), _cell_error(c, b)
        if ea is not None and eb is not None:
            diffs.append(eb - ea)
            groups.append(_group(cid, c))
    med = stats.group_median_ci(diffs, groups, n_boot=n_boot, seed=seed)
    return dict(med, a_better=_better(med["ci"]),
                b_better_share=(sum(d < 0 for d in diffs) / len(diffs)) if diffs else None,
                definition=f"median over cells of error({b}) - error({a}); censored cells scored "
                           "as bounds; interval resamples groups")


def _stratum_blocks(per_cell: dict) -> list[dict]:
    """Strata with >= 2 groups (init scales) among their observed cells and varying ``x``."""
    strata: dict[str, list] = {}
    for c in per_cell.values():
        if c["kind"] != "observed":
            continue
        x = math.log(c["V_fit"]) / (2.0 * c["eta_lambda"])
        strata.setdefault(c["stratum"], []).append((x, c["delay_or_cap"], c["group"]))
    blocks = []
    for key, pts in sorted(strata.items()):
        x = np.array([p[0] for p in pts], float)
        y = np.array([p[1] for p in pts], float)
        groups = [p[2] for p in pts]
        names = sorted(set(groups))
        if len(names) < 2 or np.ptp(x) <= 0:
            continue
        gidx = np.array([names.index(g) for g in groups])
        blocks.append({"stratum": key, "x": x, "y": y, "g": gidx, "n_groups": len(names)})
    return blocks


def _pooled(blocks, xs=None, ys=None) -> float | None:
    sxy = sxx = 0.0
    for i, b in enumerate(blocks):
        x = b["x"] if xs is None else xs[i]
        y = b["y"] if ys is None else ys[i]
        if x.size < 2:
            continue
        xc = x - x.mean()
        sxy += float((xc * (y - y.mean())).sum())
        sxx += float((xc * xc).sum())
    return sxy / sxx if sxx > 0 else None


def norm_shift(per_cell: dict, recs: list[dict] | None = None, n_boot: int = 1000, seed: int = 0,
               n_perm: int = N_PERM) -> dict:
    """The law's discriminating prediction at fixed ``eta lambda``: the pooled within-stratum slope
    of the observed delay (steps) on ``x = ln(V_fit) / (2 eta lambda)`` (steps).

    *Strata*: cells equal in every group axis but ``init_scale`` (so ``eta lambda`` and the task are
    fixed); a stratum counts when its observed cells span >= 2 groups (init scales) with varying
    ``x``. Within each, ``x`` and the delay are centred on the stratum's means; slope =
    ``sum(x y) / sum(x^2)`` over all counted strata. The law predicts 1, a ``1/(eta lambda)``
    account (delay blind to the norm) 0.

    * ``ci``: 95 % percentile interval of a stratified group bootstrap (``n_boot`` draws): within
      each stratum its groups are resampled with replacement (a group's seeds travel together),
      then the pooled slope is recomputed. With few groups the interval is coarse; the p-value
      below guards the false-positive rate.
    * ``p``: one-sided permutation p-value for slope > 0 (``n_perm`` draws): delays permuted among
      the cells of each stratum (the null: the delay does not depend on ``V_fit`` at fixed ``eta
      lambda``), ``(1 + #{null slope >= slope}) / (1 + n_perm)``.
    * ``verdict`` (also the scorecard's ``norm_shift`` entry):
      ``holds`` ("supports the law") when the interval lies above 0 *and* ``p <= 0.05`` (``reading``
      says whether the interval also contains the law's 1);
      ``fails`` ("contradicts the law") when the interval lies below 1 and does not exclude 0 from
      above (``ci[1] < 1`` and ``ci[0] <= 0``: the norm shift the law predicts is rejected while no
      effect is not); ``uncertain`` otherwise (an interval containing both 0 and 1, or an effect
      above 0 without a permutation p <= 0.05); ``not_enough_data`` with ``reason`` when fewer than
      2 strata count. ``consistent_with_theory``: the interval contains 1.

    Censored cells (``delay > cap``) are not in the slope (``n_censored_in_strata`` counts them):
    they sit mostly at large ``V_fit``, so leaving them out can only flatten the slope.

    ``recs`` is accepted for backward compatibility and not used.
    """
    blocks = _stratum_blocks(per_cell)
    n_cens = sum(1 for c in per_cell.values() if c["kind"] == "censored")
    out = {"slope": None, "ci": None, "ci_method": None, "p": None, "n_strata": len(blocks),
           "n_groups": int(sum(b["n_groups"] for b in blocks)),
           "n_cells": int(sum(b["x"].size for b in blocks)), "n_censored_in_strata": n_cens,
           "theory_slope": 1.0, "null_slope": 0.0, "consistent_with_theory": None,
           "verdict": "not_enough_data", "reading": None, "reason": None,
           "per_stratum": {b["stratum"]: _pooled([b]) for b in blocks},
           "definition": "pooled within-stratum slope of delay on ln(V_fit)/(2 eta lambda), "
                         "strata = equal in every group axis but init_scale (fixed eta lambda); "
                         "law 1, 1/(eta lambda) account 0; interval: groups resampled within "
                         "strata; p: delays permuted within strata"}
    if len(blocks) < 2:
        out["reason"] = (f"{len(blocks)} stratum(a) with >= 2 init scales at fixed eta lambda; "
                         "need >= 2")
        return out
    slope = _pooled(blocks)
    out["slope"] = slope
    rng = np.random.default_rng(seed)
    # permutation null: delays shuffled within each stratum
    null = np.zeros(n_perm)
    sxx = 0.0
    for b in blocks:
        xc = b["x"] - b["x"].mean()
        sxx += float((xc * xc).sum())
        yp = rng.permuted(np.tile(b["y"], (n_perm, 1)), axis=1)
        null += (yp - yp.mean(axis=1, keepdims=True)) @ xc
    null /= sxx
    out["p"] = stats.permutation_p(null, slope)
    # stratified group bootstrap
    draws = []
    for _ in range(max(0, int(n_boot))):
        xs, ys = [], []
        for b in blocks:
            pick = rng.integers(b["n_groups"], size=b["n_groups"])
            sel = np.concatenate([np.flatnonzero(b["g"] == k) for k in pick])
            xs.append(b["x"][sel])
            ys.append(b["y"][sel])
        v = _pooled(blocks, xs, ys)
        if v is not None:
            draws.append(v)
    if len(draws) >= 20:
        lo, hi = np.quantile(draws, [0.025, 0.975])
        ci = [float(lo), float(hi)]
        out.update({"ci": ci, "ci_method": "percentile, groups resampled within strata",
                    "consistent_with_theory": bool(ci[0] <= 1.0 <= ci[1])})
        if ci[0] > 0 and out["p"] is not None and out["p"] <= 0.05:
            out["verdict"] = "holds"
            out["reading"] = ("supports the law (slope consistent with 1)" if ci[0] <= 1.0 <= ci[1]
                              else "supports the law's direction: the norm shifts the delay, but "
                                   "the slope is not 1")
        elif ci[1] < 1.0 and ci[0] <= 0:
            out["verdict"], out["reading"] = "fails", "contradicts the law"
        else:
            out["verdict"], out["reading"] = "uncertain", "undecided"
            out["reason"] = ("interval contains 0 and 1" if ci[0] <= 0 else
                             f"interval above 0 but permutation p = {out['p']:.3g} > 0.05")
    else:
        out["verdict"], out["reason"] = "uncertain", "no bootstrap interval"
    return out


def _combined(*flags) -> bool | str:
    flags = [f for f in flags if f is not None]
    if any(f is False for f in flags):
        return False
    if flags and all(f is True for f in flags):
        return True
    return "uncertain"


def predictive_verdict(cells, histories: dict, n_boot: int = 1000, seed: int = 0) -> dict:
    """The ``prediction`` block of the experiment summary (see the module docstring).

    Returns ``{loo_error: {<predictor>: ...}, nht_beats_baseline, nht_beats_same_eta_lambda_mean,
    nht_beats_nulls, paired_difference, nht_vs_same_eta_lambda_mean, nht_vs_per_lambda_mean,
    discriminating, n_groups, group_axes, norm_shift, per_cell, not_predicted, definition}``; each
    ``loo_error`` entry is ``{median, ci, ci_method, n, n_groups, resampled, n_observed,
    n_censored, not_predicted, median_observed_only, median_with_censored_bound,
    censored_beyond_cap}`` (relative errors of the delay; censored cells scored as bounds).
    """
    recs = records(cells)
    per_cell, skipped = loo_predictions(recs, histories)
    loo = {name: _summary(per_cell, name, n_boot, seed + i) for i, name in enumerate(PREDICTORS)}
    paired = paired_comparison(per_cell, "nht", "baseline_inverse_eta_lambda", n_boot, seed)
    vs_el = paired_comparison(per_cell, "nht", "same_eta_lambda_mean", n_boot, seed + 5)
    vs_mean = paired_comparison(per_cell, "nht", "per_lambda_mean", n_boot, seed + 7)
    beats_el = vs_el["a_better"] if vs_el["n"] else None
    obs = [r for r in recs if r.get("cell") in per_cell]
    by_el: dict[tuple, set] = {}
    for r in obs:
        by_el.setdefault((_el_key(eta_lambda(r)), key_of(r, TASK_AXES)), set()).add(group_of(r))
    return {"loo_error": loo, "nht_beats_baseline": paired["a_better"],
            "nht_beats_same_eta_lambda_mean": beats_el,
            "nht_beats_nulls": _combined(paired["a_better"], beats_el),
            "paired_difference": paired, "nht_vs_same_eta_lambda_mean": vs_el,
            "nht_vs_per_lambda_mean": vs_mean,
            "discriminating": any(len(g) > 1 for g in by_el.values()),
            "n_groups": len({c["group"] for c in per_cell.values()}),
            "group_axes": list(GROUP_AXES),
            "norm_shift": norm_shift(per_cell, n_boot=n_boot, seed=seed + 11),
            "per_cell": per_cell, "not_predicted": skipped,
            "definition": "leave-one-group-out relative delay error of predictors known at T_fit "
                          "(censored cells scored as bounds); nht_beats_nulls: the paired "
                          "intervals (groups resampled) of error(1/(eta lambda)) - error(nht) and "
                          "error(same-eta-lambda mean) - error(nht) both above 0"}
