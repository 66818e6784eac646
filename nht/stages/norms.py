"""Stage ``norms``: one cell's event record (``norms.json``) from its history, for every domain.

Cells of every domain are trained in jobs: ``--job-history`` is the job's long table (a ``cell``
column) and ``--out-history`` receives this cell's rows (``--history``: a cell's own table, as
:func:`nht.domains.images.train.train_cell` writes for scripts). The
record is :func:`nht.core.events.extract_events` plus the cell's grid axes, model and optimizer
names, each tensor of ``layers`` marked ``norm_layer`` (from the meta's ``norm_layer_tensors``,
:func:`nht.core.norms.norm_layer_tensors`), the final values of the domain's extra accuracy columns, and the training meta's status,
stop reason and provenance. No wall time: a record is a function of the history and settings, so a
retrained job with the same history gives byte-identical records (wall times are in the job metas
and the experiment summary's ``training`` block). Every domain's ``meta.json`` has one shape: a job's record with the cell under ``cells``.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pandas as pd

from nht.config import KINDS
from nht.core.events import extract_events
from nht.core.history import HistoryError, check_history, history_csv, ordered_columns, read_history, read_table
from nht.core.io import json_arg, read_json, write_atomic, write_json

EXTRA_FINALS = ("aligned_acc", "conflicting_acc", "shortcut_only_acc", "worst_group_acc")
META_KEYS = ("stop_reason", "n_params", "n_train", "n_test", "steps", "epochs_done", "sum_lr", "intervention")


class MetaError(ValueError):
    """A training meta record without what a cell record needs; the message names the file."""


def check_meta(meta, cell: str, where: str = "meta") -> dict:
    """``meta`` if it holds what :func:`cell_record` reads for ``cell`` (the cell's ``status`` under
    ``cells``, the job's ``provenance``; every domain writes this one shape), else :class:`MetaError`."""
    if not isinstance(meta, dict):
        raise MetaError(f"{where}: a training meta record is a JSON object, not {type(meta).__name__}")
    if not (isinstance(meta.get("cells"), dict) and isinstance(meta["cells"].get(cell), dict)):
        raise MetaError(f"{where}: no entry for cell {cell} under 'cells'")
    cell_meta = meta["cells"][cell]
    missing = [k for k in ("status",) if k not in cell_meta] + [k for k in ("provenance",) if k not in meta]
    if missing:
        raise MetaError(f"{where}: missing field(s) {', '.join(missing)} of a training meta record (cell {cell})")
    return meta


def cell_record(history: pd.DataFrame, meta: dict, cell: str, kind: str, settings: dict) -> dict:
    """The ``norms.json`` record of one cell (see the module docstring)."""
    check_meta(meta, cell)
    cell_meta = meta["cells"][cell]
    rec = {"cell": cell, "experiment": meta.get("experiment"), "kind": kind}
    rec.update({k: cell_meta[k] for k in META_KEYS if k in cell_meta})
    rec.update(extract_events(history, settings, cell_meta["status"]))
    in_norm_layer = set(meta.get("norm_layer_tensors") or ())
    for name, layer in rec["layers"].items():
        layer["norm_layer"] = name in in_norm_layer
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


def read_job_history(path: str, cell: str) -> pd.DataFrame:
    """One cell's rows of a job's long history table (a ``cell`` column), checked
    (:func:`nht.core.history.check_history`, naming the file and the cell)."""
    h = read_table(path)
    if "cell" not in h.columns:
        raise HistoryError(f"{path}: no 'cell' column; a job's history has one row per cell and evaluation")
    h = h[h["cell"] == cell].drop(columns="cell").reset_index(drop=True)
    check_history(h, f"{path} (cell {cell})")
    return h[ordered_columns(h.columns)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht norms", description=__doc__)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--job-history", help="a job's long history table")
    src.add_argument("--history", help="one cell's history table")
    ap.add_argument("--meta", required=True, help="the job's or the cell's meta.json")
    ap.add_argument("--cell", required=True)
    ap.add_argument("--kind", choices=sorted(KINDS), required=True)
    ap.add_argument("--settings", type=json_arg, required=True)
    ap.add_argument("--out-history", help="with --job-history: where this cell's rows go")
    ap.add_argument("--out-norms", required=True)
    a = ap.parse_args(argv)
    if a.job_history and not a.out_history:
        ap.error("--job-history needs --out-history")
    try:                       # malformed input: one line naming the file and what is wrong
        if a.job_history:
            h = read_job_history(a.job_history, a.cell)
            write_atomic(a.out_history, history_csv(h))
        else:
            h = read_history(a.history)
        try:
            meta = check_meta(read_json(a.meta), a.cell, a.meta)
        except json.JSONDecodeError as err:
            raise MetaError(f"{a.meta}: not JSON ({err})") from None
    except (HistoryError, MetaError, OSError) as err:
        sys.exit(f"nht norms: {err}")
    write_json(cell_record(h, meta, a.cell, a.kind, a.settings), a.out_norms)
    print(json.dumps({"cell": a.cell, "kind": a.kind}))
