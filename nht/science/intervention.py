"""Readout of the norm intervention (issue 17, item 2): per intervened cell, the delay shift the
law predicted when the intervention was applied against the shift measured.

* predicted (written by the trainer before training went on, :mod:`nht.domains.modular.intervention`):
  ``ln(V_after / V_before) / (2 eta lambda)`` steps (V squared norm);
* measured: ``T_transition(intervened) - T_transition(control)`` steps, where the control is the
  cell with the same settings except ``intervention`` (null or absent) and the experiment name,
  usually from another experiment of the same config (an intervention's factor is one per
  experiment). Up to the intervention step the two cells train identically (same seed, same
  minibatches), so the control is the intervened cell's exact counterfactual.

A cell that did not transition before its cap is censored: with an intervened cell censored the
measured shift is at least ``stop_step - T_transition(control)`` (``measured_lower_bound``);
with the control censored it is at most ``T_transition(intervened) - stop_step(control)``
(``measured_upper_bound``). Both censored, or no control: no measurement (``why`` says so).

:func:`intervention_readout` works on cell records (``norms.json``); the ``summary`` stage puts it
into ``results/summary.json`` under ``intervention`` (the workflow passes it the cell records).
"""

from __future__ import annotations

import json
import math
from statistics import median

from nht.science.stats import finite_or_none as num

#: cell-record fields compared when no full settings are given (record keys of nht.stages.norms)
RECORD_MATCH_KEYS = ("kind", "op", "p", "train_frac", "split_seed", "lr", "weight_decay", "init_scale", "seed",
                     "model", "optimizer")
#: settings that do not make two cells different experiments' counterparts
IGNORED_SETTINGS = ("intervention", "description")


def match_key(settings: dict) -> str:
    """What a control must share with an intervened cell: every setting but the intervention."""
    return json.dumps({k: v for k, v in settings.items() if k not in IGNORED_SETTINGS}, sort_keys=True, default=str)


def _interventions_from_metas(metas) -> dict[str, dict]:
    out = {}
    for meta in metas or ():
        for cell, cm in (meta.get("cells") or {}).items():
            if isinstance(cm, dict) and cm.get("intervention") is not None:
                out[cell] = cm["intervention"]
    return out


def _transitioned(rec: dict) -> bool:
    return num(rec.get("T_transition")) is not None


def intervention_readout(records: list[dict], settings: dict[str, dict] | None = None, metas=()) -> dict:
    """Predicted vs measured delay shift of every intervened cell among ``records``.

    ``records``: cell records (``norms.json`` dicts: ``cell``, ``T_transition``, ``stop_step``, the
    axes...). ``settings``: ``{cell id: its settings}`` (e.g. :attr:`nht.config.Cell.result_settings`)
    used to match controls; without it cells match on :data:`RECORD_MATCH_KEYS` of the records.
    The intervention of a cell is its record's ``intervention`` field, else the one in the job
    ``metas`` (``meta["cells"][cell]["intervention"]``, :func:`nht.domains.modular.train.train_job`).
    A cell is intervened when that record exists; a control when its settings' ``intervention`` is
    null (or, without settings, it has no intervention record).

    Returns ``{"cells": [one dict per intervened cell], "n": .., "n_measured": ..,
    "median_ratio": median measured/predicted over measured cells with |predicted| >= 1 step,
    "slope_through_origin": least squares of measured on predicted (steps/step), "sign_agreement":
    share of measured cells whose measured shift has the predicted sign}``; the summaries are
    None with fewer than 2 measured cells (1 for the sign share).
    """
    from_metas = _interventions_from_metas(metas)
    by_id = {r["cell"]: r for r in records}

    def intervention_of(cid: str):
        rec = by_id[cid]
        return rec.get("intervention") or from_metas.get(cid)

    def key_of(cid: str) -> str:
        if settings is not None:
            if cid not in settings:
                raise KeyError(f"no settings for cell '{cid}'")
            return match_key(settings[cid])
        return json.dumps({k: by_id[cid].get(k) for k in RECORD_MATCH_KEYS}, sort_keys=True, default=str)

    def is_control(cid: str) -> bool:
        if settings is not None:
            return settings[cid].get("intervention") is None
        return intervention_of(cid) is None

    controls: dict[str, list[str]] = {}
    for cid in by_id:
        if is_control(cid):
            controls.setdefault(key_of(cid), []).append(cid)

    rows = []
    for cid in sorted(by_id):
        iv = intervention_of(cid)
        if iv is None or is_control(cid):
            continue
        rec = by_id[cid]
        row = {"cell": cid, "experiment": rec.get("experiment"), "lr": rec.get("lr"),
               "weight_decay": rec.get("weight_decay"), "factor": iv.get("factor"), "at": iv.get("at"),
               "step": iv.get("step"), "V_before": iv.get("V_before"), "V_after": iv.get("V_after"),
               "predicted_shift_steps": num(iv.get("predicted_shift_steps")),
               "T_transition": num(rec.get("T_transition")), "control": None, "T_transition_control": None,
               "measured_shift_steps": None, "measured_lower_bound": None, "measured_upper_bound": None,
               "error_steps": None, "why": None}
        matches = sorted(controls.get(key_of(cid), []))
        if iv.get("step") is None:
            row["why"] = "intervention never applied (e.g. the cell never reached the fit threshold)"
        elif not matches:
            row["why"] = "no control: no cell with the same settings and no intervention"
        else:
            ctrl = by_id[matches[0]]
            row["control"] = ctrl["cell"]
            row["T_transition_control"] = num(ctrl.get("T_transition"))
            if len(matches) > 1:
                row["why"] = f"{len(matches)} matching controls; the first by id is used"
            if _transitioned(rec) and _transitioned(ctrl):
                row["measured_shift_steps"] = rec["T_transition"] - ctrl["T_transition"]
                if row["predicted_shift_steps"] is not None:
                    row["error_steps"] = row["measured_shift_steps"] - row["predicted_shift_steps"]
            elif _transitioned(ctrl) and num(rec.get("stop_step")) is not None:
                row["measured_lower_bound"] = rec["stop_step"] - ctrl["T_transition"]
                row["why"] = "intervened cell did not transition before it stopped: measured shift >= bound"
            elif _transitioned(rec) and num(ctrl.get("stop_step")) is not None:
                row["measured_upper_bound"] = rec["T_transition"] - ctrl["stop_step"]
                row["why"] = "control did not transition before it stopped: measured shift <= bound"
            else:
                row["why"] = "neither the intervened cell nor its control transitioned"
        rows.append(row)

    measured = [r for r in rows if r["measured_shift_steps"] is not None and r["predicted_shift_steps"] is not None]
    ratios = [r["measured_shift_steps"] / r["predicted_shift_steps"] for r in measured
              if abs(r["predicted_shift_steps"]) >= 1.0]
    pp = sum(r["predicted_shift_steps"] ** 2 for r in measured)
    signs = [r for r in measured if r["predicted_shift_steps"] != 0]
    return {
        "what": "delay shift of intervened cells: predicted ln(V_after/V_before)/(2 eta lambda) at the "
                "intervention vs measured T_transition(intervened) - T_transition(control), steps",
        "cells": rows, "n": len(rows), "n_measured": len(measured),
        "median_ratio": median(ratios) if len(ratios) >= 2 else None,
        "slope_through_origin": (sum(r["measured_shift_steps"] * r["predicted_shift_steps"] for r in measured) / pp
                                 if len(measured) >= 2 and pp > 0 else None),
        "sign_agreement": (sum(math.copysign(1, r["measured_shift_steps"]) == math.copysign(1, r["predicted_shift_steps"])
                               and r["measured_shift_steps"] != 0 for r in signs) / len(signs) if signs else None),
    }
