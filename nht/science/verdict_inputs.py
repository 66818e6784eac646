"""Inputs of the P1, P2, P4 entries and the decay-rate line, from per-cell records and histories.
V is the squared norm; time in steps; ``eta lambda`` per step.

**Decay rate.** Per cell with a delay, OLS of ``ln V_t`` on ``t`` over ``T_fit <= t <= T_transition`` (>= 3
rows) gives ``gamma`` (per step). ``ratio_to_theory = gamma / (2 eta lambda)`` (the theory: V
decays as ``exp(-2 eta lambda t)``, ratio 1, i.e. ``gamma / (eta lambda) = 2``): median over cells
with a BCa interval (>= 8 cells); ``verdict`` ``consistent`` (interval contains 1), ``slower`` /
``faster`` (interval below / above 1), ``uncertain`` without an interval.

**P1, norm ordering between different solutions.** ``V_sc`` = ``V_fit`` of a cell that was
shortcut-reliant at its fit (test accuracy at ``T_fit`` below 0.5); ``V_st`` = ``V_transition`` of the
*other* cells that generalised at the same lambda and task (a cell is never compared with itself
before and after decay). Per reliant cell, ``q`` = share of those peers with ``V_st < V_sc`` (ties
half); statistic = mean of ``q`` (the probability that a shortcut solution has a higher squared
norm than a structured one at the same lambda), BCa interval over cells (>= 8).

Under weight decay V falls after the fit whatever sets the transition, so ``share`` is near 1 even
when V is irrelevant to it. ``null`` breaks the link: each generalised peer's ``V_transition`` is
replaced by its own V (log-linearly interpolated) at ``T_fit + delay`` of *another* cell of its stratum (cells equal in
every group axis but ``init_scale`` and the seeds: fixed ``eta lambda`` and task), delays permuted
within strata (``n_null`` draws; V read from the history, the last row where it ends earlier).
If the transition happens when V reaches the structured norm (the law), the own delays line up
with the norms and the permuted ones do not; if the delay ignores V, they are exchangeable.
``p`` = ``(1 + #{null share >= share}) / (1 + draws)``; ``beats_null`` = ``p <= 0.05``. A stratum
with one generalised cell cannot be permuted (the null then equals the statistic there): P1 can
only pass on grids where cells at one ``eta lambda`` differ in norm. The old same-cell statistic
(share with ``V_fit > V_final``, true by construction under decay) is given beside as
``same_cell_share``.

**P2, regime ordering.** Regimes ranked weak ``weak`` 0 < ``intermediate``/``immediate`` 1 <
suppressed ``strong`` 2 (``diverged`` out). Per slice (cells equal in every setting but lambda),
Kendall's tau-b of (lambda, rank) (:func:`scipy.stats.kendalltau`; ties in rank are not agreement);
a slice with one regime only scores 0 (no ordering). Statistic: mean over slices weighted by the
number of lambda pairs; BCa interval over slices (>= 8).

**P4, layer hierarchy.** Per ``intermediate`` cell and weight tensor (not normalisation layers):
``c = ln(V_fit,l / V_final,l)``; statistic: share of cells whose readout has the largest ``c``
(Wilson interval).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as st

from nht.core.events import decay_budget_rate
from nht.science import stats
from nht.science.cellrecords import (GROUP_AXES, TASK_AXES, count, is_diverged, key_of,
                                    num, records, time_sorted)

READOUT_NAMES = ("out.weight", "head.weight")      # modular MLP and transformer readouts
REGIME_RANK = {"weak": 0, "intermediate": 1, "immediate": 1, "strong": 2}
P1_ALPHA = 0.05
STRATUM_AXES = tuple(a for a in GROUP_AXES if a != "init_scale")   # fixed eta lambda and task
SLICE_KEYS = ("lr", "init_scale", "seed", "op", "p", "train_frac", "split_seed", "dataset", "rho", "border",
              "model", "optimizer")


# ----------------------------------------------------------------------------- decay rate

def decay_rate(history: pd.DataFrame, T_fit, T_transition) -> dict:
    """``ln V_t = a - gamma t`` over ``T_fit <= step <= T_transition``. Returns ``{gamma, ratio, a,
    r2, n_points, window}`` with ``ratio = gamma / (2 r)``, ``r`` the decay budget per step over the
    same window (:func:`nht.core.events.decay_budget_rate`: ``eta lambda`` at constant lr, the
    schedule's mean ``eta_t lambda`` otherwise); ``None`` below 3 rows."""
    out = {"gamma": None, "ratio": None, "a": None, "r2": None, "n_points": 0,
           "window": [num(T_fit), num(T_transition)]}
    if num(T_fit) is None or num(T_transition) is None:
        return out
    h = time_sorted(history)
    h = h[(h["step"] >= T_fit) & (h["step"] <= T_transition)]
    fit = stats.exp_decay_fit(h["step"].to_numpy(float), h["V"].to_numpy(float))
    out.update({"gamma": fit["gamma"], "a": fit["a"], "r2": fit["r2"], "n_points": fit["n"]})
    rate = decay_budget_rate(history, num(T_fit), num(T_transition)) if fit["gamma"] is not None else None
    if rate is not None and rate > 0:
        out["ratio"] = fit["gamma"] / (2.0 * rate)
    return out


def decay_rates(cells, histories: dict, n_boot: int = 1000, seed: int = 0) -> dict:
    """:func:`decay_rate` of every cell with a delay, summarised (module docstring).

    Returns ``{ratio_to_theory: {median, ci, ci_method, n}, gamma_over_eta_lambda: {median, ci},
    theory_gamma_over_eta_lambda: 2, verdict, median, min, max, n, per_cell, excluded,
    by_optimizer}``.
    """
    per_cell, excluded, by_opt = {}, {}, {}
    for rec in records(cells):
        if num(rec.get("delay")) is None or is_diverged(rec):
            count(excluded, rec.get("regime") or "no_delay")
            continue
        if rec["cell"] not in histories:
            count(excluded, "no_history")
            continue
        res = decay_rate(histories[rec["cell"]], rec.get("T_fit"), rec.get("T_transition"))
        per_cell[rec["cell"]] = res
        if res["ratio"] is None:
            count(excluded, "too_few_points")
        else:
            by_opt.setdefault(str(rec.get("optimizer")), []).append(res["ratio"])
    ratios = [r for v in by_opt.values() for r in v]
    med = stats.median_ci(ratios, n_boot=n_boot, seed=seed)
    if med["ci"] is None:
        verdict = "uncertain" if ratios else "not_enough_data"
    else:
        lo, hi = med["ci"]
        verdict = "consistent" if lo <= 1.0 <= hi else ("slower" if hi < 1.0 else "faster")
    return {"ratio_to_theory": {k: med[k] for k in ("median", "ci", "ci_method", "n")},
            "gamma_over_eta_lambda": {"median": None if med["median"] is None
                                      else 2 * med["median"],
                                      "ci": None if med["ci"] is None
                                      else [2 * med["ci"][0], 2 * med["ci"][1]]},
            "theory_gamma_over_eta_lambda": 2.0, "verdict": verdict,
            "median": med["median"], "min": float(np.min(ratios)) if ratios else None,
            "max": float(np.max(ratios)) if ratios else None, "n": len(ratios),
            "per_cell": per_cell, "excluded": excluded,
            "by_optimizer": {k: {"median": float(np.median(v)), "n": len(v)}
                             for k, v in by_opt.items()},
            "definition": "gamma/(2 r), gamma = -d ln V/dt and r = dLambda/dt (the decay budget per step, "
                          "eta lambda at constant lr) between T_fit and T_transition"}


# ----------------------------------------------------------------------------- P1

def _reliant_at_fit(rec: dict, histories: dict) -> bool | None:
    acc = num(rec.get("test_acc_at_fit"))
    h = histories.get(rec["cell"])
    if acc is None and h is not None and "test_acc" in h.columns:
        h = time_sorted(h)
        prefix = h.loc[h["step"] <= float(rec["T_fit"])]
        acc = num(prefix["test_acc"].iloc[-1]) if not prefix.empty else None
    return None if acc is None else acc < 0.5


def _v_at(history: pd.DataFrame | None, step: float) -> float | None:
    """V at ``step``, log-linearly interpolated between evaluations (clamped to the first/last
    row), so that a V read between evaluations is not biased towards either neighbour."""
    if history is None or "V" not in history.columns or len(history) == 0:
        return None
    h = time_sorted(history)
    t, v = h["step"].to_numpy(float), h["V"].to_numpy(float)
    ok = np.isfinite(t) & np.isfinite(v) & (v > 0)
    if not ok.any():
        return None
    return num(np.exp(np.interp(step, t[ok], np.log(v[ok]))))


def _shares(v_sc: list[float], peers: list[np.ndarray], v_st: np.ndarray) -> np.ndarray:
    q = []
    for v, idx in zip(v_sc, peers):
        p = v_st[idx]
        q.append(((p < v).sum() + 0.5 * (p == v).sum()) / p.size)
    return np.asarray(q, float)


def norm_ordering(cells, histories: dict | None = None, n_boot: int = 1000,
                  seed: int = 0, n_null: int = 500) -> dict:
    """P1 between different solutions, against the V-irrelevant null (module docstring).

    Returns ``{share, ci, ci_method, n, n_pairs, null: {q95, median, n_draws, n_strata_permuted},
    p, beats_null, skipped, same_cell_share, same_cell_n, definition}``."""
    histories = histories or {}
    recs = [r for r in records(cells) if not is_diverged(r)]
    gen = [r for r in recs if num(r.get("T_transition")) is not None
           and (num(r.get("V_transition")) or 0) > 0]
    gen_ix = {g["cell"]: i for i, g in enumerate(gen)}
    v_st = np.array([num(g["V_transition"]) for g in gen], float)
    v_sc, peers, n_pairs, skipped = [], [], 0, {}
    for r in recs:
        v = num(r.get("V_fit"))
        if num(r.get("T_fit")) is None or v is None:
            continue
        if _reliant_at_fit(r, histories) is not True:
            count(skipped, "not_reliant_at_fit")
            continue
        idx = np.array([gen_ix[g["cell"]] for g in gen if g["cell"] != r["cell"]
                        and str(g.get("weight_decay")) == str(r.get("weight_decay"))
                        and key_of(g, TASK_AXES) == key_of(r, TASK_AXES)], int)
        if not idx.size:
            count(skipped, "no_generalised_peer_at_lambda")
            continue
        v_sc.append(v)
        peers.append(idx)
        n_pairs += idx.size
    q = _shares(v_sc, peers, v_st)
    share = float(q.mean()) if q.size else None
    ci, method = stats.bootstrap_ci((q,), np.mean, n_boot=n_boot, seed=seed)
    # the V-irrelevant null: V of each generalised cell read at T_fit + another stratum cell's delay
    strata: dict[tuple, list[int]] = {}
    for i, g in enumerate(gen):
        if num(g.get("T_fit")) is not None:
            strata.setdefault(key_of(g, STRATUM_AXES), []).append(i)
    table = {}                                   # (j, k) -> V_j(T_fit_j + delay_k)
    for members in strata.values():
        for j in members:
            for k in members:
                d_k = num(gen[k]["T_transition"]) - num(gen[k]["T_fit"])
                v_jk = (v_st[j] if j == k else
                        _v_at(histories.get(gen[j]["cell"]), num(gen[j]["T_fit"]) + d_k))
                table[j, k] = v_st[j] if v_jk is None else v_jk
    rng = np.random.default_rng(seed + 1)
    draws = []
    movable = [m for m in strata.values() if len(m) > 1]
    for _ in range(n_null if q.size else 0):
        v_null = v_st.copy()
        for members in movable:
            for j, k in zip(members, rng.permutation(members)):
                v_null[j] = table[j, int(k)]
        draws.append(float(_shares(v_sc, peers, v_null).mean()))
    p = stats.permutation_p(draws, share)
    delayed = [(num(r.get("V_fit")), num(r.get("V_final"))) for r in recs
               if r.get("regime") == "intermediate"]
    delayed = [(m, f) for m, f in delayed if m is not None and f is not None]
    return {"share": share, "ci": ci, "ci_method": method,
            "n": int(q.size), "n_pairs": n_pairs, "skipped": skipped,
            "null": {"q95": float(np.quantile(draws, 0.95)) if draws else None,
                     "median": float(np.median(draws)) if draws else None,
                     "n_draws": len(draws), "n_strata_permuted": len(movable),
                     "definition": "share with each generalised peer's V_transition replaced by "
                                   "its V at T_fit + the delay of another cell of its stratum "
                                   "(fixed eta lambda), delays permuted within strata"},
            "p": p, "beats_null": None if p is None else bool(p <= P1_ALPHA),
            "same_cell_share": (sum(m > f for m, f in delayed) / len(delayed)
                                if delayed else None),
            "same_cell_n": len(delayed),
            "definition": "P(V_fit of a shortcut-reliant cell > V_transition of another generalised "
                          "cell at the same lambda), against the null where the delay is unrelated "
                          "to V"}


# ----------------------------------------------------------------------------- P2

def regime_ordering(cells, n_boot: int = 1000, seed: int = 0) -> dict:
    """P2: Kendall tau-b of regime rank with lambda within slices (module docstring)."""
    recs = [r for r in records(cells) if r.get("regime") in REGIME_RANK
            and num(r.get("weight_decay")) is not None]
    names = ["weak (shortcut persists)", "transition (intermediate/immediate)", "strong (nothing fits)"]
    counts = dict.fromkeys(names, 0)
    for r in recs:
        counts[names[REGIME_RANK[r["regime"]]]] += 1
    keys = [k for k in SLICE_KEYS if any(k in r for r in recs)]
    slices: dict[tuple, list] = {}
    for r in recs:
        slices.setdefault(key_of(r, keys), []).append(r)
    taus, weights, n_disc, n_pairs = [], [], 0, 0
    for members in slices.values():
        lam = np.array([float(r["weight_decay"]) for r in members])
        rank = np.array([REGIME_RANK[r["regime"]] for r in members])
        below = np.tri(len(lam), k=-1, dtype=bool)           # each unordered pair once
        d_lam, d_rank = np.subtract.outer(lam, lam), np.subtract.outer(rank, rank)
        pairs = int((below & (d_lam != 0)).sum())
        if pairs == 0:
            continue
        n_pairs += pairs
        n_disc += int((below & (d_lam * d_rank < 0)).sum())
        tau = 0.0 if np.ptp(rank) == 0 else num(st.kendalltau(lam, rank, variant="b").statistic)
        taus.append(0.0 if tau is None else tau)
        weights.append(pairs)
    taus_a, w_a = np.asarray(taus), np.asarray(weights, float)
    ci, method = stats.bootstrap_ci((taus_a, w_a), lambda t, w: np.sum(t * w) / np.sum(w),
                                    n_boot=n_boot, seed=seed)
    return {"tau_b": float(np.sum(taus_a * w_a) / w_a.sum()) if taus else None,
            "ci": ci, "ci_method": method, "n_slices": len(taus), "counts": counts,
            "all_present": all(v > 0 for v in counts.values()),
            "n_lambda": len({float(r["weight_decay"]) for r in recs}),
            "n_pairs": n_pairs, "n_discordant": n_disc,
            "definition": "pair-weighted mean over slices of Kendall tau-b(lambda, regime rank)"}


# ----------------------------------------------------------------------------- P4

def _is_weight_tensor(name: str, layer: dict) -> bool:
    """A weight matrix or kernel: named ``*weight`` and not of a normalisation layer (the record's
    ``norm_layer`` mark, :func:`nht.core.norms.norm_layer_tensors`)."""
    return name.rsplit(".", 1)[-1].endswith("weight") and not layer.get("norm_layer", False)


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


def layer_hierarchy(cells, layers: dict | None = None) -> dict:
    """P4 input: per-layer contraction ``ln(V_fit,l / V_final,l)`` over ``intermediate`` cells."""
    per_layer: dict[str, list[float]] = {}
    n_cells = readout_max = 0
    skipped: dict[str, int] = {}
    for rec in records(cells):
        if rec.get("regime") != "intermediate":
            continue
        contr = {}
        for name, vals in _layers_of(rec, layers).items():
            if not isinstance(vals, dict) or not _is_weight_tensor(name, vals):
                continue
            vm, vf = num(vals.get("V_fit")), num(vals.get("V_final"))
            if vm and vf and vm > 0 and vf > 0:
                contr[name] = math.log(vm / vf)
        # the readout: a known name, else the last weight tensor in parameter order (the
        # history's V:<tensor> columns and the record's layers keep that order)
        readout = next((n for n in READOUT_NAMES if n in contr), None) or (list(contr)[-1] if contr else None)
        if readout is None or len(contr) < 2:
            count(skipped, "no_layers" if not contr else "no_readout_or_single_layer")
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
            "definition": "share of intermediate cells whose readout weight has the largest "
                          "ln(V_fit/V_final) among weight tensors"}
