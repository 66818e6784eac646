"""Stage ``image-train``: train one image cell and write its history (see :mod:`nht.core.history`)."""

from __future__ import annotations

import argparse
import json

from nht.core.io import json_arg


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht image-train", description=__doc__)
    ap.add_argument("--settings", type=json_arg, required=True, help="the cell's resolved settings (JSON)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True, help="cell directory")
    ap.add_argument("--cell", required=True, help="cell id (guards the checkpoint)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--nondeterministic", action="store_true")
    ap.add_argument("--tf32", action="store_true")
    a = ap.parse_args(argv)
    from nht.domains.images.train import train_cell  # torch is imported only here

    res = train_cell(a.settings, a.data, a.out, device=a.device, threads=a.threads,
                     deterministic=not a.nondeterministic, tf32=a.tf32, cell_id=a.cell)
    print(json.dumps({k: res.get(k) for k in ("cell", "status", "regime", "final_clean_acc", "final_reliance",
                                                "wall_s")}))
