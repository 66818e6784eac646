"""Benchmark: vectorised (many cells per process) vs one process per cell, and FLOP/s achieved.

Trains the cells of one experiment of a config for a fixed number of steps (early stopping off,
so both paths do identical work), then prints:

* cell-steps/s with all cells in one process (the `train_modular` job path, batched);
* cell-steps/s with one `python -m nht train` process per cell (start-up and import included),
  run one after another with the same thread count;
* their ratio (goal in issue 6: >= 10x on the default grid, CPU);
* FLOP/s of the batched trainer (FLOPs counted with torch's FlopCounterMode on one cell's
  forward+backward) as a share of this machine's measured fp32 matmul FLOP/s;
* the optimizer kernel of the batched job (``--optimizer-kernel``; by default the one the
  experiment's own job would use) and the seconds spent compiling it before the timing;
* minor page faults per step of the batched job (memory the step gets fresh from the system;
  ``nht.core.device.keep_freed_memory``);
* the same share on this process's CPU time (``time.process_time``) instead of wall time, for
  both the training and the matmul (``*_cpu``): on a machine shared with other work, waiting for a
  core inflates wall time but not CPU time, so this figure is the steadier one there (with
  ``--threads 1`` the process computes on one core at a time).

Usage: .venv/bin/python benchmarks/batched_training.py [--experiment mlp_regimes] [--steps 500]
       [--threads 1] [--per-cell-sample 6]
       .venv/bin/python benchmarks/batched_training.py --smoke   # tiny: 2 cells, 5 steps (test suite)
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nht.config import expand_cells, load_config  # noqa: E402
from nht.domains.modular.data import make_modular_dataset, save_dataset  # noqa: E402
from nht.domains.modular.models import build_model  # noqa: E402
from nht.core.stacked_optim import compiler_works, resolve_kernel  # noqa: E402
from nht.domains.modular.train import train_job  # noqa: E402


def matmul_flops_per_second(threads: int, n: int = 2048, reps: int = 5) -> tuple[float, float]:
    """fp32 matmul FLOP/s of this machine: (per wall second, per CPU second of this process)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t, c = time.perf_counter(), time.process_time()
    for _ in range(reps):
        a @ b
    flops = 2 * n ** 3 * reps
    return flops / (time.perf_counter() - t), flops / (time.process_time() - c)


def flops_per_cell_step(cell, data) -> float:
    model = build_model(cell["model"], cell["p"])
    n = len(data["y_train"]) if cell["batch_size"] == "full" else int(cell["batch_size"])
    x = torch.as_tensor(data["x_train"][:n])
    y = torch.as_tensor(data["y_train"][:n])
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "config.yaml"))
    ap.add_argument("--experiment", default="mlp_regimes")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--per-cell-sample", type=int, default=6,
                    help="time this many cells one-process-each and extrapolate the rate")
    ap.add_argument("--optimizer-kernel", choices=["auto", "eager", "compiled"], default="auto",
                    help="the batched job's optimizer kernel (nht.core.stacked_optim); auto: what the "
                         "experiment's own job resolves to at its configured max_steps. A compiled "
                         "kernel is compiled before the timing starts (a real job amortises it over "
                         "its thousands of steps) and the compile time is printed")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny run for the test suite: 2 cells, 5 steps, 1 per-process cell, 256x256 matmul")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.per_cell_sample = 5, 1

    config = load_config(args.config)
    exp = config["experiments"][args.experiment]
    configured_steps = int(expand_cells(config, args.experiment)[0]["max_steps"])
    exp.update(max_steps=args.steps, stop_margin=10 ** 9, checkpoint_seconds=10 ** 9)
    cells = expand_cells(config, args.experiment)
    if args.smoke:
        cells = cells[:2]
    s = cells[0].settings
    data = make_modular_dataset(s["op"], s["p"], s["train_frac"], s["split_seed"])
    n_params = sum(p.numel() for p in build_model(s["model"], s["p"]).parameters())
    t = time.perf_counter()                        # auto tries a compile (once per process)
    kernel = resolve_kernel(args.optimizer_kernel, torch.device("cpu"), len(cells) * n_params * configured_steps)
    if kernel == "compiled" and compiler_works():
        raise SystemExit(f"--optimizer-kernel compiled: {compiler_works()}")
    compile_s = time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t, c, faults = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        train_job(cells, data, tmp / "h.csv", tmp / "m.json", None, device="cpu", threads=args.threads,
                  progress_every_s=1e9, optimizer_kernel=kernel)
        batched_s, batched_cpu_s = time.perf_counter() - t, time.process_time() - c
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        batched_rate = len(cells) * args.steps / batched_s
        batched_cpu_rate = len(cells) * args.steps / batched_cpu_s

        dataset = tmp / "d.npz"
        save_dataset(data, dataset)
        sample = cells[: args.per_cell_sample]
        t = time.perf_counter()
        for c in sample:
            job = {"experiment": c.experiment, "job": c.id, "cells": [{"id": c.id, "settings": c.settings}]}
            subprocess.run([sys.executable, "-m", "nht", "train", "--job", json.dumps(job), "--dataset",
                            str(dataset), "--history", str(tmp / "hc.csv"), "--meta", str(tmp / "mc.json"),
                            "--checkpoint", str(tmp / "c.pt"), "--device", "cpu", "--threads",
                            str(args.threads)], check=True, capture_output=True, cwd=REPO)
        per_cell_s = time.perf_counter() - t
        per_cell_rate = len(sample) * args.steps / per_cell_s

    flops = flops_per_cell_step(cells[0], data)
    peak, peak_cpu = matmul_flops_per_second(args.threads, n=256 if args.smoke else 2048)
    achieved = flops * batched_rate
    result = {
        "experiment": args.experiment, "cells": len(cells), "steps_per_cell": args.steps,
        "threads": args.threads, "torch": torch.__version__, "optimizer_kernel": kernel,
        "compile_seconds": compile_s, "page_faults_per_step": faults / args.steps,
        "batched_seconds": batched_s, "batched_cell_steps_per_s": batched_rate,
        "per_process_cells_timed": len(sample), "per_process_seconds": per_cell_s,
        "per_process_cell_steps_per_s": per_cell_rate,
        "speedup_batched_over_per_process": batched_rate / per_cell_rate,
        "flops_per_cell_step": flops, "achieved_flops_per_s": achieved,
        "matmul_flops_per_s": peak, "share_of_matmul_peak": achieved / peak,
        "batched_cpu_seconds": batched_cpu_s, "batched_cell_steps_per_cpu_s": batched_cpu_rate,
        "matmul_flops_per_cpu_s": peak_cpu, "share_of_matmul_peak_cpu": flops * batched_cpu_rate / peak_cpu,
    }
    for k, v in result.items():
        print(f"{k:36s} {v:.4g}" if isinstance(v, float) else f"{k:36s} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
