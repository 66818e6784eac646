"""Per-cell norm extraction from a training history (modular kind).

Input: one cell's history (one row per evaluation step, columns ``step, train_acc, test_acc, V``
and ``V:<param>``; V = squared L2 norm). Output: the transition times and the squared norms at
the moments the NHT theory talks about, and the cell's regime.

Definitions (all times in optimizer steps, all V squared norms):

* ``T_mem``: first evaluated step with train accuracy >= ``train_threshold`` (memorisation /
  shortcut fitted); ``T_gen``: first step with test accuracy >= ``test_threshold``;
  ``T_mem_90``/``T_gen_90`` the same at ``secondary_threshold``.
* ``delay = T_gen - T_mem``.
* ``V_init`` (step 0), ``V_mem`` (at T_mem), ``V_gen`` (at T_gen), ``V_peak`` and
  ``V_peak_step`` (maximum over the run), ``V_final`` (last evaluated step, i.e. at the stop
  rule's stop step; V keeps falling after T_gen, so V_final depends on the stop rule).
* ``T_pred = ln(V_mem / V_final) / (2 eta lambda)``: the NHT delay prediction in steps.
* ``test_acc_at_T_mem``: test accuracy at T_mem (shortcut reliance at the fit is 1 minus it).
* Censoring: ``censored`` is true when the cell memorised but had not generalised when the run
  stopped (``max_steps``, the cap, is recorded); its delay is then only known to exceed
  ``delay_lower_bound = stop_step - T_mem`` (steps).
* ``norm_grew_after_fit``: ``V_final >= V_mem`` (the norm did not fall after T_mem, so
  ``T_pred <= 0``; such cells leave the delay-law fit with that reason).

Regimes: ``diverged`` (NaN/Inf loss), ``no_fit`` (train accuracy never reaches the threshold),
``shortcut_persists`` (fits train, never generalises before the run ends), ``immediate``
(delay <= ``immediate_delay``), ``delayed`` (the grokking regime).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

REGIMES = ("no_fit", "shortcut_persists", "delayed", "immediate", "diverged")


def first_step_at_or_above(steps: np.ndarray, values: np.ndarray, threshold: float) -> int | None:
    """First step whose value is >= threshold, or None."""
    hit = np.flatnonzero(values >= threshold)
    return int(steps[hit[0]]) if len(hit) else None


def _value_at(history: pd.DataFrame, step: int | None, column: str) -> float | None:
    if step is None:
        return None
    return float(history.loc[history["step"] == step, column].iloc[0])


def classify_regime(status: str, t_mem: int | None, t_gen: int | None, immediate_delay: int) -> str:
    if status == "diverged":
        return "diverged"
    if t_mem is None:
        return "no_fit"
    if t_gen is None:
        return "shortcut_persists"
    return "immediate" if t_gen - t_mem <= immediate_delay else "delayed"


def delay_prediction(v_mem: float | None, v_final: float | None, lr: float, weight_decay: float) -> float | None:
    """T_pred = ln(V_mem / V_final) / (2 eta lambda), in steps (V squared norms, hence the 2)."""
    if not v_mem or not v_final or v_mem <= 0 or v_final <= 0 or lr * weight_decay <= 0:
        return None
    return math.log(v_mem / v_final) / (2 * lr * weight_decay)


def extract_norms(history: pd.DataFrame, settings: dict, status: str = "finished") -> dict:
    """Norm record of one cell (see module docstring). ``settings`` is the cell's resolved config."""
    h = history.sort_values("step").reset_index(drop=True)
    steps = h["step"].to_numpy()
    train_thr, test_thr = settings["train_threshold"], settings["test_threshold"]
    sec = settings["secondary_threshold"]
    t_mem = first_step_at_or_above(steps, h["train_acc"].to_numpy(), train_thr)
    t_gen = first_step_at_or_above(steps, h["test_acc"].to_numpy(), test_thr)
    V = h["V"].to_numpy()
    peak = int(np.argmax(V)) if len(V) else 0
    rec = {
        "status": status,
        "stop_step": int(steps[-1]) if len(steps) else 0,
        "T_mem": t_mem, "T_gen": t_gen,
        "T_mem_90": first_step_at_or_above(steps, h["train_acc"].to_numpy(), sec),
        "T_gen_90": first_step_at_or_above(steps, h["test_acc"].to_numpy(), sec),
        "delay": (t_gen - t_mem) if (t_mem is not None and t_gen is not None) else None,
        "V_init": float(V[0]), "V_mem": _value_at(h, t_mem, "V"), "V_gen": _value_at(h, t_gen, "V"),
        "V_peak": float(V[peak]), "V_peak_step": int(steps[peak]), "V_final": float(V[-1]),
        "final_train_acc": float(h["train_acc"].iloc[-1]), "final_test_acc": float(h["test_acc"].iloc[-1]),
    }
    rec["regime"] = classify_regime(status, t_mem, t_gen, settings["immediate_delay"])
    rec["T_pred"] = delay_prediction(rec["V_mem"], rec["V_final"], settings["lr"], settings["weight_decay"])
    rec["test_acc_at_T_mem"] = _value_at(h, t_mem, "test_acc")
    rec["max_steps"] = settings.get("max_steps")
    rec["censored"] = bool(status != "diverged" and t_mem is not None and t_gen is None)
    rec["delay_lower_bound"] = (rec["stop_step"] - t_mem) if rec["censored"] else None
    rec["norm_grew_after_fit"] = (None if rec["V_mem"] is None
                                  else bool(rec["V_final"] >= rec["V_mem"]))
    rec["layers"] = {}
    for col in [c for c in h.columns if c.startswith("V:")]:
        Vl = h[col].to_numpy()
        rec["layers"][col[2:]] = {
            "V_init": float(Vl[0]), "V_mem": _value_at(h, t_mem, col), "V_gen": _value_at(h, t_gen, col),
            "V_peak": float(Vl.max()), "V_final": float(Vl[-1])}
    return rec
