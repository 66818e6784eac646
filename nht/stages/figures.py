"""Stage ``figures``: render an experiment's figures (curves, delay law, regimes)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from nht.core.io import read_json


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht figures", description=__doc__)
    ap.add_argument("--cells-table", required=True)
    ap.add_argument("--histories", nargs="+", required=True)
    ap.add_argument("--fit", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--max-cells", type=int, default=48)
    a = ap.parse_args(argv)
    from nht.domains.modular.figures import make_figures  # matplotlib only where figures are drawn

    hist = {Path(p).parent.name: pd.read_csv(p) for p in a.histories}
    make_figures(pd.read_csv(a.cells_table), hist, read_json(a.fit), a.out_dir, a.max_cells)
