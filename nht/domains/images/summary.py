"""Aggregate the cells of one image experiment into ``cells.csv`` and ``experiment_summary.json``.

``experiment_summary.json`` keys (all accuracies are fractions in [0, 1]; [mean, sd, n] uses the
sample standard deviation, 0.0 when n = 1; rho/lambda keys are rendered like cell ids, e.g. "0.5"):

* ``kind``: "image"; ``experiment``; ``cells``: number of cells; ``status``: {finished|time_limit|diverged: count}
* ``test_acc_by_rho``: {rho: [mean, sd, n]} of final ``test_acc`` (clean test set) at ``reference_weight_decay``
* ``phi_by_rho``: {rho: [mean, sd, n]} of final ``phi`` (shortcut reliance), same cells
* ``test_acc_by_rho_and_weight_decay``: {lambda: {rho: [mean, sd, n]}} of final ``test_acc``
* ``regimes``: {weak|intermediate|strong|immediate|diverged: count} over all cells, the one regime
  vocabulary of :mod:`nht.core.events` (the same rule as modular cells)
* ``cells_norm_never_grew``: cells whose V never exceeded V_init (their decay is shrinkage of the
  initialisation, not a peak-then-decay)
* ``decay_from_peak``: {lambda: [mean, sd, n]} of decay from peak in PERCENT at ``reference_rho``
* ``decay_from_peak_by_rho``: {rho: {lambda: [mean, sd, n]}}
* ``step_peak``: {lambda: [mean, sd, n]} step of the V peak at ``reference_rho``
* ``decay_budget``: {lambda: Lambda at the end} (mean over cells), the total decoupled decay applied
* ``norm_ratio``: mean V_final at the smallest lambda / mean V_final at the largest (at reference_rho;
  null with one lambda); ``norm_ratio_detail`` gives the parts
* ``worst_group_acc``: {rho: [mean, sd, n]} at reference_weight_decay, or null when the dataset has no
  spurious attribute
* ``transitions``: regime counts, and per intermediate cell its fit and transition (steps, epochs,
  Lambda)
* the science layer's blocks (``science.json``, :func:`nht.science.analyse.analyse_experiment`,
  the same as for modular experiments): ``delay_law``, ``prediction``, ``decay_rate``,
  ``clean_norm_separation``, ``norm_ordering``, ``regime_ordering``, ``layer_hierarchy``, ... and
  the ``scorecard``
* ``reference_rho``, ``reference_weight_decay``; ``figures``: list of paths (the ``training``
  block comes from the job metas, as for modular experiments: :mod:`nht.stages.experiment_summary`)
* ``provenance``: code_version, torch, devices of the cells' training; ``config``: the experiment's
  resolved settings (both placed as for every domain by :mod:`nht.stages.experiment_summary`)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nht.config import format_value
from nht.core.events import REGIMES
from nht.core.history import FLOAT_FORMAT
from nht.core.io import finite_or_none, read_json


def mean_sd_n(values) -> list:
    """``[mean, sample sd, n]`` of the finite values (sd 0.0 for one value; ``[None, None, 0]`` for none)."""
    v = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").replace([np.inf, -np.inf], np.nan).dropna()
    if v.empty:
        return [None, None, 0]
    mean, sd, n = v.agg(["mean", "std", "count"])
    return [float(mean), float(sd) if n > 1 else 0.0, int(n)]


def load_cells(norms_paths) -> pd.DataFrame:
    rows = []
    for p in norms_paths:
        d = read_json(p)
        d.pop("settings", None)
        prov = d.pop("provenance", {})
        d["device"] = prov.get("device")
        d["torch"] = prov.get("torch")
        d["code_version"] = prov.get("code_version")
        d["path"] = str(p)
        rows.append(d)
    return pd.DataFrame(rows)


def _pick_reference(df: pd.DataFrame, axis: str, other: str, configured):
    if configured is not None:
        return configured
    counts = df.groupby(axis)[other].nunique()
    best = counts.max()
    return float(max(v for v, c in counts.items() if c == best))


def _by(df: pd.DataFrame, key: str, col: str) -> dict:
    return {format_value(float(k)): mean_sd_n(g[col]) for k, g in sorted(df.groupby(key), key=lambda t: t[0])}


def summarize(df: pd.DataFrame, experiment: str, exp_config: dict, figures: list[str]) -> dict:
    ok = df[df["status"] != "diverged"]
    ref_wd = _pick_reference(df, "weight_decay", "rho", exp_config.get("reference_weight_decay"))
    ref_rho = _pick_reference(df, "rho", "weight_decay", exp_config.get("reference_rho"))
    at_wd = ok[np.isclose(ok["weight_decay"], ref_wd)]
    at_rho = df[np.isclose(df["rho"], ref_rho)]
    at_rho_ok = at_rho[at_rho["status"] != "diverged"]

    norm_ratio, detail = None, None
    lams = sorted(at_rho_ok["weight_decay"].unique())
    if len(lams) >= 2:
        v_small = float(at_rho_ok[at_rho_ok["weight_decay"] == lams[0]]["V_final"].mean())
        v_large = float(at_rho_ok[at_rho_ok["weight_decay"] == lams[-1]]["V_final"].mean())
        norm_ratio = v_small / v_large if v_large > 0 else None
        detail = {"rho": ref_rho, "lambda_small": float(lams[0]), "lambda_large": float(lams[-1]),
                  "V_final_small": v_small, "V_final_large": v_large}
    wga = None
    if "final_worst_group_acc" in ok.columns and ok["final_worst_group_acc"].notna().any():
        wga = _by(at_wd, "rho", "final_worst_group_acc")
    status = df["status"].value_counts().to_dict()
    regimes = {r: int((df["regime"] == r).sum()) for r in REGIMES}
    return {
        "transitions": transitions(df),
        "kind": "image",
        "experiment": experiment,
        "cells": int(len(df)),
        "status": {str(k): int(v) for k, v in status.items()},
        "reference_weight_decay": ref_wd,
        "reference_rho": ref_rho,
        "test_acc_by_rho": _by(at_wd, "rho", "final_test_acc"),
        "phi_by_rho": _by(at_wd, "rho", "final_phi"),
        "test_acc_by_rho_and_weight_decay": {
            format_value(float(lam)): _by(g, "rho", "final_test_acc") for lam, g in ok.groupby("weight_decay")},
        "regimes": regimes,
        "cells_norm_never_grew": int((df.get("norm_grew", pd.Series(dtype=object)) == False).sum()),  # noqa: E712
        "decay_from_peak": _by(at_rho_ok, "weight_decay", "decay_pct"),
        "decay_from_peak_by_rho": {
            format_value(float(r)): _by(g, "weight_decay", "decay_pct") for r, g in ok.groupby("rho")},
        "step_peak": _by(at_rho_ok, "weight_decay", "V_peak_step"),
        "decay_budget": {format_value(float(lam)): float(g["Lambda_final"].mean())
                         for lam, g in df.groupby("weight_decay")},
        "norm_ratio": norm_ratio,
        "norm_ratio_detail": detail,
        "worst_group_acc": wga,
        "figures": list(figures),
        "provenance": {
            "code_version": next((v for v in df["code_version"] if v), None),
            "torch": next((v for v in df["torch"] if v), None),
            "devices": sorted({str(v) for v in df["device"] if v}),
        },
    }


def transitions(df: pd.DataFrame) -> dict:
    """Shortcut-to-shape transitions by the one event rule (:mod:`nht.core.events`): regime counts
    and, per ``intermediate`` cell, its fit and transition in steps, epochs and decay budget."""
    regimes = {str(k): int(v) for k, v in df["regime"].fillna("unknown").value_counts().items()}
    inter = df[df["regime"] == "intermediate"]
    keys = ("weight_decay", "seed", "T_fit", "T_transition", "epoch_fit", "epoch_transition", "Lambda_fit",
            "Lambda_transition")
    cells = {c: {k: finite_or_none(r.get(k)) for k in keys if k in inter.columns}
             for c, r in zip(inter["cell"], inter.to_dict("records"))}
    return {"n_cells": int(len(df)), "n_intermediate": int(len(inter)), "regimes": regimes, "cells": cells}


def image_block(norms_paths, experiment: str, exp_config: dict, table: str | Path) -> dict:
    """The image part of ``experiment_summary.json`` (:func:`summarize`; the experiment summary
    stage, :mod:`nht.stages.experiment_summary`, adds the science blocks, config and scorecard),
    and the cells' records as a table at ``table`` (``cells.csv``)."""
    df = load_cells(norms_paths)
    df.drop(columns=["layers"], errors="ignore").sort_values(
        ["rho", "border", "lr", "weight_decay", "seed"]).to_csv(table, index=False, float_format=FLOAT_FORMAT)
    return summarize(df, experiment, exp_config, [])
