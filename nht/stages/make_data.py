"""Stage ``make-data``: generate one modular-arithmetic dataset (.npz)."""

from __future__ import annotations

import argparse

from nht.domains.modular import data


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht make-data", description=__doc__)
    ap.add_argument("--op", required=True)
    ap.add_argument("--p", type=int, required=True)
    ap.add_argument("--train-frac", type=float, required=True)
    ap.add_argument("--split-seed", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    data.save_dataset(data.make_modular_dataset(a.op, a.p, a.train_frac, a.split_seed), a.out)
