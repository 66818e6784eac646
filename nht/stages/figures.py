"""Stage ``figures``: render a modular experiment's figures (curves, regimes)."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from nht.core.history import HistoryError, read_history


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht figures", description=__doc__)
    ap.add_argument("--cells-table", required=True)
    ap.add_argument("--histories", nargs="+", required=True)
    ap.add_argument("--cells", nargs="+", required=True, help="the cell id of each of --histories, in order")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--max-cells", type=int, default=48)
    a = ap.parse_args(argv)
    from nht.domains.modular.figures import make_figures  # matplotlib only where figures are drawn

    if len(a.cells) != len(a.histories):
        ap.error(f"{len(a.cells)} --cells for {len(a.histories)} --histories (one id per history)")
    try:
        hist = {cell: read_history(p) for cell, p in zip(a.cells, a.histories)}
    except (HistoryError, OSError) as err:
        sys.exit(f"nht figures: {err}")
    make_figures(pd.read_csv(a.cells_table), hist, a.out_dir, a.max_cells)
