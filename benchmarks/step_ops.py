"""Benchmark: aten operator calls per training step, and cell-steps/s, against the number of cells.

The job is the companion transformer job (``companion_sweep`` of
``workflow/presets/companion-sweep.yaml``: p 97, d_model 128, 4 heads, d_ff 512, AdamW, minibatches
of 512 drawn with replacement, evaluation every 500 steps) with 4 weight decays x (cells / 4)
seeds (up to 4 cells: one seed), on the CPU. For each cell count it counts, with ``torch.profiler`` (CPU activity), every
``aten::`` operator call (nested calls included, views included) of:

* ``first``: the first step (it also draws the minibatch indices of a stretch of steps);
* ``steady``: the mean over ``--steps`` later steps (no draw among them);
* ``per_step``: ``steady + (first - steady) / stretch``, the mean over a whole stretch of steps
  (``stretch`` = steps drawn at once; 1 for a trainer that draws every step).

Each step is ``Trainer.train_step()`` plus the shared loop's per-step bookkeeping
(:class:`nht.core.loop.FiniteWatch`; on code without it, the former ``bool((~isfinite(loss)).any())``).
Evaluations are not counted (they happen once per ``eval_every`` steps). ``cell_steps_per_s`` is
timed without the profiler over ``--timed-steps`` steps (seconds of wall time, this process,
``--threads`` threads).

``--optimizer-kernel`` (default ``auto``: the kernel the preset's own jobs run; on the CPU,
``compiled``) chooses how the optimizer update runs (:mod:`nht.core.stacked_optim`); a compiled
kernel is compiled before the counts, and its one fused call counts as the few ``aten::`` calls
its wrapper makes.

Goals (issue 20): ``per_step`` at 80 cells <= 1.25 x at 8 cells, and <= 600 at every cell count.

Usage: .venv/bin/python benchmarks/step_ops.py [--cells 8,80,320] [--steps 5] [--timed-steps 3]
       [--threads 1] [--out step_ops.json];  --smoke: 2 and 8 cells, 2 steps, JSON to a temp dir.
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

import torch
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nht.config import expand_cells, load_config  # noqa: E402
from nht.core import device as devmod  # noqa: E402
from nht.core import loop  # noqa: E402
from nht.core.provenance import cpu_model  # noqa: E402
from nht.domains.modular.data import make_modular_dataset  # noqa: E402
from nht.domains.modular.train import Trainer  # noqa: E402

PRESET = REPO / "workflow" / "presets" / "companion-sweep.yaml"
EXPERIMENT = "companion_sweep"
WEIGHT_DECAYS = [0.5, 1.0, 2.0, 5.0]


def job_cells(n_cells: int):
    k = len(WEIGHT_DECAYS)
    if n_cells > k and n_cells % k:
        raise SystemExit(f"--cells: a count above {k} must be a multiple of {k}, got {n_cells}")
    wds, seeds = (WEIGHT_DECAYS[:n_cells], [42]) if n_cells <= k else (WEIGHT_DECAYS, list(range(42, 42 + n_cells // k)))
    config = load_config(PRESET)
    exp = config["experiments"][EXPERIMENT]
    exp.update(weight_decay=wds, seed=seeds, max_cells_per_job=max(n_cells, 1))
    config["experiments"] = {EXPERIMENT: exp}
    return expand_cells(config, EXPERIMENT)


class Step:
    """One loop iteration without evaluation: train_step and the loop's per-step bookkeeping."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.watch = loop.FiniteWatch(trainer) if hasattr(loop, "FiniteWatch") else None

    def __call__(self) -> None:
        loss = self.trainer.train_step()
        if self.watch is not None:
            self.watch.update(loss)
        else:                                        # the loop before issue 20: a read-back per step
            bool((~torch.isfinite(loss)).any())


def count_ops(fn, steps: int) -> tuple[float, Counter]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    names = Counter(e.name for e in prof.events() if e.name.startswith("aten::"))
    return sum(names.values()) / steps, names


def measure(n_cells: int, data: dict, steps: int, timed_steps: int, kernel: str = "eager") -> dict:
    cells = job_cells(n_cells)
    trainer = Trainer(cells, data, torch.device("cpu"), optimizer_kernel=kernel)
    step = Step(trainer)
    first, _ = count_ops(step, 1)
    steady, names = count_ops(step, steps)
    stretch = max(1, int(getattr(trainer, "stretch", 1) or 1))
    per_step = steady + (first - steady) / stretch
    t = time.perf_counter()
    for _ in range(timed_steps):
        step()
    wall = time.perf_counter() - t
    return {"cells": n_cells, "optimizer_kernel": trainer.optimizer_kernel, "first": first, "steady": steady,
            "stretch": stretch, "per_step": per_step,
            "top_ops": dict(names.most_common(8)), "timed_steps": timed_steps, "seconds": wall,
            "seconds_per_step": wall / timed_steps, "cell_steps_per_s": n_cells * timed_steps / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default="8,80,320", help="comma-separated cell counts (<= 4 or multiples of 4)")
    ap.add_argument("--steps", type=int, default=5, help="steps profiled for the steady count")
    ap.add_argument("--timed-steps", type=int, default=3, help="steps timed without the profiler")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--optimizer-kernel", choices=["auto", "eager", "compiled"], default="auto",
                    help="nht.core.stacked_optim.resolve_kernel; auto: what the preset's own jobs run")
    ap.add_argument("--out", help="write the results as JSON here (default: none; --smoke: a temp dir)")
    ap.add_argument("--smoke", action="store_true", help="2 and 8 cells, 2 steps: a quick check that the "
                    "benchmark runs")
    args = ap.parse_args()
    if args.smoke:
        args.cells, args.steps, args.timed_steps = "2,8", 2, 2
    counts = [int(c) for c in args.cells.split(",") if c.strip()]
    if not counts or min(counts) < 1:
        raise SystemExit("--cells: give positive cell counts")
    if args.steps < 1 or args.timed_steps < 1:
        raise SystemExit("--steps and --timed-steps must be >= 1")
    devmod.configure(args.threads, deterministic=True)
    s = job_cells(len(WEIGHT_DECAYS))[0].settings
    data = make_modular_dataset(s["op"], s["p"], s["train_frac"], s["split_seed"])

    # a compiled kernel compiles at its first call, for any cell count: do that outside the counts
    Step(Trainer(job_cells(2), data, torch.device("cpu"), optimizer_kernel=args.optimizer_kernel))()
    rows = []
    print(f"{'cells':>6} {'first':>8} {'steady':>8} {'stretch':>8} {'per_step':>9} {'s/step':>8} {'cell-steps/s':>13}")
    for n in counts:
        r = measure(n, data, args.steps, args.timed_steps, args.optimizer_kernel)
        rows.append(r)
        print(f"{n:>6} {r['first']:>8.0f} {r['steady']:>8.0f} {r['stretch']:>8} {r['per_step']:>9.1f} "
              f"{r['seconds_per_step']:>8.3f} {r['cell_steps_per_s']:>13.1f}", flush=True)
    by = {r["cells"]: r["per_step"] for r in rows}
    goals = {"max_ops_per_step": max(by.values()), "max_ops_per_step_ok": max(by.values()) <= 600}
    if 8 in by and 80 in by:
        goals["ratio_80_over_8"] = by[80] / by[8]
        goals["ratio_80_over_8_ok"] = by[80] / by[8] <= 1.25
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "job": f"{PRESET.relative_to(REPO)}:{EXPERIMENT}, weight_decay {WEIGHT_DECAYS} x seeds",
              "results": rows, "goals": goals}
    print(json.dumps(goals))
    out = args.out
    if out is None and args.smoke:
        out = str(Path(tempfile.mkdtemp(prefix="step_ops_")) / "step_ops.json")
    if out:
        Path(out).write_text(json.dumps(result, indent=1))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
