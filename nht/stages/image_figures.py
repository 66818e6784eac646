"""Stage ``image-figures``: draw an image experiment's figures."""

from __future__ import annotations

import argparse

from nht.core.io import json_arg
from nht.stages import add_cell_files, check_cell_files


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht image-figures", description=__doc__)
    add_cell_files(ap)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--config", type=json_arg, default=None)
    a = ap.parse_args(argv)
    from nht.domains.images.figures import make_figures  # matplotlib only where figures are drawn

    check_cell_files(ap, a)
    for p in make_figures(a.norms, a.histories, a.out_dir, a.config):
        print(p)
