"""Stage ``norms``: one cell's event record (``norms.json``) from its history, for every domain.

Modular cells are trained in jobs: ``--job-history`` is the job's long table (a ``cell`` column)
and ``--out-history`` receives this cell's rows. Image cells have their own ``--history``. The
record is :func:`nht.core.events.extract_events` plus the cell's grid axes, model and optimizer
names, the final values of the domain's extra accuracy columns, and the training meta's status,
stop reason, wall time and provenance.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

from nht.config import KINDS
from nht.core.events import extract_events
from nht.core.history import check_history, ordered_columns
from nht.core.io import json_arg, read_json, write_atomic, write_json

EXTRA_FINALS = ("aligned_acc", "conflicting_acc", "shortcut_only_acc", "worst_group_acc")
META_KEYS = ("stop_reason", "wall_s", "n_params", "n_train", "n_test", "steps", "epochs_done", "sum_lr")


def cell_record(history: pd.DataFrame, meta: dict, cell: str, kind: str, settings: dict) -> dict:
    """The ``norms.json`` record of one cell (see the module docstring)."""
    cell_meta = meta["cells"][cell] if "cells" in meta else meta
    rec = {"cell": cell, "experiment": meta.get("experiment"), "kind": kind}
    rec.update({k: cell_meta[k] for k in META_KEYS if k in cell_meta})
    rec.update(extract_events(history, settings, cell_meta["status"]))
    rec.update({axis: settings[axis] for axis in KINDS[kind].axes})
    rec["optimizer"] = settings["optimizer"]["name"]
    rec["model"] = settings["model"]["name"]
    if "dataset" in settings:
        rec["dataset"] = settings["dataset"]["name"]
    for col in EXTRA_FINALS:
        if col in history.columns:
            finite = history[col].dropna()
            rec[f"final_{col}"] = float(finite.iloc[-1]) if len(finite) else None
    finite_test = history["test_acc"].replace([np.inf, -np.inf], np.nan).dropna()
    rec["best_test_acc"] = float(finite_test.max()) if len(finite_test) else None
    rec["provenance"] = meta["provenance"]
    return rec


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht norms", description=__doc__)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--job-history", help="a job's long history table (modular)")
    src.add_argument("--history", help="one cell's history table (images)")
    ap.add_argument("--meta", required=True, help="the job's or the cell's meta.json")
    ap.add_argument("--cell", required=True)
    ap.add_argument("--kind", choices=sorted(KINDS), required=True)
    ap.add_argument("--settings", type=json_arg, required=True)
    ap.add_argument("--out-history", help="with --job-history: where this cell's rows go")
    ap.add_argument("--out-norms", required=True)
    a = ap.parse_args(argv)
    if a.job_history:
        if not a.out_history:
            ap.error("--job-history needs --out-history")
        h = pd.read_csv(a.job_history)
        h = h[h["cell"] == a.cell].drop(columns="cell").reset_index(drop=True)
        h = h[ordered_columns(h.columns)]
        write_atomic(a.out_history, h.to_csv(index=False, float_format="%.9g"))
    else:
        h = pd.read_csv(a.history)
    check_history(h, a.history or f"{a.job_history} (cell {a.cell})")
    write_json(cell_record(h, read_json(a.meta), a.cell, a.kind, a.settings), a.out_norms)
    print(json.dumps({"cell": a.cell, "kind": a.kind}))
