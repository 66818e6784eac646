"""Per-cell records as the science layer reads them: one dict per cell with the ``norms.json``
fields (:func:`nht.core.events.extract_norms`) and the cell's axes. Shared by :mod:`nht.science.delay_law`,
:mod:`nht.science.prediction`, :mod:`nht.science.separation` and :mod:`nht.science.verdict_inputs`.

Conventions: V is the *squared* L2 norm; time is in optimizer steps in every domain (image records
also give epochs, ``epoch_*``); ``eta`` = ``lr``, ``lambda`` = ``weight_decay``.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from nht.config import KINDS
from nht.core.events import REGIMES
from nht.core.io import clean_json, finite_or_none as num

AXES = ("op", "p", "train_frac", "split_seed", "dataset", "rho", "border", "lr", "weight_decay", "init_scale",
        "seed", "model", "optimizer")                      # the axes of every domain (absent = "None")
SEED_AXES = ("seed", "split_seed")
#: a *group* is all cells equal in every non-seed axis (its seeds are replicates)
GROUP_AXES = tuple(a for a in AXES if a not in SEED_AXES)
#: settings that define "the same task" when peers at the same lambda are looked up
TASK_AXES = ("op", "p", "train_frac", "dataset", "rho", "border", "model", "optimizer")


#: fields of a cell record (``norms.json``, nht.stages.norms) that the science layer reads; the
#: grid axes of the record's kind are required too. Times in steps, V squared.
REQUIRED = ("cell", "kind", "status", "regime", "stop_step", "T_fit", "T_transition", "delay",
            "delay_lower_bound", "V_init", "V_fit", "V_transition", "V_peak", "V_final", "T_pred",
            "test_acc_at_fit")
#: fields that are a number, or null where the event did not happen
NUMERIC = ("stop_step", "T_fit", "T_transition", "delay", "delay_lower_bound", "V_init", "V_fit",
           "V_transition", "V_peak", "V_final", "T_pred", "test_acc_at_fit")


class RecordError(ValueError):
    """A cell record that is not what nht.stages.norms writes; the message names the file."""


def check_record(rec, where: str = "cell record") -> dict:
    """``rec`` if it is a cell record the science layer can read, else :class:`RecordError` naming
    ``where`` and what is missing or wrong (a record with no ``T_fit`` must not pass as a cell
    that never fitted, i.e. regime ``strong``)."""
    if not isinstance(rec, dict):
        raise RecordError(f"{where}: a cell record is a JSON object, not {type(rec).__name__}")
    kind = rec.get("kind")
    if kind not in KINDS:
        raise RecordError(f"{where}: 'kind' is {kind!r}, not one of {', '.join(sorted(KINDS))}"
                          + ("" if "kind" in rec else " (missing)") + "; made by `python -m nht norms`?")
    missing = [k for k in REQUIRED + KINDS[kind].axes if k not in rec]
    if missing:
        raise RecordError(f"{where}: missing field(s) {', '.join(missing)} of a cell record "
                          "(norms.json, written by `python -m nht norms`)")
    if rec["regime"] not in REGIMES:
        raise RecordError(f"{where}: 'regime' is {rec['regime']!r}, not one of {', '.join(REGIMES)}")
    for k in NUMERIC:
        v = rec[k]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v)):
            raise RecordError(f"{where}: '{k}' is {v!r}, not a number or null")
    return rec


def read_record(path) -> dict:
    """Read and check one ``norms.json`` (:func:`check_record`), naming the file on any error."""
    try:
        with open(path) as fh:
            rec = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecordError(f"{path}: not a JSON cell record ({err})") from None
    return check_record(rec, str(path))


def records(cells: pd.DataFrame | list[dict]) -> list[dict]:
    """Rows of a cells table (or a list of norms dicts) as dicts, with missing and non-finite values
    ``None`` (:func:`nht.core.io.clean_json`, the one NaN cleaner)."""
    rows = cells.to_dict("records") if isinstance(cells, pd.DataFrame) else list(cells)
    return [clean_json(rec) for rec in rows]


def eta_lambda(rec: dict) -> float | None:
    """``lr * weight_decay`` (per step), ``None`` when missing or not positive."""
    lr, wd = num(rec.get("lr")), num(rec.get("weight_decay"))
    if lr is None or wd is None or lr * wd <= 0:
        return None
    return lr * wd


def key_of(rec: dict, axes) -> tuple:
    """The values of ``axes`` (as strings, missing = ``"None"``) identifying a group/stratum."""
    return tuple(str(rec.get(a)) for a in axes)


def group_of(rec: dict) -> tuple:
    """The cell's group: every non-seed axis (:data:`GROUP_AXES`)."""
    return key_of(rec, GROUP_AXES)


def is_diverged(rec: dict) -> bool:
    return rec.get("status") == "diverged" or rec.get("regime") == "diverged"


def delay_status(rec: dict) -> tuple[str, float | None]:
    """How the cell's delay is known: ``("observed", delay)``; ``("censored", cap)`` when it
    memorised but had not generalised when the run stopped (delay > cap = stop_step - T_fit,
    steps); otherwise ``(reason, None)`` with reason ``diverged``, ``strong`` (never fitted),
    ``no_shortcut_fit`` (fitted, never with the shortcut: no shortcut phase to delay) or
    ``no_stop_step``."""
    if is_diverged(rec):
        return "diverged", None
    t_fit = num(rec.get("T_fit"))
    if t_fit is None:
        return ("no_shortcut_fit" if rec.get("regime") == "immediate" else "strong"), None
    t_transition = num(rec.get("T_transition"))
    if t_transition is not None:
        d = num(rec.get("delay"))
        return "observed", (t_transition - t_fit) if d is None else d
    cap = num(rec.get("delay_lower_bound"))
    stop = num(rec.get("stop_step"))
    if cap is None and stop is not None:
        cap = stop - t_fit
    return ("censored", cap) if cap is not None else ("no_stop_step", None)


def time_sorted(history: pd.DataFrame) -> pd.DataFrame:
    """The history sorted by ``step`` (every history has it, :mod:`nht.core.history`)."""
    return history.sort_values("step", kind="stable").reset_index(drop=True)


def value_at_fit(history: pd.DataFrame | None, T_fit, column: str = "V",
                 fallback=None) -> float | None:
    """``column`` at the last evaluation with ``step <= T_fit``: reads nothing after the fit.
    Without a history (or no such row), ``fallback``."""
    T_fit = num(T_fit)
    if history is None or T_fit is None or column not in history.columns:
        return num(fallback)
    h = time_sorted(history)
    prefix = h.loc[h["step"] <= T_fit]
    if prefix.empty:
        return num(fallback)
    return num(prefix[column].iloc[-1])


def count(d: dict, key: str) -> None:
    d[key] = d.get(key, 0) + 1
