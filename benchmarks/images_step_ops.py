"""Benchmark: aten operator calls per training step of C stacked image cells, and cell-epochs/s of
the stacked path against one cell per process, on the CPU (issue 21).

The job: C ``simple_cnn`` cells (AdamW, cosine lr, batch 128) on one random CIFAR-10-sized dataset
(3x32x32 uint8, 10 classes), lr and weight decay varying over the cells. For each C it counts, with
``torch.profiler`` (CPU activity), every ``aten::`` operator call (nested and views included) of
``ImageJob.train_step()`` plus the loop's per-step bookkeeping (:class:`nht.core.loop.FiniteWatch`),
the mean over ``--steps`` steps inside an epoch (the once-per-epoch permutation draw not counted;
evaluations not counted). Then, without the profiler, seconds per step over ``--timed-steps``
steps; ``cell_epochs_per_s`` = C / (seconds per step x steps per epoch of a 50k-image epoch)
for training steps only (evaluation excluded). One cell per process is the C = 1 row: one process
runs one cell at that speed, so on the same cores the stacked speedup is
``cell_epochs_per_s(C) / cell_epochs_per_s(1)``.

Each C > 1 is measured with both forwards of :class:`nht.domains.images.train.ImageJob`: ``vmap``
(the CUDA default, whose op count is the goal) and ``loop`` (the CPU default).

Goal (issue 21): ops per step of the vmap path at C = 16 <= 1.25 x at C = 2.

Usage: .venv/bin/python benchmarks/images_step_ops.py [--cells 1,2,16] [--steps 3] [--timed-steps 5]
       [--threads 1] [--model simple_cnn] [--out FILE];  --smoke: width 0.25, 16x16 images, C 1 and 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nht.config import expand_cells, validate_config  # noqa: E402
from nht.core import device as devmod  # noqa: E402
from nht.core import loop  # noqa: E402
from nht.core.provenance import cpu_model  # noqa: E402
from nht.domains.images.train import ImageJob  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from step_ops import count_ops  # noqa: E402  (aten ops per step, torch.profiler)

EPOCH_IMAGES = 50_000                      # a CIFAR-10 epoch


def random_dataset(n_train: int, n_test: int, size: int, classes: int = 10, seed: int = 0) -> dict:
    """A shortcut dataset's arrays (as nht.domains.images.shortcuts.inject returns) of random pixels."""
    rng = np.random.default_rng(seed)

    def images(n):
        return rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)

    y_test = rng.integers(0, classes, n_test)
    return {"x_train": images(n_train), "y_train": rng.integers(0, classes, n_train),
            "x_clean": images(n_test), "x_aligned": images(n_test), "x_conflicting": images(n_test),
            "x_shortcut_only": images(n_test), "y_test": y_test, "c_conflicting": (y_test + 1) % classes,
            "classes": np.arange(classes)}


def job_cells(n_cells: int, model: dict, epochs: int = 200, batch: int = 128, **over) -> list[tuple[str, dict]]:
    """``n_cells`` cells of one image experiment differing in lr and weight decay (ids and settings)."""
    lrs = [1e-3 * (1 + 0.1 * i) for i in range(n_cells)]
    exp = {"kind": "image", "dataset": {"name": "cifar10", "source": "torchvision"}, "rho": 0.95, "lr": lrs,
           "weight_decay": 0.1, "epochs": epochs, "batch_size": batch, "model": model, **over}
    cells = expand_cells(validate_config({"experiments": {"bench": exp}}))
    return [(c.id, c.settings) for c in cells]


class Step:
    """One loop iteration without evaluation: train_step and the loop's per-step bookkeeping."""

    def __init__(self, job):
        self.job, self.watch = job, loop.FiniteWatch(job)

    def __call__(self) -> None:
        self.watch.update(self.job.train_step())


def measure(n_cells: int, data: dict, model: dict, steps: int, timed_steps: int, device: torch.device,
            precision: str = "fp32", batch: int = 128, stack: str = "vmap") -> dict:
    job = ImageJob(job_cells(n_cells, model, batch=batch), [data], [0] * n_cells, device, precision, stack=stack)
    step = Step(job)
    step()                                             # the epoch's first step draws the permutations
    ops, names = count_ops(step, steps) if device.type == "cpu" else (None, Counter())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(timed_steps):
        step()
    sync()
    s_step = (time.perf_counter() - t) / timed_steps
    steps_per_epoch = -(-EPOCH_IMAGES // job.bs)
    return {"cells": n_cells, "stack": job.stack if n_cells > 1 else "one cell", "ops_per_step": ops, "top_ops": dict(names.most_common(8)),
            "seconds_per_step": s_step, "cell_epochs_per_s": n_cells / (s_step * steps_per_epoch)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default="1,2,16")
    ap.add_argument("--steps", type=int, default=3, help="steps profiled")
    ap.add_argument("--timed-steps", type=int, default=5, help="steps timed without the profiler")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="simple_cnn")
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--out", help="write the results as JSON here (--smoke: a temp dir)")
    ap.add_argument("--smoke", action="store_true", help="width 0.25, 16x16 images, 1 and 2 cells, 1 step")
    args = ap.parse_args()
    if args.smoke:
        args.cells, args.steps, args.timed_steps, args.width_mult, args.size = "1,2", 1, 1, 0.25, 16
    counts = [int(c) for c in args.cells.split(",") if c.strip()]
    devmod.configure(args.threads, deterministic=True)
    data = random_dataset(1024, 64, args.size)
    model = {"name": args.model, "width_mult": args.width_mult}
    rows = []
    print(f"{'cells':>6} {'stack':>9} {'ops/step':>9} {'s/step':>8} {'cell-epochs/s':>14}")
    for n in counts:
        for stack in (("vmap", "loop") if n > 1 else ("loop",)):
            r = measure(n, data, model, args.steps, args.timed_steps, torch.device("cpu"), stack=stack)
            rows.append(r)
            print(f"{n:>6} {r['stack']:>9} {r['ops_per_step']:>9.0f} {r['seconds_per_step']:>8.3f} "
                  f"{r['cell_epochs_per_s']:>14.5f}", flush=True)
    vmap = {r["cells"]: r for r in rows if r["stack"] == "vmap"}
    goals = {}
    if 2 in vmap and 16 in vmap:
        goals["vmap_ops_ratio_16_over_2"] = vmap[16]["ops_per_step"] / vmap[2]["ops_per_step"]
        goals["vmap_ops_ratio_ok"] = goals["vmap_ops_ratio_16_over_2"] <= 1.25
    one = next((r for r in rows if r["cells"] == 1), None)
    if one is not None:
        goals["cell_epochs_per_s_over_one_cell"] = {f"{r['cells']} {r['stack']}": r["cell_epochs_per_s"] / one["cell_epochs_per_s"]
                                                    for r in rows if r["cells"] > 1}
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "model": model, "image_size": args.size, "results": rows, "goals": goals}
    print(json.dumps(goals))
    out = args.out or (str(Path(tempfile.mkdtemp(prefix="images_step_ops_")) / "ops.json") if args.smoke else None)
    if out:
        Path(out).write_text(json.dumps(result, indent=1))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
