"""Overhead of nht's recompute layer and of sharing results with DVC, at N cells (docs/dvc.md).

In a throw-away git + DVC repository holding the real Snakefile, rules and job wrapper, with a
modular grid of N cells (default 1,000; 20 training jobs of 50 cells), every stage module under
nht/stages/ is replaced by a stub that writes outputs of realistic size (a 100-row history per
cell) in milliseconds, so the real workflow runs end to end without training. Then, side by side:

1. ``snakemake --cores all`` the first time (every job runs through the real wrapper and writes
   its record; the run ends with ``dvc add``);
2. a no-op ``snakemake --cores all`` (every job judged clean from its record; goal <= 5 s);
3. ``dvc push`` to an empty shared-directory remote (goal <= 30 s);
4. ``git clone`` + ``dvc pull`` (goal <= 30 s), then the clone's first no-op ``snakemake``.

    python benchmarks/recompute_overhead.py [--cells 1000] [--repeat 3]

Prints one line per measurement and writes benchmarks/out/recompute_overhead.json. Where Slurm's
client is installed but its controller does not answer, every snakemake command waits ~9 s at start
(the Slurm executor plugin's ``scontrol show config``); the script measures that call and says so.
``--smoke`` (the test suite): 10 cells (one job), one no-op repeat; prints the JSON, writes no file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

STUB = '''"""Benchmark stub of a stage: writes this stage's outputs, of realistic size, in milliseconds."""
import argparse, json, sys
from pathlib import Path

FIGS = {"figures": ("curves", "delay_law", "regimes"),
        "science": ("delay_law_bootstrap", "prospective", "norm_fits", "decay_rate", "clean_separation")}


def write(path, text):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def main(argv=None):
    stage = Path(__file__).stem.replace("_", "-")
    ap = argparse.ArgumentParser()
    for opt in ("out", "history", "meta", "out-history", "out-norms", "out-fit", "out-table", "out-dir",
                "figure-dir", "job", "cell"):
        ap.add_argument("--" + opt)
    a, _ = ap.parse_known_args(argv)
    body = "step,train_acc,test_acc,V\\n" + "".join(f"{s},0.5,0.25,{1000 - s}\\n" for s in range(0, 2000, 20))
    if stage == "train":
        cells = json.loads(a.job)["cells"]
        write(a.history, "cell," + body.splitlines()[0] + "\\n" + "".join(
            f"{c['id']},{line}\\n" for c in cells for line in body.splitlines()[1:]))
        write(a.meta, json.dumps({"cells": {c["id"]: {"status": "ok"} for c in cells}}))
    elif stage == "norms":
        write(a.out_history, body)
        write(a.out_norms, json.dumps({"cell": a.cell, "T_fit": 100, "T_transition": 900, "V_fit": 1e3}))
    elif stage == "fit":
        write(a.out_fit, "{}")
        write(a.out_table, "cell\\n")
    elif stage in FIGS:
        d = a.out_dir or a.figure_dir
        for name in FIGS[stage]:
            write(f"{d}/{name}.png", "png" * 3000)
            write(f"{d}/{name}.pdf", "pdf" * 3000)
        if a.out:
            write(a.out, "{}")
    else:
        write(a.out, "{}")
        if stage == "summary":
            write(Path(a.out).with_name("scorecard.md"), "# scorecard")
            write(Path(a.out).with_name("scorecard.html"), "<p>scorecard</p>")
'''


def _env(**extra):
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.update({"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com", "GIT_COMMITTER_NAME": "b",
              "GIT_COMMITTER_EMAIL": "b@example.com", "DVC_NO_ANALYTICS": "1"})
    e.pop("NHT_DVC", None)
    e.update(extra)
    return e


def sh(args, cwd) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(args, cwd=cwd, env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    dt = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"{' '.join(map(str, args))} failed:\n{p.stdout[-4000:]}")
    return dt, p.stdout


def grid_config(cells: int) -> str:
    """A modular experiment of exactly ``cells`` cells (10 weight decays x cells/10 learning rates)."""
    assert cells % 10 == 0
    lrs = [round(0.001 * (1 + i), 6) for i in range(cells // 10)]
    wds = [round(0.1 * (1 + i), 3) for i in range(10)]
    return ("experiments:\n  grid:\n    kind: modular\n    p: 31\n    train_frac: 0.6\n"
            f"    lr: {lrs}\n    weight_decay: {wds}\n    init_scale: 1\n    seed: 0\n"
            "    max_steps: 10000\n    eval_every: 20\n    batch_over: [lr, weight_decay]\n"
            "    max_cells_per_job: 50\n")


def make_repo(path: Path, config: str, storage: Path) -> None:
    ign = shutil.ignore_patterns("__pycache__", "*.pyc")
    path.mkdir(parents=True)
    for name in ("nht", "workflow", "profiles"):
        shutil.copytree(REPO / name, path / name, ignore=ign)
    for name in ("Snakefile", ".gitignore", ".dvcignore"):
        shutil.copyfile(REPO / name, path / name)
    for stage in (path / "nht" / "stages").glob("*.py"):
        if stage.name not in ("__init__.py", "cells.py"):
            stage.write_text(STUB)
    (path / ".dvc").mkdir()
    (path / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    (path / ".dvc" / "config").write_text(f"[core]\n    remote = shared\n['remote \"shared\"']\n    url = {storage}\n")
    (path / "config.yaml").write_text(config)
    sh(["git", "init", "-q", "-b", "main"], path)
    sh(["git", "add", "-A"], path)
    sh(["git", "commit", "-qm", "bench"], path)


def measure(cells: int, repeat: int, work: Path) -> dict:
    storage = work / "storage"
    origin = work / "origin"
    make_repo(origin, grid_config(cells), storage)
    first, _ = sh([str(BIN / "snakemake"), "--cores", "all"], origin)
    noop = [sh([str(BIN / "snakemake"), "--cores", "all"], origin)[0] for _ in range(repeat)]
    _, out = sh([str(BIN / "snakemake"), "-n", "--cores", "all"], origin)
    assert "Nothing to be done" in out, out[-2000:]
    sh(["git", "add", "-A"], origin)
    sh(["git", "commit", "-qm", "results"], origin)
    nfiles = sum(1 for d in ("data", "results", "logs") for p in (origin / d).rglob("*") if p.is_file())
    push, _ = sh([str(BIN / "dvc"), "push"], origin)
    clone = work / "clone"
    sh(["git", "clone", "-q", str(origin), str(clone)], work)
    pull, _ = sh([str(BIN / "dvc"), "pull"], clone)
    clone_noop, out = sh([str(BIN / "snakemake"), "--cores", "all"], clone)
    assert "Nothing to be done" in out, out[-2000:]
    return {"cells": cells, "files": nfiles, "first_run_s": first, "noop_s": statistics.median(noop),
            "noop_all_s": noop, "dvc_push_s": push, "dvc_pull_s": pull, "clone_noop_s": clone_noop}


def slurm_plugin_wait() -> float | None:
    """Seconds ``scontrol show config`` takes (None without scontrol): Snakemake's Slurm executor
    plugin runs it (timeout 10 s) when it is imported, i.e. at the start of every snakemake command."""
    if shutil.which("scontrol") is None:
        return None
    t0 = time.perf_counter()
    try:
        subprocess.run(["scontrol", "show", "config"], capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        pass
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, nargs="+", default=[1000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="10 cells, 1 repeat, JSON to stdout only (tests)")
    a = ap.parse_args()
    if a.smoke:
        a.cells, a.repeat = [10], 1
    wait = slurm_plugin_wait()
    if wait is not None and wait > 1:
        print(f"note: `scontrol show config` takes {wait:.1f} s here (Slurm's controller does not answer); "
              "the Slurm executor plugin makes that call when any snakemake command starts, so every "
              "time below includes it (README, 'Running on a SLURM cluster')", flush=True)
    results = []
    for n in a.cells:
        with tempfile.TemporaryDirectory(prefix="nht-recompute-bench-") as tmp:
            r = measure(n, a.repeat, Path(tmp))
        print(f"{n} cells ({r['files']} files): first run {r['first_run_s']:.1f} s, no-op {r['noop_s']:.2f} s, "
              f"dvc push {r['dvc_push_s']:.1f} s, dvc pull {r['dvc_pull_s']:.1f} s, "
              f"clone's first no-op {r['clone_noop_s']:.2f} s", flush=True)
        results.append(r)
    doc = json.dumps({"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                  "scontrol_show_config_s": wait},
                      "results": results}, indent=1)
    if a.smoke:
        print(doc)
        return
    out = REPO / "benchmarks" / "out" / "recompute_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
