"""Stage ``train``: train one job (a batch of cells sharing a dataset) and write its history."""

from __future__ import annotations

import argparse
import json

from nht.domains.modular import data
from nht.config import Cell
from nht.core import device as devmod
from nht.core.stacked_optim import KERNELS


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht train", description=__doc__)
    ap.add_argument("--job", type=json.loads, required=True,
                    help="JSON: {experiment, job, cells: [{id, settings}]}")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--history", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--nondeterministic", action="store_true")
    ap.add_argument("--deterministic", dest="nondeterministic", action="store_false",
                    help="deterministic algorithms (the default)")
    ap.add_argument("--precision", choices=devmod.PRECISIONS, default="auto",
                    help="nht.core.device.resolve_precision: auto = fp32 (CPU and CUDA)")
    ap.add_argument("--optimizer-kernel", choices=KERNELS, default="auto",
                    help="nht.core.stacked_optim.resolve_kernel: auto = compiled on the CPU for large jobs")
    ap.add_argument("--scheduling", type=json.loads, default={},
                    help="JSON: settings added to every cell's that change only speed, memory or "
                         "resumption (nht.config.SCHEDULING_KEYS: threads, eval_batch_size, checkpoint_seconds)")
    a = ap.parse_args(argv)
    from nht.domains.modular.train import train_job  # torch is imported only here

    cells = [Cell(a.job["experiment"], "modular", c["id"], {**c["settings"], **a.scheduling})
             for c in a.job["cells"]]
    train_job(cells, data.load_dataset(a.dataset), a.history, a.meta, a.checkpoint, device=a.device,
              threads=a.threads, deterministic=not a.nondeterministic, precision=a.precision,
              job_id=a.job["job"], optimizer_kernel=a.optimizer_kernel)
