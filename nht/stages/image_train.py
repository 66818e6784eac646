"""Stage ``image-train``: train one job of image cells (stacked, :mod:`nht.domains.images.train`) and
write its long ``history.csv`` (a ``cell`` column, then :mod:`nht.core.history`) and ``meta.json``;
prints one JSON line per cell: status and final accuracies."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nht.core import device as devmod
from nht.core.io import json_arg


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht image-train", description=__doc__)
    ap.add_argument("--job", type=json_arg, required=True,
                    help="JSON: {experiment, job, cells: [{id, settings, data}]}; data: the stem of the "
                         "cell's shortcut dataset among --data")
    ap.add_argument("--data", nargs="+", required=True, help="the job's shortcut datasets (.npz)")
    ap.add_argument("--history", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--nondeterministic", action="store_true",
                    help="allow nondeterministic kernels (on CUDA: cudnn.benchmark autotuning)")
    ap.add_argument("--precision", choices=devmod.PRECISIONS, default="auto",
                    help="nht.core.device.resolve_precision: auto = fp32 on the CPU, bf16 on CUDA")
    ap.add_argument("--stack", choices=["auto", "vmap", "loop"], default="auto",
                    help="how the cells' forward runs: vmap over cells (CUDA default) or a loop (CPU default)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the forward (off by default)")
    ap.add_argument("--scheduling", type=json_arg, default={},
                    help="JSON: settings added to the cells' that change only speed, memory or resumption "
                         "(nht.config.SCHEDULING_KEYS: threads, eval_batch_size, checkpoint_seconds)")
    a = ap.parse_args(argv)
    files = {Path(p).stem: p for p in a.data}
    missing = sorted({c["data"] for c in a.job["cells"]} - set(files))
    if missing:
        ap.error(f"--data lacks the dataset(s) {missing} of the job's cells")
    from nht.domains.images.train import train_job  # torch is imported only here

    cells = [(c["id"], {**c["settings"], **a.scheduling}) for c in a.job["cells"]]
    meta = train_job(cells, [files[c["data"]] for c in a.job["cells"]], a.history, a.meta, a.checkpoint,
                     device=a.device, threads=a.threads, deterministic=not a.nondeterministic,
                     precision=a.precision, job_id=a.job["job"], compile=a.compile, stack=a.stack)
    import pandas as pd

    table = pd.read_csv(a.history)
    for cell, rec in meta["cells"].items():
        last = table[table["cell"] == cell].iloc[-1]
        final = {f"final_{k}": float(last[k]) for k in ("train_acc", "test_acc", "phi", "worst_group_acc")
                 if k in last.index}
        print(json.dumps({"cell": cell, "status": rec["status"], "epochs_done": rec["epochs_done"], **final,
                          "wall_seconds": meta["wall_seconds"]}))
