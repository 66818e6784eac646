"""Stage ``fit``: an experiment's cell table (``cells.csv``) and ``fit.json``: its regimes and which cells
the delay-law fit uses or excludes (:func:`nht.science.delay_law.fit_inputs`; the law itself is fitted once,
by the ``science`` stage)."""

from __future__ import annotations

import argparse

import pandas as pd

from nht.core.history import FLOAT_FORMAT
from nht.core.io import read_json, write_atomic, write_json
from nht.science.delay_law import fit_inputs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht fit", description=__doc__)
    ap.add_argument("--norms", nargs="+", required=True)
    ap.add_argument("--out-fit", required=True)
    ap.add_argument("--out-table", required=True)
    a = ap.parse_args(argv)
    records = [read_json(p) for p in a.norms]
    table = pd.DataFrame([{k: v for k, v in r.items() if k not in ("layers", "provenance")} for r in records])
    write_atomic(a.out_table, table.to_csv(index=False, float_format=FLOAT_FORMAT))
    write_json(fit_inputs(records), a.out_fit)
