"""Stage ``image-summary``: one image experiment's ``experiment_summary.json`` (with the science
layer's blocks and the scorecard) and ``cells.csv``."""

from __future__ import annotations

import argparse

from nht.core.io import json_arg


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht image-summary", description=__doc__)
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--norms", nargs="+", required=True)
    ap.add_argument("--figures", nargs="*", default=[])
    ap.add_argument("--science", required=True, help="the experiment's science.json")
    ap.add_argument("--config", type=json_arg, default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--table", default=None)
    a = ap.parse_args(argv)
    from nht.domains.images.summary import write_summary

    write_summary(a.norms, a.experiment, a.config or {}, a.figures, a.science, a.out, a.table)
