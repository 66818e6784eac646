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


def classify_regime(decay_pct: float | None, status: str, thresholds: tuple[float, float]) -> str:
    """``weak`` (decay from peak below thresholds[0] %), ``intermediate``, ``strong`` (>= thresholds[1] %).

    ``diverged`` when training produced NaN/inf.
    """
    if status == "diverged" or decay_pct is None or not math.isfinite(decay_pct):
        return "diverged"
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


def summarize_history(hist, settings: dict, status: str) -> dict:
    """Norm summary of one cell from its history table (pandas DataFrame, one row per epoch).

    V_peak is the maximum of V over epochs >= 1 (epoch 0 is the initialisation); decay_pct is
    100 * (V_peak - V_final) / V_peak.
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
    out.update(
        V_peak=v_peak, epoch_peak=int(finite["epoch"].iloc[ipk]), V_final=v_final, decay_pct=decay,
        V_no_norm_final=float(last["V_no_norm"]),
        # False when V never rose above its initial value: the "decay" is then shrinkage of the
        # initialisation, not a peak-then-decay of a grown (shortcut) solution
        norm_grew=bool(v_peak > out["V_init"]) if out["V_init"] is not None else None,
        regime=classify_regime(decay, status, tuple(th)),
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
    return out
