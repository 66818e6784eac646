"""Stage ``fit``: fit the delay law over an experiment's cells; write the fit and the cell table."""

from __future__ import annotations

import argparse

import pandas as pd

from nht.core.history import FLOAT_FORMAT
from nht.core.io import read_json, write_atomic, write_json
from nht.science.scaling import fit_cells


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht fit", description=__doc__)
    ap.add_argument("--norms", nargs="+", required=True)
    ap.add_argument("--out-fit", required=True)
    ap.add_argument("--out-table", required=True)
    a = ap.parse_args(argv)
    records = [read_json(p) for p in a.norms]
    table = pd.DataFrame([{k: v for k, v in r.items() if k not in ("layers", "provenance")} for r in records])
    write_atomic(a.out_table, table.to_csv(index=False, float_format=FLOAT_FORMAT))
    write_json(fit_cells(records), a.out_fit)
