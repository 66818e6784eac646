"""The one event and norm extraction, and the one regime vocabulary, for every domain.

Input: one cell's history (:mod:`nht.core.history`: one row per evaluation with ``step``,
``Lambda``, ``train_acc``, ``test_acc``, ``phi``, ``V``, ``V:<tensor>``; ``epoch`` where it
exists), its settings and its status (``diverged`` when training hit NaN/Inf). Output: the cell's
event record. All times are optimizer STEPS (``epoch_*`` and ``Lambda_*`` give the same moments
in epochs and in decay budget); V is the SQUARED L2 norm.

Events (the rule's thresholds are config values, see :class:`EventRule`):

* **fit** ``T_fit``: the first evaluation with ``train_acc >= train_threshold`` and
  ``phi >= fit_phi``: the training data are fitted *with the shortcut* (modular: ``fit_phi = 0``,
  any fit is memorisation; images: the border cue carries the fit).
* **transition** ``T_transition``: the first evaluation at or after ``T_fit`` with
  ``test_acc >= test_threshold`` (where set), ``test_acc >= test_acc(T_fit) + transition_rise``
  and ``phi <= phi(T_fit) - transition_fall``: the structured solution took over.
* ``delay = T_transition - T_fit`` (steps). ``T_fit_90``/``T_transition_90``: the same events with
  ``secondary_threshold`` in place of both accuracy thresholds (where set).

Norms: ``V_init`` (first row), ``V_fit``, ``V_transition``, ``V_peak`` and ``V_peak_step`` (the
maximum over ALL evaluated rows, the initialisation included), ``V_final`` (last row);
``norm_grew = V_peak > V_init``; ``decay_pct = 100 (V_peak - V_final) / V_peak``. Per tensor, the
same five values under ``layers[<tensor>]``.

Prediction: ``T_pred = ln(V_fit / V_final) / (2 r)`` (steps), the NHT delay for the decay
``exp(-2 Lambda)``, with ``r = (Lambda_final - Lambda_fit) / (stop_step - T_fit)`` the decay budget
per step actually applied after the fit (``eta lambda`` at constant lr; :func:`decay_budget_rate`,
the one decay-rate definition, which the science layer uses too).

Regimes (one vocabulary, the paper's three plus two):

* ``diverged``: NaN/Inf during training;
* ``strong``: the training data are never fitted (``train_acc`` never reaches its threshold);
* ``immediate``: fitted without a shortcut phase (never ``phi >= fit_phi`` while fitted), or the
  transition came within ``immediate_delay`` steps of the fit;
* ``weak``: fitted with the shortcut and no transition before the run ended (the shortcut
  persists; the record is ``censored``: the delay is only known to exceed ``delay_lower_bound``);
* ``intermediate``: fitted with the shortcut, then the delayed transition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nht.core.history import check_history, tensor_columns
from nht.core.io import finite_or_none as _num

REGIMES = ("weak", "intermediate", "strong", "immediate", "diverged")


@dataclass(frozen=True)
class EventRule:
    """Thresholds of the event definitions (accuracies and phi are fractions; delays in steps)."""

    train_threshold: float
    fit_phi: float = 0.0
    test_threshold: float | None = None
    transition_rise: float = 0.0
    transition_fall: float = 0.0
    immediate_delay: float = 0.0
    secondary_threshold: float | None = None

    @classmethod
    def from_settings(cls, settings: dict, steps_per_epoch: float | None = None) -> "EventRule":
        """The rule of a cell's resolved settings. ``immediate_epochs`` (images) becomes
        ``immediate_delay`` in steps through ``steps_per_epoch``."""
        immediate = settings.get("immediate_delay")
        if immediate is None and settings.get("immediate_epochs") is not None and steps_per_epoch:
            immediate = float(settings["immediate_epochs"]) * steps_per_epoch
        return cls(train_threshold=float(settings["train_threshold"]),
                   fit_phi=float(settings.get("fit_phi", 0.0)),
                   test_threshold=settings.get("test_threshold"),
                   transition_rise=float(settings.get("transition_rise", 0.0)),
                   transition_fall=float(settings.get("transition_fall", 0.0)),
                   immediate_delay=float(immediate or 0.0),
                   secondary_threshold=settings.get("secondary_threshold"))


def _first(mask: np.ndarray) -> int | None:
    hit = np.flatnonzero(mask)
    return int(hit[0]) if len(hit) else None


def _fit_index(train: np.ndarray, phi: np.ndarray, train_threshold: float, fit_phi: float) -> int | None:
    with np.errstate(invalid="ignore"):
        return _first((train >= train_threshold) & (phi >= fit_phi))


def _transition_index(test: np.ndarray, phi: np.ndarray, i_fit: int | None, rule: EventRule,
                      test_threshold: float | None) -> int | None:
    if i_fit is None:
        return None
    t, p = test[i_fit:], phi[i_fit:]
    with np.errstate(invalid="ignore"):
        ok = (t >= test[i_fit] + rule.transition_rise) & (p <= phi[i_fit] - rule.transition_fall)
        if test_threshold is not None:
            ok &= t >= test_threshold
    j = _first(ok)
    return None if j is None else i_fit + j


def classify_regime(status: str, fitted: bool, shortcut_fit: bool, delay: float | None,
                    immediate_delay: float) -> str:
    """The regime from the events (see the module docstring)."""
    if status == "diverged":
        return "diverged"
    if not fitted:
        return "strong"
    if not shortcut_fit:
        return "immediate"
    if delay is None:
        return "weak"
    return "immediate" if delay <= immediate_delay else "intermediate"


def delay_prediction(v_fit: float | None, v_final: float | None, rate: float | None) -> float | None:
    """``T_pred = ln(V_fit / V_final) / (2 rate)`` in steps (V squared, hence the 2), ``rate`` the
    decay budget per step; None when undefined."""
    if not v_fit or not v_final or v_fit <= 0 or v_final <= 0 or not rate or rate <= 0:
        return None
    return math.log(v_fit / v_final) / (2 * rate)


def decay_budget_rate(history: pd.DataFrame, t0, t1) -> float | None:
    """The decay rate per step between steps ``t0 < t1``: ``(Lambda(t1) - Lambda(t0)) / (t1 - t0)``,
    with ``Lambda`` the history's decay budget (``lambda * sum of lr``, linear between evaluations).
    ``eta lambda`` at constant lr, the mean of ``eta_t lambda`` under a schedule: the one decay-rate
    definition of nht (events, science). ``None`` when undefined (no window, no Lambda)."""
    if t0 is None or t1 is None or not t1 > t0 or "Lambda" not in history.columns:
        return None
    steps, lam = history["step"].to_numpy(dtype=float), history["Lambda"].to_numpy(dtype=float)
    ok = np.isfinite(steps) & np.isfinite(lam)
    if ok.sum() < 2:
        return None
    at = np.interp([float(t0), float(t1)], steps[ok], lam[ok])
    return _num((at[1] - at[0]) / (float(t1) - float(t0)))


def extract_events(history: pd.DataFrame, settings: dict, status: str = "finished") -> dict:
    """The event record of one cell (see the module docstring); ``settings`` = its resolved config."""
    h = check_history(history).reset_index(drop=True)
    steps = h["step"].to_numpy()
    train, test, phi = (h[c].to_numpy(dtype=float) for c in ("train_acc", "test_acc", "phi"))
    lam, V = h["Lambda"].to_numpy(dtype=float), h["V"].to_numpy(dtype=float)
    epochs = h["epoch"].to_numpy(dtype=float) if "epoch" in h.columns else None
    spe = (steps[-1] / epochs[-1]) if epochs is not None and epochs[-1] > 0 else None
    rule = EventRule.from_settings(settings, spe)

    i_fit = _fit_index(train, phi, rule.train_threshold, rule.fit_phi)
    i_tr = _transition_index(test, phi, i_fit, rule, rule.test_threshold)
    fitted = bool(np.nan_to_num(train, nan=-1.0).max() >= rule.train_threshold) if len(train) else False
    at = lambda i, arr: None if i is None else _num(arr[i])  # noqa: E731
    step_at = lambda i: None if i is None else int(steps[i])  # noqa: E731
    T_fit, T_tr = step_at(i_fit), step_at(i_tr)
    delay = (T_tr - T_fit) if T_tr is not None else None
    finite = np.where(np.isfinite(V), V, -np.inf)
    i_peak = int(np.argmax(finite))
    stop = int(steps[-1])
    rec = {
        "status": status, "stop_step": stop,
        "T_fit": T_fit, "T_transition": T_tr, "delay": delay,
        "epoch_fit": at(i_fit, epochs) if epochs is not None else None,
        "epoch_transition": at(i_tr, epochs) if epochs is not None else None,
        "Lambda_fit": at(i_fit, lam), "Lambda_transition": at(i_tr, lam), "Lambda_final": _num(lam[-1]),
        "V_init": _num(V[0]), "V_fit": at(i_fit, V), "V_transition": at(i_tr, V),
        "V_peak": _num(V[i_peak]), "V_peak_step": int(steps[i_peak]), "V_final": _num(V[-1]),
        "final_train_acc": _num(train[-1]), "final_test_acc": _num(test[-1]), "final_phi": _num(phi[-1]),
        "test_acc_at_fit": at(i_fit, test), "phi_at_fit": at(i_fit, phi),
    }
    if rule.secondary_threshold is not None:
        sec = float(rule.secondary_threshold)
        j = _fit_index(train, phi, sec, rule.fit_phi)
        rec["T_fit_90"] = step_at(j)
        rec["T_transition_90"] = step_at(_transition_index(test, phi, j, rule,
                                                           sec if rule.test_threshold is not None else None))
    rec["regime"] = classify_regime(status, fitted, i_fit is not None, delay, rule.immediate_delay)
    rate = decay_budget_rate(h, T_fit, stop)
    rec["decay_per_step_after_fit"] = rate
    rec["T_pred"] = delay_prediction(rec["V_fit"], rec["V_final"], rate)
    rec["norm_grew"] = (None if rec["V_peak"] is None or rec["V_init"] is None
                        else bool(rec["V_peak"] > rec["V_init"]))
    rec["decay_pct"] = (100.0 * (rec["V_peak"] - rec["V_final"]) / rec["V_peak"]
                        if rec["V_peak"] and rec["V_final"] is not None else None)
    rec["censored"] = rec["regime"] == "weak"          # a shortcut fit with no transition by the stop
    rec["delay_lower_bound"] = (stop - T_fit) if rec["censored"] else None
    rec["norm_grew_after_fit"] = None if rec["V_fit"] is None else bool(rec["V_final"] >= rec["V_fit"])
    rec["layers"] = {}
    for col in tensor_columns(h):
        Vl = h[col].to_numpy(dtype=float)
        rec["layers"][col[2:]] = {"V_init": _num(Vl[0]), "V_fit": at(i_fit, Vl), "V_transition": at(i_tr, Vl),
                                  "V_peak": _num(np.nanmax(Vl)) if np.isfinite(Vl).any() else None,
                                  "V_final": _num(Vl[-1])}
    return rec
