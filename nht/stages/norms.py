"""Stage ``norms``: cut one cell's curves out of its job's history and extract its norm record."""

from __future__ import annotations

import argparse
import json

import pandas as pd

from nht.core.io import read_json, write_atomic, write_json
from nht.core.events import extract_norms

AXES_IN_TABLE = ("op", "p", "train_frac", "split_seed", "lr", "weight_decay", "init_scale", "seed")


def cell_norms(job_history: str, job_meta: str, cell: str, settings: dict, out_history: str,
               out_norms: str) -> None:
    h = pd.read_csv(job_history)
    h = h[h["cell"] == cell].drop(columns="cell").reset_index(drop=True)
    meta = read_json(job_meta)
    status = meta["cells"][cell]["status"]
    write_atomic(out_history, h.to_csv(index=False, float_format="%.9g"))
    rec = {"cell": cell, "experiment": meta["experiment"], "stop_reason": meta["cells"][cell]["stop_reason"]}
    rec.update(extract_norms(h, settings, status))
    rec.update({a: settings[a] for a in AXES_IN_TABLE})
    rec["optimizer"] = settings["optimizer"]["name"]
    rec["model"] = settings["model"]["name"]
    rec["provenance"] = meta["provenance"]
    write_json(rec, out_norms)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht norms", description=__doc__)
    ap.add_argument("--job-history", required=True)
    ap.add_argument("--job-meta", required=True)
    ap.add_argument("--cell", required=True)
    ap.add_argument("--settings", type=json.loads, required=True)
    ap.add_argument("--out-history", required=True)
    ap.add_argument("--out-norms", required=True)
    a = ap.parse_args(argv)
    cell_norms(a.job_history, a.job_meta, a.cell, a.settings, a.out_history, a.out_norms)
