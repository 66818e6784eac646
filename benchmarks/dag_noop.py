"""Benchmark: time of a no-op `snakemake --cores all` (DAG evaluation only) on a large grid.

Builds a temporary copy of the workflow with a modular experiment of N cells (default 1,000),
creates every output as an empty file with times in DAG order (nothing is trained: this
measures the workflow's own overhead), then times `snakemake --cores all` when there is nothing to do.
DVC is disabled here (`dvc.enabled: false`); benchmarks/dvc_overhead.py measures DVC's share.
Goal (issue 6): <= 5 s at 1,000 cells.

Usage: .venv/bin/python benchmarks/dag_noop.py [--cells 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def grid_config(n_cells: int) -> dict:
    seeds = max(1, n_cells // 100)
    return {"dvc": {"enabled": False}, "experiments": {"big": {
        "kind": "modular", "p": 11, "train_frac": 0.7, "model": {"name": "mlp", "embed_dim": 8, "hidden": 16},
        "lr": 0.01, "weight_decay": [round(0.1 * (i + 1), 3) for i in range(10)],
        "init_scale": [1 + i for i in range(10)], "seed": list(range(seeds)),
        "max_steps": 10, "batch_over": ["init_scale", "seed"], "max_cells_per_job": 1000}}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(tmp)
        shutil.copy(REPO / "Snakefile", wd)
        shutil.copytree(REPO / "workflow", wd / "workflow")
        config = grid_config(args.cells)
        (wd / "config.yaml").write_text(yaml.safe_dump(config))
        env = dict(os.environ)
        run = lambda *a: subprocess.run([SNAKEMAKE, *a], cwd=wd, capture_output=True, text=True, env=env)
        # create every output as an empty file with mtimes in DAG order: nothing is trained
        subprocess.run([sys.executable, "-c", _CREATE], cwd=wd, check=True)
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            proc = run("--cores", "all")
            times.append(time.perf_counter() - t)
            assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stderr[-2000:]
        n = sum(1 for _ in (wd / "results/big/cells").iterdir())
        print(f"cells                      {n}")
        print(f"no-op snakemake (s)        median {statistics.median(times):.2f}  runs {', '.join(f'{t:.2f}' for t in times)}")
        print(f"goal                       <= 5 s: {'met' if statistics.median(times) <= 5 else 'NOT met'}")


# Creates every output file of the DAG, in topological order, with distinct increasing mtimes.
_CREATE = r"""
import subprocess, sys, time, os, re
from pathlib import Path
out = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'snakemake'), '--cores', '1',
                      '--dry-run', '--printshellcmds'], capture_output=True, text=True).stdout
files = re.findall(r'^\s+output: (.+)$', out, re.M)
order = {'make_modular_data': 0, 'train_modular': 1, 'extract_norms': 2, 'fit_modular': 3,
         'figures_modular': 4, 'experiment_summary_modular': 5, 'summary': 6}
paths = [p.strip() for line in files for p in line.split(',')]
def rank(p):
    for k, r in (('data/', 0), ('/jobs/', 1), ('/cells/', 2), ('fit.json', 3), ('cells.csv', 3),
                 ('/figures/', 4), ('experiment_summary', 5), ('summary.json', 6)):
        if k in p: return r
    return 7
t0 = time.time() - 1000
for p in sorted(set(paths), key=rank):
    Path(p).parent.mkdir(parents=True, exist_ok=True)
    Path(p).touch()
    os.utime(p, (t0 + rank(p), t0 + rank(p)))
"""

if __name__ == "__main__":
    main()
