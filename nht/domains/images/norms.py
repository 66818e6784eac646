"""Parameter norms and the per-cell norm/regime summary.

V always means the SQUARED L2 norm of parameters, V = ||theta||^2 = sum of squared entries:

* ``V``          all parameters;
* ``V_no_norm``  all parameters except those of normalisation layers (BatchNorm/GroupNorm/LayerNorm);
* ``V_layer:<name>`` per layer (a module owning parameters directly, e.g. ``features.0`` or ``fc1``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@torch.no_grad()
def squared_norms(model: nn.Module) -> dict[str, float]:
    """V (squared L2 norm) in total, without normalisation parameters, and per layer."""
    total = no_norm = 0.0
    per_layer = {}
    for name, module in model.named_modules():
        params = list(module.parameters(recurse=False))
        if not params:
            continue
        v = float(sum(p.detach().double().pow(2).sum().item() for p in params))
        per_layer[f"V_layer:{name}"] = v
        total += v
        if not isinstance(module, NORM_TYPES):
            no_norm += v
    return {"V": total, "V_no_norm": no_norm, **per_layer}


REGIME_LABELS = ("weak", "intermediate", "strong", "init_decay", "diverged")


def classify_regime(decay_pct: float | None, status: str, thresholds: tuple[float, float],
                    norm_grew: bool | None = None) -> str:
    """Regime of one cell from its decay from the V peak (V = squared L2 norm, epochs >= 1).

    Rule, applied in this order:

    1. ``diverged``: training produced NaN/inf (or there is no finite V after epoch 0);
    2. ``init_decay``: ``norm_grew`` is False, i.e. V never rose above V_init (epoch 0) in any epoch >= 1.
       V then only shrank from the initialisation, and its "decay from the peak" measures nothing but
       where the first epoch happened to land (a V that collapses in epoch 1 and then creeps up would
       read 0 % = weak). Such a cell is NOT weak, intermediate or strong by default: the label says the
       norm-hierarchy regime is undetermined by V. ``norm_grew=None`` (unknown) skips this step;
    3. ``weak`` (decay from peak below ``thresholds[0]`` PERCENT of V_peak), ``intermediate``, or
       ``strong`` (>= ``thresholds[1]`` percent).
    """
    if status == "diverged" or decay_pct is None or not math.isfinite(decay_pct):
        return "diverged"
    if norm_grew is False:
        return "init_decay"
    if decay_pct < thresholds[0]:
        return "weak"
    if decay_pct < thresholds[1]:
        return "intermediate"
    return "strong"


def transition_epoch(epochs, clean_acc, reliance, reliance_threshold: float, clean_threshold: float):
    """First epoch at which clean accuracy reaches ``clean_threshold`` after a shortcut phase.

    The shortcut phase is any earlier epoch (>= 1) whose shortcut reliance reached
    ``reliance_threshold``. None if there was no shortcut phase or clean accuracy never crossed.
    """
    seen_shortcut = False
    for e, acc, rel in zip(epochs, clean_acc, reliance):
        if e < 1:
            continue
        if seen_shortcut and acc >= clean_threshold:
            return int(e)
        if rel >= reliance_threshold:
            seen_shortcut = True
    return None


PHASE_RULE = {"fit_train": 0.9, "fit_reliance": 0.7, "sustain_reliance": 0.5, "sustain_min": 5,
              "sustain_frac": 0.05, "rise": 0.20, "fall": 0.30}
PHASE_REGIMES = ("no_fit", "no_shortcut", "immediate", "shortcut_persists", "delayed", "diverged")


def shortcut_phases(epochs, train_acc, clean_acc, reliance, V=None, decay_budget=None,
                    rule: dict | None = None) -> dict:
    """Behavioural phases of one cell (no norms involved): fit on the cue, sustained reliance, switch.

    Times are EPOCHS (epoch 0 = initialisation is ignored); ``decay_budget`` (Lambda = lambda * sum of
    lr up to the epoch) and ``V`` (squared L2 norm) are only read off at the phase epochs. With ``rule``
    = :data:`PHASE_RULE` (any key may be overridden):

    1. fit on the cue at ``t_fit``: first epoch with train accuracy >= fit_train and reliance >=
       fit_reliance;
    2. sustained: reliance >= sustain_reliance at every epoch of [t_fit, t_fit + K), K = max(sustain_min,
       ceil(sustain_frac * last epoch)); ``sustain_epochs`` = epochs from t_fit until reliance first
       falls below sustain_reliance;
    3. switch at ``t_switch``: first epoch >= t_fit + K with clean accuracy >= clean(t_fit) + rise and
       reliance <= reliance(t_fit) - fall.

    ``phase_regime``: ``no_fit`` (train accuracy never reached fit_train: learning suppressed, the
    strong regime), ``no_shortcut`` (fitted, but never with reliance >= fit_reliance), ``immediate``
    (fit on the cue, reliance gone within K epochs), ``shortcut_persists`` (sustained, no switch: the
    weak regime), ``delayed`` (sustained, then the switch: the intermediate regime, a transition).
    ``score`` = max over epochs >= t_fit + K of min(1, rise_e / rise, fall_e / fall), clipped at 0
    (rise/fall relative to t_fit; from epoch 1 when there is no fit); ``late_rise``: clean accuracy rose
    by >= rise after a sustained fit (or, with no fit, after epoch 1).
    """
    r = {**PHASE_RULE, **(rule or {})}
    ep = np.asarray(epochs, dtype=float)
    keep = ep >= 1
    ep = ep[keep].astype(int)
    tr, cl, rel = (np.asarray(a, dtype=float)[keep] for a in (train_acc, clean_acc, reliance))
    V = np.asarray(V, dtype=float)[keep] if V is not None else np.full(len(ep), np.nan)
    lam = np.asarray(decay_budget, dtype=float)[keep] if decay_budget is not None else np.full(len(ep), np.nan)
    out = {"phase_regime": "no_fit", "transition": False, "t_fit": None, "t_switch": None, "Lambda_fit": None,
           "Lambda_switch": None, "V_fit": None, "V_switch": None, "sustained": False, "sustain_epochs": None,
           "score": 0.0, "late_rise": False, "max_rise": None, "max_fall": None}
    if len(ep) == 0:
        return out

    def num(x):
        return float(x) if np.isfinite(x) else None

    k = max(int(r["sustain_min"]), math.ceil(r["sustain_frac"] * int(ep.max())))
    fit = np.flatnonzero((tr >= r["fit_train"]) & (rel >= r["fit_reliance"]))
    if len(fit):
        i = int(fit[0])
        out.update(t_fit=int(ep[i]), Lambda_fit=num(lam[i]), V_fit=num(V[i]))
        window = rel[i:i + k]
        out["sustained"] = bool(len(window) == k and (window >= r["sustain_reliance"]).all())
        below = np.flatnonzero(rel[i:] < r["sustain_reliance"])
        out["sustain_epochs"] = int(ep[i + below[0]] - ep[i]) if len(below) else int(ep[-1] - ep[i] + 1)
        start = i + k
        out["phase_regime"] = "shortcut_persists" if out["sustained"] else "immediate"
    else:
        i, start = 0, 1
        if (tr >= r["fit_train"]).any():
            out["phase_regime"] = "no_shortcut"
    if start < len(ep):
        rise, fall = cl[start:] - cl[i], rel[i] - rel[start:]
        out["max_rise"], out["max_fall"] = float(np.nanmax(rise)), float(np.nanmax(fall))
        both = np.minimum(np.minimum(rise / r["rise"], fall / r["fall"]), 1.0).clip(min=0.0)
        out["score"] = float(np.nanmax(both))
        out["late_rise"] = bool(out["max_rise"] >= r["rise"] and (out["sustained"] or not len(fit)))
        if len(fit) and out["sustained"]:
            sw = np.flatnonzero((rise >= r["rise"]) & (fall >= r["fall"]))
            if len(sw):
                j = start + int(sw[0])
                out.update(transition=True, t_switch=int(ep[j]), Lambda_switch=num(lam[j]), V_switch=num(V[j]),
                           phase_regime="delayed")
    return out


def summarize_history(hist, settings: dict, status: str) -> dict:
    """Norm summary of one cell from its history table (pandas DataFrame, one row per epoch).

    V_peak is the maximum of V over epochs >= 1 (epoch 0 is the initialisation); decay_pct is
    100 * (V_peak - V_final) / V_peak. ``norm_grew`` is V_peak > V_init; ``regime`` follows
    :func:`classify_regime` (``init_decay`` when the norm never grew above V_init), and
    ``regime_from_peak`` is the weak/intermediate/strong label the decay from the peak alone would give
    (kept for comparison; do not count it as a regime when ``norm_grew`` is False). ``phase_regime``,
    ``t_fit``, ``t_switch`` (epochs) and ``sustain_epochs`` come from :func:`shortcut_phases`, a rule on
    accuracies and reliance only (no norms), so they stay meaningful for ``init_decay`` cells.
    """
    trained = hist[hist["epoch"] >= 1]
    out = {"status": status, "epochs_done": int(hist["epoch"].max()) if len(hist) else 0,
           "V_init": float(hist["V"].iloc[0]) if len(hist) else None}
    finite = trained[np.isfinite(trained["V"])]
    if finite.empty:
        out.update(V_peak=None, epoch_peak=None, V_final=None, decay_pct=None,
                   regime=classify_regime(None, "diverged", (1, 40)), transition_epoch=None)
        return out
    ipk = int(finite["V"].to_numpy().argmax())
    last = finite.iloc[-1]
    v_peak, v_final = float(finite["V"].iloc[ipk]), float(last["V"])
    decay = 100.0 * (v_peak - v_final) / v_peak if v_peak > 0 else 0.0
    th = settings.get("regime_thresholds", [1.0, 40.0])
    grew = bool(v_peak > out["V_init"]) if out["V_init"] is not None and math.isfinite(out["V_init"]) else None
    out.update(
        V_peak=v_peak, epoch_peak=int(finite["epoch"].iloc[ipk]), V_final=v_final, decay_pct=decay,
        V_no_norm_final=float(last["V_no_norm"]),
        # False when V never rose above its initial value: the "decay" is then shrinkage of the
        # initialisation, not a peak-then-decay of a grown (shortcut) solution
        norm_grew=grew,
        regime=classify_regime(decay, status, tuple(th), grew),
        regime_from_peak=classify_regime(decay, status, tuple(th)),
        transition_epoch=transition_epoch(hist["epoch"], hist["clean_acc"], hist["reliance"],
                                          settings.get("reliance_threshold", 0.5),
                                          settings.get("transition_threshold", 0.5)),
    )
    for col in ("train_acc", "clean_acc", "aligned_acc", "conflicting_acc", "shortcut_only_acc",
                "reliance", "worst_group_acc"):
        if col in hist.columns:
            out[f"final_{col}"] = float(last[col]) if np.isfinite(last[col]) else None
    if "clean_acc" in finite.columns:
        out["best_clean_acc"] = float(finite["clean_acc"].max())
    if {"train_acc", "clean_acc", "reliance"} <= set(hist.columns):
        ph = shortcut_phases(hist["epoch"], hist["train_acc"], hist["clean_acc"], hist["reliance"], hist["V"],
                             hist["decay_budget"] if "decay_budget" in hist.columns else None)
        out.update({"phase_regime": "diverged" if status == "diverged" else ph["phase_regime"],
                    "t_fit": ph["t_fit"], "t_switch": ph["t_switch"], "sustain_epochs": ph["sustain_epochs"]})
    return out
