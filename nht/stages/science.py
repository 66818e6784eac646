"""Stage ``science``: statistics, predictions, S and the science figures of one modular experiment."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from nht.core.history import HistoryError, read_history
from nht.core.io import write_json
from nht.science.cellrecords import RecordError, read_record
from nht.stages import add_cell_files, check_cell_files


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht science", description=__doc__)
    add_cell_files(ap)  # the cell ids come from the records
    ap.add_argument("--out", required=True)
    ap.add_argument("--figure-dir", required=True)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    check_cell_files(ap, a)
    from nht.science.analyse import analyse_experiment  # matplotlib only where figures are drawn

    # malformed input is an error naming the file, never a cell counted as 'strong' or a KeyError
    try:
        records = [read_record(p) for p in a.norms]
        hist = {r["cell"]: read_history(p) for r, p in zip(records, a.histories)}
    except (RecordError, HistoryError, OSError) as err:
        sys.exit(f"nht science: {err}")
    layers = {r["cell"]: r.get("layers") or {} for r in records}
    cells = pd.DataFrame([{k: v for k, v in r.items() if k not in ("layers", "provenance")} for r in records])
    write_json(analyse_experiment(cells, hist, a.figure_dir, n_boot=a.n_boot, seed=a.seed, layers=layers), a.out)
