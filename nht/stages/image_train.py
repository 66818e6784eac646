"""Stage ``image-train``: train one image cell and write its ``history.csv`` (see
:mod:`nht.core.history`) and ``meta.json``; prints one JSON line: status and final accuracies."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nht.core.io import json_arg, read_json


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht image-train", description=__doc__)
    ap.add_argument("--settings", type=json_arg, required=True, help="the cell's resolved settings (JSON)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True, help="cell directory")
    ap.add_argument("--cell", required=True, help="cell id (guards the checkpoint)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--nondeterministic", action="store_true")
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32",
                    help="as for modular training (nht.core.device): tf32 matmuls, or bf16 autocast")
    ap.add_argument("--scheduling", type=json_arg, default={},
                    help="JSON: settings added to the cell's that change only speed, memory or resumption "
                         "(nht.config.SCHEDULING_KEYS: threads, eval_batch_size, checkpoint_seconds)")
    a = ap.parse_args(argv)
    from nht.domains.images.train import train_cell  # torch is imported only here

    train_cell({**a.settings, **a.scheduling}, a.data, a.out, device=a.device, threads=a.threads,
               deterministic=not a.nondeterministic, precision=a.precision, cell_id=a.cell)
    from nht.core.history import read_history

    meta = read_json(Path(a.out) / "meta.json")
    last = read_history(Path(a.out) / "history.csv").iloc[-1]
    final = {f"final_{k}": float(last[k]) for k in ("train_acc", "test_acc", "phi", "worst_group_acc")
             if k in last.index}
    cell = meta["cells"][a.cell]
    print(json.dumps({"cell": a.cell, "status": cell["status"], "epochs_done": cell["epochs_done"],
                      **final, "wall_seconds": meta["wall_seconds"]}))
