"""The science layer for modular experiments: delay-law fits with uncertainty, the decay-rate
check, prospective prediction of T_gen, the clean-norm-separation score S, and the per-cell
inputs of the P1/P2/P4 scorecard entries.

Conventions: ``V`` is always the *squared* L2 norm ``||theta||^2``; time is in optimizer steps;
``eta`` is the learning rate ``lr`` and ``lambda`` the ``weight_decay`` of a cell. Everything
returned is JSON-serialisable (undefined numbers are ``None``). The entry point is
:func:`analyse_modular`; every piece is also a pure function, tested in ``tests/test_science.py``.

Estimators (also documented in ``workflow/report/science.rst``)
----------------------------------------------------------------

**Delay law.** ``delay = T_gen - T_mem`` against ``T_pred = ln(V_mem / V_final) / (2 eta lambda)``;
OLS ``delay = k T_pred + b`` with pairs-bootstrap 95 % intervals (cells resampled, seeded) for
``k``, ``b`` and ``R^2`` (:func:`nht.stats.bootstrap_fit`). The baseline replaces ``T_pred`` by
``1/(eta lambda)``. ``delay_law_log`` fits ``ln delay`` vs ``ln T_pred`` (theory: slope 1), and
``scaling_exponent`` fits ``ln delay`` vs ``ln(1/(eta lambda))`` (the "T ∝ 1/λ" check: slope 1).
Cells leave a fit only for a stated reason, counted in ``excluded``: their regime when they have
no delay (``no_fit``, ``shortcut_persists``, ``diverged``), ``no_T_pred`` (``T_pred`` undefined),
``zero_eta_lambda`` (baseline only), ``nonpositive`` (log fits only).

**Decay rate.** Per cell with a delay, OLS of ``ln V_t`` on ``t`` over the evaluation rows with
``T_mem <= t <= T_gen`` (at least 3 rows) gives ``gamma_fit``; the reported ratio is
``gamma_fit / (2 eta lambda)``. Pure decoupled decay alone gives exactly 1; theory says 1 for SGD
and >= 1 for AdamW (gradients can only add contraction in the shortcut phase if the law holds).

**Prospective prediction.** For every cell that memorised, at ``T_mem`` and without any value of
the cell after ``T_mem``::

    T_gen_pred = T_mem + max(0, ln(V_mem / V_st_hat)) / (2 eta lambda)

``V_mem`` is read from the cell's history truncated at ``T_mem`` (:func:`predict_T_gen` never sees
a later row). ``V_st_hat`` is the geometric median (``exp(median(ln V))``) of ``V_final`` of
*other* cells that generalised ("peers"), searched in this order: same
``(weight_decay, lr, op, p, model, optimizer)``; same ``(weight_decay, lr)``; same ``weight_decay``.
The level used is recorded. Error: ``|T_gen_pred - T_gen| / T_gen`` for cells that generalised
(median overall and per regime); for ``shortcut_persists`` cells (censored: ``T_gen >
stop_step``) the share whose prediction also lies beyond ``stop_step`` is reported. An alternative
estimate with peers' ``V_gen`` (the norm at which the peers generalised) is reported beside it.

**Clean-norm separation S.** Per cell: shortcut reliance ``phi_t = 1 - test_acc_t``; window =
evaluation rows from the step of the maximum of ``V`` (first occurrence) -- or from ``T_mem`` if
that is earlier -- to the end of training. (Starting at ``T_mem`` when the norm peaks only later
keeps cells whose norm rises through the transition in the score, where they count against the
claim, instead of leaving them undefined.)
Rows with ``phi_t > 0.5`` are *shortcut-reliant*, the others *structured*. ``S_cell`` is the
rank-biserial correlation of ``ln V`` between the two groups::

    S_cell = P(ln V_reliant > ln V_structured) - P(ln V_reliant < ln V_structured)  (= 2 AUC - 1)

over all (reliant, structured) pairs of rows in the window. ``S_cell = 1`` when every
shortcut-reliant state has a higher norm than every structured state (the norm separates them
cleanly), ``~0`` when the norm carries no information about reliance, ``< 0`` when reversed.
``None`` (with a reason) below 5 rows or with fewer than 2 rows on either side. Experiment
``S`` = median of ``S_cell`` over cells that made the transition (regime ``delayed`` or
``immediate``), with a bootstrap interval; verdict ``holds`` if ``S >= 0.8`` else ``fails``
(``not_enough_data`` below 3 cells). A cell is *untrusted* (its timing prediction should not be
relied on) when ``S_cell`` is undefined or below 0.8.

Why not the Spearman correlation of ``ln V_t`` with ``phi_t`` (the form first suggested in issue
3)? Grokking transitions are step-like, so ``phi`` is nearly binary, and a Spearman correlation
with a binary variable cannot exceed ``sqrt(3 q (1 - q)) <= 0.87`` (``q`` = share of reliant
rows) even for a perfect separation: the verdict would measure the window's composition, not the
separation. It is still reported per cell and per experiment as ``S_spearman``.

**P1 input, norm ordering.** Over ``delayed`` cells: share with ``V_mem > V_final`` (the law's
``V_sc > V_st``), with a Wilson 95 % interval; the share with ``V_mem > V_gen`` is given beside.

**P2 input, regime ordering.** Regimes are ranked along lambda: ``shortcut_persists`` (weak) = 0,
``delayed``/``immediate`` = 1, ``no_fit`` (suppressed) = 2; ``diverged`` cells are left out.
Within each slice of cells equal in every setting but ``weight_decay``, every pair with
``lambda_i < lambda_j`` is *discordant* if ``rank_i > rank_j``. ``concordance = 1 - discordant /
pairs``; ``all_present`` says whether the three classes occur; ``n_lambda`` counts distinct lambdas.

**P4 input, layer hierarchy.** Per ``delayed`` cell and weight tensor (parameter names ending in
``weight``, normalisation layers excluded): contraction ``c = ln(V_mem,l / V_final,l)``. Statistic:
share of cells whose readout (``out.weight`` MLP, ``head.weight`` transformer) has the largest
contraction; the per-layer medians are given beside.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable

import numpy as np
import pandas as pd

from nht import stats

S_THRESHOLD = 0.8
S_MIN_POINTS = 5
PHI_SPLIT = 0.5
READOUT_NAMES = ("out.weight", "head.weight")
TRANSITION_REGIMES = ("delayed", "immediate")
REGIME_RANK = {"shortcut_persists": 0, "delayed": 1, "immediate": 1, "no_fit": 2}
PEER_LEVELS = (("weight_decay", "lr", "op", "p", "model", "optimizer"),
               ("weight_decay", "lr"),
               ("weight_decay",))
SLICE_KEYS = ("lr", "init_scale", "seed", "op", "p", "train_frac", "split_seed", "model",
              "optimizer")
LAYER_FIELDS = ("V_init", "V_mem", "V_gen", "V_peak", "V_final")


# ----------------------------------------------------------------------------- helpers

def _num(value) -> float | None:
    return stats.finite_or_none(value)


def clean_json(obj: Any) -> Any:
    """Recursively turn numpy scalars/arrays into Python types and NaN/inf into ``None``."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [clean_json(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _num(obj)
    if obj is None or isinstance(obj, str):
        return obj
    try:
        if pd.isna(obj):
            return None
    except (TypeError, ValueError):
        pass
    return obj


def _records(cells: pd.DataFrame) -> list[dict]:
    recs = []
    for rec in cells.to_dict("records"):
        recs.append({k: (None if (not isinstance(v, (dict, list)) and pd.isna(v)) else v)
                     for k, v in rec.items()})
    return recs


def _eta_lambda(rec: dict) -> float | None:
    lr, wd = _num(rec.get("lr")), _num(rec.get("weight_decay"))
    if lr is None or wd is None or lr * wd <= 0:
        return None
    return lr * wd


def _hist_sorted(history: pd.DataFrame) -> pd.DataFrame:
    return history.sort_values("step", kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- delay laws

def _fit_block(recs: list[dict], n_boot: int, seed: int) -> dict:
    """Delay law, baseline and log-space fits over the given cells."""
    law_x, law_y, base_x, base_y, sc_x, sc_y = [], [], [], [], [], []
    ex_law: dict[str, int] = {}
    ex_base: dict[str, int] = {}
    for rec in recs:
        delay = _num(rec.get("delay"))
        if rec.get("regime") == "diverged" or rec.get("status") == "diverged":
            delay = None  # a run that later diverged leaves the fit even if it had a delay
        if delay is None:
            reason = rec.get("regime") if rec.get("regime") in ("no_fit", "shortcut_persists",
                                                                 "diverged") else "no_delay"
            ex_law[reason] = ex_law.get(reason, 0) + 1
            ex_base[reason] = ex_base.get(reason, 0) + 1
            continue
        t_pred = _num(rec.get("T_pred"))
        if t_pred is None:
            ex_law["no_T_pred"] = ex_law.get("no_T_pred", 0) + 1
        else:
            law_x.append(t_pred)
            law_y.append(delay)
        el = _eta_lambda(rec)
        if el is None:
            ex_base["zero_eta_lambda"] = ex_base.get("zero_eta_lambda", 0) + 1
        else:
            base_x.append(1.0 / el)
            base_y.append(delay)
    law = stats.bootstrap_fit(law_x, law_y, n_boot=n_boot, seed=seed)
    law["excluded"] = ex_law
    base = stats.bootstrap_fit(base_x, base_y, n_boot=n_boot, seed=seed + 1)
    base["excluded"] = ex_base
    log_law = stats.log_fit(law_x, law_y, n_boot=n_boot, seed=seed + 2)
    log_law["excluded"] = dict(ex_law)
    expo = stats.log_fit(base_x, base_y, n_boot=n_boot, seed=seed + 3)
    expo["excluded"] = dict(ex_base)
    return {"delay_law": law, "baseline_inverse_eta_lambda": base, "delay_law_log": log_law,
            "scaling_exponent": expo,
            "_points": {"law": (law_x, law_y), "baseline": (base_x, base_y)}}


def fit_delay_laws(cells: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict:
    """Delay law, ``1/(eta lambda)`` baseline, log-space fits and (with several ops) ``per_op``.

    Returns ``{delay_law, baseline_inverse_eta_lambda, delay_law_log, scaling_exponent, per_op}``;
    each fit is ``{k, b, r2, n, k_ci, b_ci, r2_ci, n_boot, n_boot_valid, ci_level, excluded}``.
    ``per_op`` is ``{op: {delay_law, baseline_inverse_eta_lambda, delay_law_log}}`` or ``{}``.
    """
    recs = _records(cells)
    out = _fit_block(recs, n_boot, seed)
    out.pop("_points")
    ops = sorted({str(r.get("op")) for r in recs if r.get("op") is not None})
    out["per_op"] = {}
    if len(ops) > 1:
        for op in ops:
            block = _fit_block([r for r in recs if str(r.get("op")) == op], n_boot, seed)
            out["per_op"][op] = {k: block[k] for k in ("delay_law", "baseline_inverse_eta_lambda",
                                                        "delay_law_log")}
    return out


# ----------------------------------------------------------------------------- decay rate

def decay_rate(history: pd.DataFrame, T_mem: float | None, T_gen: float | None, lr: float,
               weight_decay: float) -> dict:
    """Fit ``ln V_t = a - gamma t`` over rows with ``T_mem <= step <= T_gen``.

    Returns ``{gamma, ratio, a, r2, n_points, window}`` with ``ratio = gamma / (2 eta lambda)``;
    numbers are ``None`` when the window has fewer than 3 rows or ``eta lambda == 0``.
    """
    out = {"gamma": None, "ratio": None, "a": None, "r2": None, "n_points": 0,
           "window": [T_mem, T_gen]}
    if _num(T_mem) is None or _num(T_gen) is None:
        return out
    h = history[(history["step"] >= T_mem) & (history["step"] <= T_gen)]
    fit = stats.exp_decay_fit(h["step"].to_numpy(float), h["V"].to_numpy(float))
    out.update({"gamma": fit["gamma"], "a": fit["a"], "r2": fit["r2"], "n_points": fit["n"]})
    el = (_num(lr) or 0.0) * (_num(weight_decay) or 0.0)
    if fit["gamma"] is not None and el > 0:
        out["ratio"] = fit["gamma"] / (2.0 * el)
    return out


def decay_rates(cells: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> dict:
    """:func:`decay_rate` for every cell with a delay.

    Returns ``{median, min, max, n, per_cell: {id: decay_rate(...)}, excluded: {reason: n},
    by_optimizer: {name: {median, min, max, n}}, theory}``.
    """
    per_cell, excluded = {}, {}
    by_opt: dict[str, list[float]] = {}
    for rec in _records(cells):
        cid = rec["cell"]
        if _num(rec.get("delay")) is None or rec.get("regime") == "diverged":
            reason = rec.get("regime") or "no_delay"
            excluded[reason] = excluded.get(reason, 0) + 1
            continue
        if cid not in histories:
            excluded["no_history"] = excluded.get("no_history", 0) + 1
            continue
        res = decay_rate(histories[cid], rec.get("T_mem"), rec.get("T_gen"), rec.get("lr"),
                         rec.get("weight_decay"))
        per_cell[cid] = res
        if res["ratio"] is None:
            excluded["too_few_points"] = excluded.get("too_few_points", 0) + 1
        else:
            by_opt.setdefault(str(rec.get("optimizer")), []).append(res["ratio"])
    ratios = [r for v in by_opt.values() for r in v]

    def summary(vals):
        if not vals:
            return {"median": None, "min": None, "max": None, "n": 0}
        return {"median": float(np.median(vals)), "min": float(np.min(vals)),
                "max": float(np.max(vals)), "n": len(vals)}

    out = summary(ratios)
    out.update({"per_cell": per_cell, "excluded": excluded,
                "by_optimizer": {k: summary(v) for k, v in by_opt.items()},
                "theory": "gamma_fit/(2 eta lambda): 1 for SGD, >= 1 for AdamW"})
    return out


# ----------------------------------------------------------------------------- prospective

def predict_T_gen(history: pd.DataFrame | None, T_mem: float, lr: float, weight_decay: float,
                  V_st: float | None, V_mem: float | None = None) -> dict:
    """Predict ``T_gen`` at ``T_mem`` from the history *truncated at* ``T_mem``.

    Only rows with ``step <= T_mem`` are read: ``V_mem`` is ``V`` of the last such row (the
    ``V_mem`` argument is used only when no history is given). Returns ``{T_gen_pred,
    delay_pred, V_mem, V_st, clipped}``; ``clipped`` is true when ``V_mem <= V_st`` (predicted
    delay 0). Numbers are ``None`` when an input is missing or ``eta lambda == 0``.
    """
    out = {"T_gen_pred": None, "delay_pred": None, "V_mem": None, "V_st": _num(V_st),
           "clipped": False}
    T_mem = _num(T_mem)
    if T_mem is None:
        return out
    if history is not None:
        prefix = history.loc[history["step"] <= T_mem]
        if len(prefix) == 0:
            return out
        V_mem = prefix.loc[prefix["step"].idxmax(), "V"]
    V_mem = _num(V_mem)
    out["V_mem"] = V_mem
    el = (_num(lr) or 0.0) * (_num(weight_decay) or 0.0)
    if V_mem is None or V_mem <= 0 or out["V_st"] is None or out["V_st"] <= 0 or el <= 0:
        return out
    log_ratio = math.log(V_mem / out["V_st"])
    out["clipped"] = log_ratio <= 0
    out["delay_pred"] = max(0.0, log_ratio) / (2.0 * el)
    out["T_gen_pred"] = T_mem + out["delay_pred"]
    return out


def peer_V_st(recs: list[dict], cell_id: str, column: str = "V_final") -> dict:
    """Estimate ``V_st`` for ``cell_id`` from *other* cells that generalised.

    Peers: cells other than ``cell_id`` with ``status == "finished"``, a ``T_gen`` and a positive
    ``column`` value, matched on the first level of :data:`PEER_LEVELS` that has any. Returns
    ``{V_st, level, n_peers}`` with ``V_st = exp(median(ln column))`` (``None`` if no peer).
    """
    me = next(r for r in recs if r["cell"] == cell_id)
    pool = [r for r in recs if r["cell"] != cell_id and r.get("status", "finished") == "finished"
            and _num(r.get("T_gen")) is not None and (_num(r.get(column)) or 0) > 0]
    for level, keys in enumerate(PEER_LEVELS, start=1):
        keys = [k for k in keys if k in me]
        peers = [r for r in pool if all(str(r.get(k)) == str(me.get(k)) for k in keys)]
        if peers:
            vals = np.log([float(r[column]) for r in peers])
            return {"V_st": float(np.exp(np.median(vals))), "level": level, "n_peers": len(peers)}
    return {"V_st": None, "level": None, "n_peers": 0}


def _prospective_errors(recs, predictions, pred_key="T_gen_pred"):
    errs, per_regime, delay_errs = [], {}, []
    for rec in recs:
        p = predictions.get(rec["cell"])
        obs = _num(rec.get("T_gen"))
        if p is None or p.get(pred_key) is None or obs is None or obs <= 0:
            continue
        e = abs(p[pred_key] - obs) / obs
        errs.append(e)
        per_regime.setdefault(rec.get("regime"), []).append(e)
        d_obs = _num(rec.get("delay"))
        if d_obs is not None and d_obs > 0 and p.get("delay_pred") is not None:
            delay_errs.append(abs(p["delay_pred"] - d_obs) / d_obs)
    return errs, per_regime, delay_errs


def prospective_prediction(cells: pd.DataFrame, histories: dict[str, pd.DataFrame],
                           n_boot: int = 1000, seed: int = 0) -> dict:
    """Predict every memorising cell's ``T_gen`` at its ``T_mem`` (see module docstring).

    Returns ``{estimator, median_abs_rel_error, median_abs_rel_error_ci, n,
    median_abs_rel_error_delay, n_delay, per_regime, per_cell, not_predicted, alternative_peer_V_gen}``.
    ``per_regime[regime] = {median_abs_rel_error, n}``; for ``shortcut_persists`` it is
    ``{n, share_predicted_beyond_stop}``. ``per_cell[id] = {T_mem, V_mem, V_st, peer_level,
    n_peers, T_gen_pred, T_gen_obs, abs_rel_error, clipped}``.
    """
    recs = _records(cells)
    predictions, alt_predictions, per_cell, not_pred = {}, {}, {}, {}
    for rec in recs:
        cid = rec["cell"]
        if _num(rec.get("T_mem")) is None or rec.get("status") == "diverged":
            reason = rec.get("regime") or "no_T_mem"
            not_pred[reason] = not_pred.get(reason, 0) + 1
            continue
        hist = histories.get(cid)
        peer = peer_V_st(recs, cid, "V_final")
        pred = predict_T_gen(hist, rec["T_mem"], rec.get("lr"), rec.get("weight_decay"),
                             peer["V_st"], V_mem=rec.get("V_mem"))
        alt_peer = peer_V_st(recs, cid, "V_gen")
        alt_predictions[cid] = predict_T_gen(hist, rec["T_mem"], rec.get("lr"),
                                             rec.get("weight_decay"), alt_peer["V_st"],
                                             V_mem=rec.get("V_mem"))
        if pred["T_gen_pred"] is None:
            reason = "no_peer" if peer["V_st"] is None else "undefined"
            not_pred[reason] = not_pred.get(reason, 0) + 1
            continue
        predictions[cid] = pred
        obs = _num(rec.get("T_gen"))
        per_cell[cid] = {"T_mem": rec["T_mem"], "V_mem": pred["V_mem"], "V_st": pred["V_st"],
                         "peer_level": peer["level"], "n_peers": peer["n_peers"],
                         "T_gen_pred": pred["T_gen_pred"], "T_gen_obs": obs,
                         "regime": rec.get("regime"), "stop_step": _num(rec.get("stop_step")),
                         "abs_rel_error": (abs(pred["T_gen_pred"] - obs) / obs
                                           if obs is not None and obs > 0 else None),
                         "clipped": pred["clipped"]}
    errs, by_regime, delay_errs = _prospective_errors(recs, predictions)
    med = stats.bootstrap_median(errs, n_boot=n_boot, seed=seed)
    per_regime = {r: {"median_abs_rel_error": float(np.median(v)), "n": len(v)}
                  for r, v in by_regime.items()}
    censored = [c for c in per_cell.values() if c["regime"] == "shortcut_persists"]
    if censored:
        beyond = [c for c in censored if c["stop_step"] is not None
                  and c["T_gen_pred"] > c["stop_step"]]
        per_regime["shortcut_persists"] = {"n": len(censored),
                                           "share_predicted_beyond_stop": len(beyond) / len(censored)}
    alt_errs, _, _ = _prospective_errors(recs, alt_predictions)
    return {"estimator": "peer_V_final (geometric median of other generalised cells' V_final)",
            "median_abs_rel_error": med["median"], "median_abs_rel_error_ci": med["ci"],
            "n": med["n"],
            "median_abs_rel_error_delay": float(np.median(delay_errs)) if delay_errs else None,
            "n_delay": len(delay_errs),
            "per_regime": per_regime, "per_cell": per_cell, "not_predicted": not_pred,
            "alternative_peer_V_gen": {
                "median_abs_rel_error": float(np.median(alt_errs)) if alt_errs else None,
                "n": len(alt_errs)}}


# ----------------------------------------------------------------------------- S

def clean_norm_separation_cell(history: pd.DataFrame, phi_split: float = PHI_SPLIT,
                               phi_column: str | None = None, v_column: str = "V",
                               T_mem: float | None = None) -> dict:
    """Per-cell clean-norm separation over the window from the first maximum of V -- or from
    ``T_mem`` when that is earlier -- to the end of training.

    Starting at ``T_mem`` when the norm peaks only later keeps a cell whose norm keeps rising
    through the transition in the score (it then scores below 0) instead of leaving it undefined.

    ``phi_t = 1 - test_acc_t`` (modular), or the column ``phi_column`` when given (image
    experiments: ``reliance``, the share of conflicting-cue images classified by the cue; time
    column ``epoch`` is accepted in place of ``step``). ``S`` = rank-biserial correlation of ``ln V`` between
    shortcut-reliant rows (``phi > phi_split``) and the other rows: ``P(ln V_reliant >
    ln V_other) - P(<)``. ``S_spearman`` = Spearman(ln V_t, phi_t) over the same rows (the
    issue's suggested form, reported beside; it cannot exceed ~0.87 for a step-like transition).
    Returns ``{S, S_spearman, n_points, n_reliant, n_other, peak_step, window_start, reason}``; ``S`` is ``None``
    (with a ``reason``) when the window has fewer than :data:`S_MIN_POINTS` rows or fewer than 2
    rows on either side of ``phi_split``.
    """
    out = {"S": None, "S_spearman": None, "n_points": 0, "n_reliant": 0, "n_other": 0,
           "peak_step": None, "window_start": None, "reason": None}
    if "step" not in history.columns and "epoch" in history.columns:
        history = history.rename(columns={"epoch": "step"})
    h = _hist_sorted(history)
    v = h[v_column].to_numpy(float)
    if len(h) == 0 or not np.isfinite(v).any():
        out["reason"] = "no history"
        return out
    peak = int(np.nanargmax(v))
    start = float(h["step"].iloc[peak])
    if _num(T_mem) is not None:
        start = min(start, float(T_mem))
    win = h.loc[h["step"] >= start]
    vv = win[v_column].to_numpy(float)
    phi = (win[phi_column].to_numpy(float) if phi_column
           else 1.0 - win["test_acc"].to_numpy(float))
    ok = np.isfinite(vv) & (vv > 0) & np.isfinite(phi)
    lv, phi = np.log(vv[ok]), phi[ok]
    reliant = phi > phi_split
    out.update({"n_points": int(ok.sum()), "n_reliant": int(reliant.sum()),
                "n_other": int((~reliant).sum()), "peak_step": float(h["step"].iloc[peak]),
                "window_start": start})
    if out["n_points"] < S_MIN_POINTS:
        out["reason"] = f"fewer than {S_MIN_POINTS} evaluations in the window"
        return out
    out["S_spearman"] = stats.spearman(lv, phi)
    if out["n_reliant"] < 2 or out["n_other"] < 2:
        out["reason"] = ("no structured phase in the window" if out["n_other"] < 2
                         else "no shortcut phase in the window")
        return out
    out["S"] = stats.rank_biserial(lv[reliant], lv[~reliant])
    return out


def _separation(entries, n_boot, seed, threshold, estimator) -> dict:
    """Aggregate per-cell S: ``entries`` = [(cell id, history, T_mem, is_transition, phi_column,
    regime)] for cells that fitted the shortcut."""
    per_cell, untrusted = {}, []
    for cid, hist, t_mem, is_transition, phi_column, regime in entries:
        res = clean_norm_separation_cell(hist, T_mem=t_mem, phi_column=phi_column)
        res["regime"] = regime
        res["transition"] = bool(is_transition)
        # the same score over the first-suggested window (norm peak -> end), for contrast
        res["S_from_peak"] = clean_norm_separation_cell(hist, phi_column=phi_column)["S"]
        per_cell[cid] = res
        if res["S"] is None:
            untrusted.append({"cell": cid, "S": None, "reason": f"S undefined: {res['reason']}"})
        elif res["S"] < threshold:
            untrusted.append({"cell": cid, "S": res["S"], "reason": f"S < {threshold}"})
    trans = [c for c in per_cell.values() if c["transition"]]
    med = stats.bootstrap_median([c["S"] for c in trans], n_boot=n_boot, seed=seed)
    med_sp = stats.bootstrap_median([c["S_spearman"] for c in trans], n_boot=n_boot, seed=seed)
    med_pk = stats.bootstrap_median([c["S_from_peak"] for c in trans], n_boot=0)
    if med["n"] < 3:
        verdict = "not_enough_data"
    else:
        verdict = "holds" if med["median"] >= threshold else "fails"
    return {"S": med["median"], "S_ci": med["ci"], "n": med["n"], "threshold": threshold,
            "verdict": verdict,
            "S_all_memorised": stats.bootstrap_median([c["S"] for c in per_cell.values()],
                                                      n_boot=0)["median"],
            "S_spearman": med_sp["median"], "S_spearman_ci": med_sp["ci"],
            "n_spearman": med_sp["n"],
            "S_from_peak": med_pk["median"], "n_from_peak": med_pk["n"],
            "estimator": estimator, "per_cell": per_cell, "untrusted_cells": untrusted}


def clean_norm_separation(cells: pd.DataFrame, histories: dict[str, pd.DataFrame],
                          n_boot: int = 1000, seed: int = 0,
                          threshold: float = S_THRESHOLD) -> dict:
    """Experiment-level S (median of ``S_cell`` over transition cells) with verdict.

    Returns ``{S, S_ci, n, threshold, verdict, S_all_memorised, S_spearman, S_spearman_ci,
    n_spearman, S_from_peak, n_from_peak, estimator, per_cell, untrusted_cells}``;
    ``per_cell[id]`` is :func:`clean_norm_separation_cell`'s dict plus ``regime``, ``transition``
    and ``S_from_peak`` (the same score with the window starting at the norm peak only; cells whose
    norm peaks after the shortcut was abandoned are undefined there, which is why it is not the
    verdict's statistic);
    ``untrusted_cells`` lists ``{cell, S, reason}`` for memorising cells with S undefined or below
    the threshold.
    """
    entries = [(r["cell"], histories[r["cell"]], r.get("T_mem"),
                r.get("regime") in TRANSITION_REGIMES, None, r.get("regime"))
               for r in _records(cells)
               if _num(r.get("T_mem")) is not None and r["cell"] in histories]
    return _separation(entries, n_boot, seed, threshold,
                       "median over delayed/immediate cells of the rank-biserial correlation of "
                       "ln V_t between rows with phi_t = 1 - test_acc_t > 0.5 and the other rows, "
                       "from the norm peak (or T_mem if earlier) to the end of training")


def image_clean_norm_separation(cells: pd.DataFrame, histories: dict[str, pd.DataFrame],
                                n_boot: int = 1000, seed: int = 0,
                                threshold: float = S_THRESHOLD) -> dict:
    """S for an image experiment (same keys as :func:`clean_norm_separation`).

    ``phi_t`` = the history's ``reliance`` column (share of conflicting-cue test images
    classified by the cue), time = ``epoch``. A cell enters when its reliance exceeded 0.5 at some
    epoch >= 1 (it fitted the shortcut); its ``T_mem`` analogue is the first such epoch. Transition
    cells are those with a ``transition_epoch`` in ``cells``. Diverged cells are left out.
    """
    entries = []
    for r in _records(cells):
        h = histories.get(r["cell"])
        if h is None or r.get("status") == "diverged" or "reliance" not in h.columns:
            continue
        fitted = h[(h["epoch"] >= 1) & (h["reliance"] > PHI_SPLIT)]
        if fitted.empty:
            continue
        entries.append((r["cell"], h, float(fitted["epoch"].min()),
                        _num(r.get("transition_epoch")) is not None, "reliance", r.get("regime")))
    return _separation(entries, n_boot, seed, threshold,
                       "median over cells with a transition epoch of the rank-biserial correlation "
                       "of ln V_t between epochs with reliance > 0.5 and the other epochs, from the "
                       "norm peak (or the first reliant epoch if earlier) to the end of training")


# ----------------------------------------------------------------------------- P1, P2, P4 inputs

def norm_ordering(cells: pd.DataFrame) -> dict:
    """Share of ``delayed`` cells with ``V_mem > V_final`` (and ``> V_gen``), Wilson intervals."""
    recs = [r for r in _records(cells) if r.get("regime") == "delayed"]
    pairs = [(_num(r.get("V_mem")), _num(r.get("V_final")), _num(r.get("V_gen"))) for r in recs]
    fin = [(m, f) for m, f, _ in pairs if m is not None and f is not None]
    gen = [(m, g) for m, _, g in pairs if m is not None and g is not None]
    k = sum(m > f for m, f in fin)
    kg = sum(m > g for m, g in gen)
    return {"share": k / len(fin) if fin else None, "ci": stats.wilson_interval(k, len(fin)),
            "n": len(fin),
            "share_vs_V_gen": kg / len(gen) if gen else None,
            "ci_vs_V_gen": stats.wilson_interval(kg, len(gen)), "n_vs_V_gen": len(gen),
            "definition": "share of delayed cells with V_mem > V_final"}


def regime_ordering(cells: pd.DataFrame) -> dict:
    """Order of regimes along weight decay within slices (see module docstring)."""
    recs = [r for r in _records(cells) if r.get("regime") in REGIME_RANK
            and _num(r.get("weight_decay")) is not None]
    counts = {"weak (shortcut_persists)": 0, "transition (delayed/immediate)": 0,
              "suppressed (no_fit)": 0}
    names = list(counts)
    for r in recs:
        counts[names[REGIME_RANK[r["regime"]]]] += 1
    keys = [k for k in SLICE_KEYS if any(k in r for r in recs)]
    slices: dict[tuple, list] = {}
    for r in recs:
        slices.setdefault(tuple(str(r.get(k)) for k in keys), []).append(r)
    pairs = disc = 0
    for members in slices.values():
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                la, lb = float(a["weight_decay"]), float(b["weight_decay"])
                if la == lb:
                    continue
                lo, hi = (a, b) if la < lb else (b, a)
                pairs += 1
                disc += REGIME_RANK[lo["regime"]] > REGIME_RANK[hi["regime"]]
    med_lambda = {}
    for name_idx, name in enumerate(names):
        lam = [float(r["weight_decay"]) for r in recs if REGIME_RANK[r["regime"]] == name_idx]
        med_lambda[name] = float(np.median(lam)) if lam else None
    return {"counts": counts, "all_present": all(v > 0 for v in counts.values()),
            "n_lambda": len({float(r["weight_decay"]) for r in recs}),
            "concordance": (1 - disc / pairs) if pairs else None, "n_pairs": pairs,
            "n_discordant": disc, "median_lambda": med_lambda}


def _is_weight_tensor(name: str) -> bool:
    parts = name.lower().split(".")
    if not parts[-1].endswith("weight"):
        return False
    return not any("norm" in p or p.startswith("ln") for p in parts[:-1])


def _layers_of(rec: dict, layers: dict | None) -> dict:
    if layers is not None and rec["cell"] in layers:
        return layers[rec["cell"]] or {}
    if isinstance(rec.get("layers"), dict):
        return rec["layers"]
    out: dict[str, dict] = {}
    for key, val in rec.items():
        if key.startswith("layer_") and ":" in key:
            field, name = key[len("layer_"):].split(":", 1)
            out.setdefault(name, {})[field] = val
    return out


def layer_hierarchy(cells: pd.DataFrame, layers: dict | None = None) -> dict:
    """Per-layer contraction ``ln(V_mem,l / V_final,l)`` over ``delayed`` cells (P4 input)."""
    per_layer: dict[str, list[float]] = {}
    n_cells = readout_max = 0
    skipped: dict[str, int] = {}
    for rec in _records(cells):
        if rec.get("regime") != "delayed":
            continue
        lay = _layers_of(rec, layers)
        contr = {}
        for name, vals in lay.items():
            if not _is_weight_tensor(name) or not isinstance(vals, dict):
                continue
            vm, vf = _num(vals.get("V_mem")), _num(vals.get("V_final"))
            if vm and vf and vm > 0 and vf > 0:
                contr[name] = math.log(vm / vf)
        readout = next((n for n in READOUT_NAMES if n in contr), None)
        if readout is None or len(contr) < 2:
            reason = "no_layers" if not contr else "no_readout_or_single_layer"
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        n_cells += 1
        readout_max += contr[readout] >= max(contr.values())
        for name, c in contr.items():
            per_layer.setdefault(name, []).append(c)
    medians = {k: float(np.median(v)) for k, v in per_layer.items()}
    return {"share_readout_max": readout_max / n_cells if n_cells else None,
            "ci": stats.wilson_interval(readout_max, n_cells), "n": n_cells,
            "median_contraction": medians,
            "spread": (max(medians.values()) - min(medians.values())) if medians else None,
            "skipped": skipped,
            "definition": "share of delayed cells whose readout weight has the largest "
                          "ln(V_mem/V_final) among weight tensors"}


# ----------------------------------------------------------------------------- figures

def _fig(ncols=1, width=5.0, height=4.0):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width * ncols, height))
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, figure_dir: str, stem: str) -> list[str]:
    os.makedirs(figure_dir, exist_ok=True)
    paths = []
    fig.tight_layout()
    for ext in ("png", "pdf"):
        path = os.path.join(figure_dir, f"{stem}.{ext}")
        # no creation date in the PDF, so reruns on unchanged data give identical files
        fig.savefig(path, dpi=110, metadata={"CreationDate": None} if ext == "pdf" else None)
        paths.append(path)
    return paths


def _plot_delay_bootstrap(points: dict, fits: dict, figure_dir: str, n_boot: int, seed: int):
    fig, axes = _fig(2)
    specs = [("law", "delay_law", "T_pred = ln(V_mem/V_final)/(2ηλ)  [steps]", seed),
             ("baseline", "baseline_inverse_eta_lambda", "1/(ηλ)", seed + 1)]
    for ax, (pkey, fkey, xlabel, s) in zip(axes, specs):
        x, y = (np.asarray(v, float) for v in points[pkey])
        fit = fits[fkey]
        ax.set_xlabel(xlabel)
        ax.set_ylabel("delay = T_gen − T_mem  [steps]")
        if x.size == 0:
            ax.text(0.5, 0.5, "no cell with a delay", ha="center", transform=ax.transAxes)
            continue
        ax.scatter(x, y, s=18, color="C0", zorder=3)
        if fit["k"] is not None:
            grid = np.linspace(0, x.max() * 1.05, 100)
            ax.plot(grid, fit["k"] * grid + fit["b"], color="C3", label="OLS fit")
            if fit["k_ci"] is not None:
                k, b, _ = stats.bootstrap_draws(x, y, n_boot=n_boot, seed=s)
                ok = np.isfinite(k)
                lines = k[ok, None] * grid[None, :] + b[ok, None]
                lo, hi = np.quantile(lines, [0.025, 0.975], axis=0)
                ax.fill_between(grid, lo, hi, color="C3", alpha=0.2, label="95% bootstrap band")
            if fkey == "delay_law":
                ax.plot(grid, grid, "k--", lw=0.8, label="theory: delay = T_pred")
            r2ci = fit["r2_ci"] or [float("nan")] * 2
            kci = fit["k_ci"] or [float("nan")] * 2
            ax.set_title(f"k={fit['k']:.3g} [{kci[0]:.3g}, {kci[1]:.3g}]  "
                         f"R²={fit['r2']:.3f} [{r2ci[0]:.2f}, {r2ci[1]:.2f}]  n={fit['n']}",
                         fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, figure_dir, "delay_law_bootstrap")


def _plot_prospective(prosp: dict, figure_dir: str):
    fig, axes = _fig(1, 5.5, 5.0)
    ax = axes[0]
    cells = list(prosp["per_cell"].values())
    obs = [c for c in cells if c["T_gen_obs"] is not None]
    cens = [c for c in cells if c["T_gen_obs"] is None and c["stop_step"] is not None]
    regimes = sorted({c["regime"] for c in obs})
    for i, reg in enumerate(regimes):
        pts = [c for c in obs if c["regime"] == reg]
        ax.scatter([c["T_gen_obs"] for c in pts], [c["T_gen_pred"] for c in pts], s=20,
                   color=f"C{i}", label=f"{reg} (n={len(pts)})")
    if cens:
        ax.scatter([c["stop_step"] for c in cens], [c["T_gen_pred"] for c in cens], marker=">",
                   s=30, color="grey", label=f"never generalised: x = stop step (n={len(cens)})")
    vals = [v for c in obs + cens for v in (c["T_gen_pred"], c["T_gen_obs"] or c["stop_step"])
            if v and v > 0]
    if vals:
        lo, hi = min(vals) * 0.8, max(vals) * 1.25
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="perfect prediction")
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no predicted cell", ha="center", transform=ax.transAxes)
    err = prosp["median_abs_rel_error"]
    ax.set_title("prospective T_gen at T_mem (peer V_st)\nmedian |rel. error| = "
                 + (f"{err:.2f}" if err is not None else "n/a") + f", n={prosp['n']}", fontsize=9)
    ax.set_xlabel("observed T_gen [steps]")
    ax.set_ylabel("predicted T_gen [steps]")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return _save(fig, figure_dir, "prospective")


def _plot_norm_fits(recs, histories, rates: dict, figure_dir: str, max_cells: int = 6):
    chosen = [r for r in recs if r["cell"] in rates["per_cell"]
              and rates["per_cell"][r["cell"]]["gamma"] is not None]
    chosen.sort(key=lambda r: _num(r.get("delay")) or 0)
    if len(chosen) > max_cells:
        idx = np.linspace(0, len(chosen) - 1, max_cells).round().astype(int)
        chosen = [chosen[i] for i in idx]
    ncols = max(1, min(3, len(chosen)))
    nrows = max(1, math.ceil(len(chosen) / 3))
    from matplotlib.figure import Figure
    fig = Figure(figsize=(4.5 * ncols, 3.4 * nrows))
    if not chosen:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no cell with a fitted decay window", ha="center", transform=ax.transAxes)
    for i, rec in enumerate(chosen):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        h = _hist_sorted(histories[rec["cell"]])
        r = rates["per_cell"][rec["cell"]]
        ax.plot(h["step"], h["V"], color="C0", lw=1, label="V = ‖θ‖²")
        t = np.linspace(rec["T_mem"], rec["T_gen"], 50)
        ax.plot(t, np.exp(r["a"] - r["gamma"] * t), color="C3", lw=2,
                label=f"fit γ/(2ηλ)={r['ratio']:.2f}")
        el = _eta_lambda(rec)
        vm = h.loc[h["step"] <= rec["T_mem"], "V"].iloc[-1]
        ax.plot(t, vm * np.exp(-2 * el * (t - rec["T_mem"])), "k--", lw=1,
                label="theory exp(−2ηλt)")
        ax.axvline(rec["T_mem"], color="grey", ls=":", lw=0.8)
        ax.axvline(rec["T_gen"], color="green", ls=":", lw=0.8)
        ax.set_yscale("log")
        v = h["V"].to_numpy(float)
        v = v[np.isfinite(v) & (v > 0)]
        if v.size:  # keep the data readable; the theory line may leave the axes
            ax.set_ylim(v.min() / 3, v.max() * 3)
        ax.set_xlabel("step")
        ax.set_title(f"{rec['cell'][:40]}", fontsize=7)
        ax.legend(fontsize=6)
    return _save(fig, figure_dir, "norm_fits")


def _plot_decay_rate(recs, rates: dict, figure_dir: str):
    fig, axes = _fig(1, 5.5, 4.0)
    ax = axes[0]
    lrs = sorted({r.get("lr") for r in recs if r["cell"] in rates["per_cell"]}, key=str)
    any_pt = False
    for i, lr in enumerate(lrs):
        pts = [(float(r["weight_decay"]), rates["per_cell"][r["cell"]]["ratio"]) for r in recs
               if r["cell"] in rates["per_cell"] and r.get("lr") == lr
               and rates["per_cell"][r["cell"]]["ratio"] is not None]
        if pts:
            any_pt = True
            ax.scatter(*zip(*pts), s=20, color=f"C{i}", label=f"η={lr}")
    ax.axhline(1.0, color="k", ls="--", lw=0.8, label="theory (pure decay): 1")
    if any_pt:
        ax.set_xscale("log")
        ax.legend(fontsize=7)
    med = rates["median"]
    ax.set_title("decay rate of ln V between T_mem and T_gen\nmedian γ_fit/(2ηλ) = "
                 + (f"{med:.2f}" if med is not None else "n/a") + f", n={rates['n']}", fontsize=9)
    ax.set_xlabel("weight decay λ")
    ax.set_ylabel("γ_fit / (2ηλ)")
    return _save(fig, figure_dir, "decay_rate")


def _plot_clean_separation(sep: dict, figure_dir: str):
    fig, axes = _fig(1, 5.5, 4.0)
    ax = axes[0]
    regimes = sorted({c["regime"] for c in sep["per_cell"].values()}, key=str)
    for i, reg in enumerate(regimes):
        vals = [c["S"] for c in sep["per_cell"].values() if c["regime"] == reg and c["S"] is not None]
        ax.scatter(vals, np.full(len(vals), i) + np.linspace(-0.2, 0.2, len(vals)) if vals else [],
                   s=18, color=f"C{i}")
    ax.set_yticks(range(len(regimes)), [str(r) for r in regimes])
    ax.axvline(sep["threshold"], color="k", ls="--", lw=0.8, label=f"threshold {sep['threshold']}")
    ax.set_xlim(-1.05, 1.05)
    s = sep["S"]
    ax.set_title(f"clean-norm separation S per cell\nexperiment S = "
                 + (f"{s:.2f}" if s is not None else "n/a") + f" → {sep['verdict']}", fontsize=9)
    ax.set_xlabel("S = P(ln V reliant > ln V structured) − P(<), from min(norm peak, T_mem)")
    ax.legend(fontsize=7)
    return _save(fig, figure_dir, "clean_separation")


# ----------------------------------------------------------------------------- entry point

def analyse_modular(cells: pd.DataFrame, histories: dict[str, pd.DataFrame], figure_dir: str,
                    n_boot: int = 1000, seed: int = 0, layers: dict | None = None) -> dict:
    """Everything the science layer measures on one modular experiment.

    ``cells``: one row per cell with the ``norms.json`` fields (``cell``, ``status``, ``regime``,
    ``T_mem``, ``T_gen``, ``delay``, ``V_mem``, ``V_gen``, ``V_final``, ``T_pred``, ``stop_step``,
    ``lr``, ``weight_decay``, ``init_scale``, ``seed``, ``op``, ``p``, ``optimizer``, ``model``).
    Per-layer values come from ``layers`` (``{cell_id: norms["layers"]}``), else from a ``layers``
    column holding those dicts, else from columns ``layer_<field>:<param name>``.
    ``histories``: ``{cell_id: history DataFrame}`` (``step``, ``V``, ``test_acc`` used).
    Figures (PNG + PDF) are written to ``figure_dir``.

    Returns (JSON-serialisable) ``{delay_law, baseline_inverse_eta_lambda, delay_law_log,
    scaling_exponent, per_op, decay_rate, prospective_prediction, clean_norm_separation,
    norm_ordering, regime_ordering, layer_hierarchy, figures}``.
    """
    recs = _records(cells)
    law_block = _fit_block(recs, n_boot, seed)
    points = law_block.pop("_points")
    fits = fit_delay_laws(cells, n_boot=n_boot, seed=seed)
    rates = decay_rates(cells, histories)
    prosp = prospective_prediction(cells, histories, n_boot=n_boot, seed=seed)
    sep = clean_norm_separation(cells, histories, n_boot=n_boot, seed=seed)
    figures = []
    figures += _plot_delay_bootstrap(points, fits, figure_dir, n_boot, seed)
    figures += _plot_prospective(prosp, figure_dir)
    figures += _plot_norm_fits(recs, histories, rates, figure_dir)
    figures += _plot_decay_rate(recs, rates, figure_dir)
    figures += _plot_clean_separation(sep, figure_dir)
    out = dict(fits)
    out.update({"decay_rate": rates, "prospective_prediction": prosp,
                "clean_norm_separation": sep, "norm_ordering": norm_ordering(cells),
                "regime_ordering": regime_ordering(cells),
                "layer_hierarchy": layer_hierarchy(cells, layers), "figures": figures})
    return clean_json(out)
