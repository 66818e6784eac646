"""Fit the NHT delay law across the cells of one experiment.

* Delay law: ``delay = k * T_pred + b`` with ``T_pred = ln(V_mem / V_final) / (2 eta lambda)``;
  the theory predicts k ~ 1 (Theta(.) allows another constant) and a high R^2.
* Baseline: ``delay = k' / (eta lambda) + b'`` -- what a plain time-scale argument gives without
  any norm information. If it fits as well as the law, the norms add nothing.

Only cells with a measured delay (regime ``delayed`` or ``immediate``) and a finite T_pred enter
the fits; the others are counted by reason in ``excluded``.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from nht.norms import REGIMES


def linear_fit(x, y) -> dict:
    """Ordinary least squares y = k x + b. Returns {k, b, r2, n}; NaNs when n < 3 or x constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    if n < 3 or np.ptp(x) == 0:
        return {"k": math.nan, "b": math.nan, "r2": math.nan, "n": int(n)}
    k, b = np.polyfit(x, y, 1)
    resid = y - (k * x + b)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float((resid ** 2).sum()) / ss_tot if ss_tot > 0 else math.nan
    return {"k": float(k), "b": float(b), "r2": float(r2), "n": int(n)}


def fit_cells(records: list[dict]) -> dict:
    """Regime counts, exclusions and the two fits from per-cell norm records (norms.json dicts,
    each with its ``lr`` and ``weight_decay``)."""
    regimes = Counter(r["regime"] for r in records)
    usable, excluded = [], Counter()
    for r in records:
        if r["regime"] not in ("delayed", "immediate"):
            excluded[f"regime:{r['regime']}"] += 1
        elif r.get("T_pred") is None or not math.isfinite(r["T_pred"]):
            excluded["no_T_pred"] += 1
        elif r["lr"] * r["weight_decay"] <= 0:
            excluded["zero_eta_lambda"] += 1
        else:
            usable.append(r)
    delay = [r["delay"] for r in usable]
    law = linear_fit([r["T_pred"] for r in usable], delay)
    base = linear_fit([1.0 / (r["lr"] * r["weight_decay"]) for r in usable], delay)
    return {
        "cells": len(records),
        "regimes": {name: regimes.get(name, 0) for name in REGIMES},
        "fit_cells": len(usable),
        "excluded": dict(excluded),
        "delay_law": law,
        "baseline_inverse_eta_lambda": base,
    }
