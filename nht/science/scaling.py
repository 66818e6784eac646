"""Regime counts and the delay-law fit of one experiment for ``fit.json``.

A thin call into :mod:`nht.science.delay_law`, the one place the delay law is fitted (the science layer
calls the same function with the same defaults, so ``fit.json`` and ``science.json`` agree).
"""

from __future__ import annotations

from collections import Counter

from nht.science.delay_law import fit_delay_laws
from nht.core.events import REGIMES


def fit_cells(records: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """``{cells, regimes, fit_cells, excluded, delay_law, baseline_inverse_eta_lambda,
    censoring}`` from per-cell norm records (norms.json dicts with ``lr`` and ``weight_decay``).
    See :func:`nht.science.delay_law.fit_delay_laws` for the fits and the exclusion reasons."""
    regimes = Counter(r.get("regime") for r in records)
    fits = fit_delay_laws(records, n_boot=n_boot, seed=seed)
    return {
        "cells": len(records),
        "regimes": {name: regimes.get(name, 0) for name in REGIMES},
        "fit_cells": fits["fit_cells"],
        "excluded": fits["excluded"],
        "delay_law": fits["delay_law"],
        "baseline_inverse_eta_lambda": fits["baseline_inverse_eta_lambda"],
        "censoring": fits["censoring"],
    }
