"""``python -m nht cells``: list the cells and jobs of a config (experiment, job, cell id)."""

from __future__ import annotations

import argparse

from nht.config import cell_index, load_config


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht cells", description=__doc__)
    ap.add_argument("--configfile", default="config.yaml")
    a = ap.parse_args(argv)
    cells, _, job_of = cell_index(load_config(a.configfile))
    for cid, cell in cells.items():
        print(f"{cell.experiment}\t{job_of[cid]}\t{cid}")
