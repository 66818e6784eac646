"""Aggregate the cells of one image experiment into ``cells.csv`` and ``experiment_summary.json``.

``experiment_summary.json`` keys (all accuracies are fractions in [0, 1]; [mean, sd, n] uses the
sample standard deviation, 0.0 when n = 1; rho/lambda keys are rendered like cell ids, e.g. "0.5"):

* ``kind``: "image"; ``experiment``; ``cells``: number of cells; ``status``: {ok|diverged: count}
* ``clean_acc_by_strength``: {rho: [mean, sd, n]} of final clean accuracy at ``reference_weight_decay``
* ``reliance_by_strength``: {rho: [mean, sd, n]} of final shortcut reliance, same cells
* ``clean_acc_by_strength_and_decay``: {lambda: {rho: [mean, sd, n]}}
* ``regimes``: {weak|intermediate|strong|diverged: count} over all cells
* ``cells_norm_never_grew``: cells whose V never exceeded V_init (their decay is shrinkage of the
  initialisation, not a peak-then-decay)
* ``decay_from_peak``: {lambda: [mean, sd, n]} of decay from peak in PERCENT at ``reference_rho``
* ``decay_from_peak_by_strength``: {rho: {lambda: [mean, sd, n]}}
* ``epoch_peak``: {lambda: [mean, sd, n]} epoch of the V peak at ``reference_rho``
* ``decay_budget``: {lambda: lambda * sum(lr)} (mean over cells), the total decoupled decay applied
* ``norm_ratio``: mean V_final at the smallest lambda / mean V_final at the largest (at reference_rho;
  null with one lambda); ``norm_ratio_detail`` gives the parts
* ``worst_group_acc``: {rho: [mean, sd, n]} at reference_weight_decay, or null when the dataset has no
  spurious attribute
* ``transition_epochs``: {cell: epoch or null}
* ``clean_norm_separation``: the clean-norm-separation score S with phi = shortcut reliance
  (:func:`nht.science.analyse.image_clean_norm_separation`: S, S_ci, n, verdict, per_cell,
  untrusted_cells), computed from each cell's ``history.csv`` beside its ``norms.json``; it tells
  whether a norm-based prediction can be trusted for these cells
* ``reference_rho``, ``reference_weight_decay``; ``figures``: list of paths; ``wall_s``: sum over cells
* ``provenance``: code_version, torch, devices, config (the experiment's resolved settings)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from nht.config import format_value
from nht.domains.images.norms import REGIME_LABELS as REGIMES  # the one regime vocabulary of image cells


def mean_sd_n(values) -> list:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return [None, None, 0]
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return [float(v.mean()), sd, int(len(v))]


def load_cells(norms_paths) -> pd.DataFrame:
    rows = []
    for p in norms_paths:
        with open(p) as fh:
            d = json.load(fh)
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
    ok = df[df["status"] == "ok"]
    ref_wd = _pick_reference(df, "weight_decay", "rho", exp_config.get("reference_weight_decay"))
    ref_rho = _pick_reference(df, "rho", "weight_decay", exp_config.get("reference_rho"))
    at_wd = ok[np.isclose(ok["weight_decay"], ref_wd)]
    at_rho = df[np.isclose(df["rho"], ref_rho)]
    at_rho_ok = at_rho[at_rho["status"] == "ok"]

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
        "clean_acc_by_strength": _by(at_wd, "rho", "final_clean_acc"),
        "reliance_by_strength": _by(at_wd, "rho", "final_reliance"),
        "clean_acc_by_strength_and_decay": {
            format_value(float(lam)): _by(g, "rho", "final_clean_acc") for lam, g in ok.groupby("weight_decay")},
        "regimes": regimes,
        "cells_norm_never_grew": int((df.get("norm_grew", pd.Series(dtype=object)) == False).sum()),  # noqa: E712
        "decay_from_peak": _by(at_rho_ok, "weight_decay", "decay_pct"),
        "decay_from_peak_by_strength": {
            format_value(float(r)): _by(g, "weight_decay", "decay_pct") for r, g in ok.groupby("rho")},
        "epoch_peak": _by(at_rho_ok, "weight_decay", "epoch_peak"),
        "decay_budget": {format_value(float(lam)): float(g["decay_budget"].mean())
                         for lam, g in df.groupby("weight_decay")},
        "norm_ratio": norm_ratio,
        "norm_ratio_detail": detail,
        "worst_group_acc": wga,
        "transition_epochs": {c: (None if pd.isna(t) else int(t))
                              for c, t in zip(df["cell"], df["transition_epoch"])},
        "figures": list(figures),
        "wall_s": float(df["wall_s"].sum()),
        "provenance": {
            "code_version": next((v for v in df["code_version"] if v), None),
            "torch": next((v for v in df["torch"] if v), None),
            "devices": sorted({str(v) for v in df["device"] if v}),
            "config": exp_config,
        },
    }


def transitions(df: pd.DataFrame) -> dict:
    """Shortcut-to-shape transitions by the behavioural rule (``phase_regime`` of each cell, see
    nht.domains.images.norms.shortcut_phases): counts per phase and, per transition cell, t_fit and t_switch
    (epochs) and the decay budget Lambda at both."""
    if "phase_regime" not in df.columns:
        return {"n_cells": int(len(df)), "n_delayed": None, "phases": {}, "cells": {}}
    phases = {str(k): int(v) for k, v in df["phase_regime"].fillna("unknown").value_counts().items()}
    delayed = df[df["phase_regime"] == "delayed"]
    cells = {c: {k: (None if pd.isna(r.get(k)) else float(r.get(k)))
                 for k in ("weight_decay", "seed", "t_fit", "t_switch", "Lambda_fit", "Lambda_switch")
                 if k in delayed.columns}
             for c, r in zip(delayed["cell"], delayed.to_dict("records"))}
    return {"n_cells": int(len(df)), "n_delayed": int(len(delayed)), "phases": phases, "cells": cells}


def load_histories(cells: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each cell's per-epoch ``history.csv`` (written beside its ``norms.json``), by cell id."""
    hists = {c: Path(p).with_name("history.csv") for c, p in zip(cells["cell"], cells["path"])}
    return {c: pd.read_csv(h) for c, h in hists.items() if h.exists()}


def write_summary(norms_paths, experiment: str, exp_config: dict, figures: list[str],
                  out: str | Path, table: str | Path | None = None) -> dict:
    from nht.science.cellrecords import clean_json
    from nht.science.separation import image_clean_norm_separation

    df = load_cells(norms_paths)
    if table:
        df.sort_values(["rho", "border", "lr", "weight_decay", "seed"]).to_csv(table, index=False)
    result = summarize(df, experiment, exp_config, figures)
    result["clean_norm_separation"] = clean_json(image_clean_norm_separation(df, load_histories(df)))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(out) + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(out)
    return result
