"""Overhead of DVC under Snakemake (issue 5; docs/dvc.md).

1. No-op ``snakemake --cores all`` on a grid of N cells (default 100 and 1000), with DVC on and
   off, in a throw-away git + DVC repository holding the real Snakefile. The workflow's outputs
   are fabricated (realistic sizes, consistent times) so no training is needed; the first DVC
   run records them all (its time is printed too: recording costs time per job recorded).
2. ``dvc push`` to an empty shared-directory remote and ``dvc pull`` into a fresh clone of the
   recorded artifacts (of the N-cell grid, or of an existing repository with --push-pull-repo,
   e.g. a checkout after ``make run``: the default run).

    python benchmarks/dvc_overhead.py [--cells 100 1000] [--repeat 3] [--push-pull-repo DIR]

Prints one line per measurement and writes benchmarks/out/dvc_overhead.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _env(**extra):
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.update({"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com", "GIT_COMMITTER_NAME": "b",
              "GIT_COMMITTER_EMAIL": "b@example.com", "DVC_NO_ANALYTICS": "1"})
    e.pop("NHT_DVC", None)
    e.update(extra)
    return e


def sh(args, cwd, **extra):
    t0 = time.perf_counter()
    p = subprocess.run(args, cwd=cwd, env=_env(**extra), text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    dt = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"{' '.join(map(str, args))} failed:\n{p.stdout[-4000:]}")
    return dt, p.stdout


def grid_config(cells: int) -> str:
    """A modular experiment of exactly `cells` cells (10 weight decays x cells/10 learning rates)."""
    assert cells % 10 == 0
    lrs = [round(0.001 * (1 + i), 6) for i in range(cells // 10)]
    wds = [0.1 * (1 + i) for i in range(10)]
    return ("experiments:\n  grid:\n    kind: modular\n    p: 31\n    train_frac: 0.6\n"
            f"    lr: {lrs}\n    weight_decay: {wds}\n    init_scale: 1\n    seed: 0\n"
            "    max_steps: 10000\n    eval_every: 20\n    batch_over: [lr]\n    max_cells_per_job: 50\n")


def make_repo(path: Path, config: str) -> None:
    ign = shutil.ignore_patterns("__pycache__", "*.pyc")
    path.mkdir(parents=True)
    shutil.copytree(REPO / "nht", path / "nht", ignore=ign)
    shutil.copytree(REPO / "workflow", path / "workflow", ignore=ign)
    for name in ("Snakefile", ".gitignore", ".dvcignore"):
        shutil.copyfile(REPO / name, path / name)
    (path / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copyfile(REPO / ".dvc" / name, path / ".dvc" / name)
    snakefile = (path / "Snakefile").read_text()
    if "workflow/rules/dvc.smk" not in snakefile:
        (path / "Snakefile").write_text(snakefile.replace(
            'include: "workflow/rules/common.smk"\n',
            'include: "workflow/rules/common.smk"\ninclude: "workflow/rules/dvc.smk"\n'))
    (path / "config.yaml").write_text(config)
    for args in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        sh(args, path)


SIZES = {".npz": 120_000, "history.csv": 60_000, ".json": 3_000, ".csv": 20_000, ".png": 80_000,
         ".pdf": 30_000, ".log": 500, ".tsv": 200}


def fabricate_outputs(path: Path) -> int:
    """Create every output/log/benchmark file of the DAG, with times in dependency order."""
    _, out = sh([BIN / "snakemake", "-n", "--forceall", "--cores", "1"], path, NHT_DVC="0")
    jobs, cur = [], None
    for line in out.splitlines():
        m = re.match(r"^\s+(input|output|log|benchmark): (.*)$", line)
        if re.match(r"^(local)?rule \w+:", line):
            cur = {"input": [], "output": [], "log": [], "benchmark": []}
            jobs.append(cur)
        elif m and cur is not None:
            cur[m.group(1)] = [s.strip() for s in m.group(2).split(",") if s.strip()]
    producer = {o: j for j in jobs for o in j["output"]}
    level: dict[int, int] = {}

    def lvl(j):
        if id(j) not in level:
            level[id(j)] = 1 + max((lvl(producer[i]) for i in j["input"] if i in producer), default=0)
        return level[id(j)]

    base = time.time() - 3600
    n = 0
    for j in jobs:
        t = base + lvl(j)
        for f in j["output"] + j["log"] + j["benchmark"]:
            p = path / f
            p.parent.mkdir(parents=True, exist_ok=True)
            size = next((s for suffix, s in SIZES.items() if f.endswith(suffix)), 1000)
            line = f"{hashlib.sha256(f.encode()).hexdigest()}\n".encode()
            head = b"step,train_loss,train_acc,test_loss,test_acc,V\n" if f.endswith(".csv") else b""
            p.write_bytes((head + line * (size // len(line) + 1))[:size])
            os.utime(p, (t, t))
            n += 1
    return n


def noop_times(path: Path, repeat: int, dvc_on: bool) -> list[float]:
    times = []
    for _ in range(repeat):
        dt, out = sh([BIN / "snakemake", "--cores", "all"], path, **({} if dvc_on else {"NHT_DVC": "0"}))
        if "Nothing to be done" not in out:
            raise SystemExit("not a no-op run:\n" + out[-3000:])
        times.append(dt)
    return times


def push_pull(path: Path, work: Path) -> dict:
    """Push the record of `path` to a fresh local remote, pull it into a fresh clone.

    The repository itself is left as it was (a --local remote is added, then removed); the clone
    gets the working copy's dvc.yaml / dvc.lock / config.yaml (as if they had been committed)."""
    remote = work / "pushpull-remote"
    shutil.rmtree(remote, ignore_errors=True)
    sh([BIN / "dvc", "remote", "add", "-f", "--local", "nht-bench", str(remote)], path)
    try:
        t_push, out = sh([BIN / "dvc", "push", "-r", "nht-bench"], path)
    finally:
        sh([BIN / "dvc", "remote", "remove", "--local", "nht-bench"], path)
    files = re.search(r"(\d+) files? pushed", out)
    size = sum(f.stat().st_size for f in remote.rglob("*") if f.is_file())
    clone = work / "pushpull-clone"
    shutil.rmtree(clone, ignore_errors=True)
    sh(["git", "clone", "-q", str(path), str(clone)], work)
    for name in ("dvc.yaml", "dvc.lock", "config.yaml"):
        shutil.copyfile(path / name, clone / name)
    sh([BIN / "dvc", "remote", "add", "-f", "--local", "nht-bench", str(remote)], clone)
    t_pull, _ = sh([BIN / "dvc", "pull", "-r", "nht-bench"], clone)
    # what the clone would run now (a dry run: an unfinished record must not start training here)
    t_noop, out = sh([BIN / "snakemake", "-n", "--cores", "all"], clone)
    planned = sorted(set(re.findall(r"^(?:local)?rule (\w+):$", out, re.M)) - {"all"})
    return {"push_s": t_push, "pull_s": t_pull, "files": int(files.group(1)) if files else 0,
            "bytes": size, "clone_dryrun_s": t_noop, "clone_noop": "Nothing to be done" in out,
            "clone_planned_rules": planned}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, nargs="*", default=[100, 1000], help="grid sizes (none: skip)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--push-pull-repo", type=Path, help="measure push/pull of this repository's record")
    ap.add_argument("--keep", action="store_true", help="keep the temporary repositories")
    a = ap.parse_args()
    report = {"grids": {}}
    work = Path(tempfile.mkdtemp(prefix="nht-dvc-bench-"))
    try:
        for n in a.cells:
            path = work / f"grid{n}"
            make_repo(path, grid_config(n))
            files = fabricate_outputs(path)
            t_record, out = sh([BIN / "snakemake", "--cores", "all"], path)
            off = noop_times(path, a.repeat, dvc_on=False)
            on = noop_times(path, a.repeat, dvc_on=True)
            sys.path.insert(0, str(path))
            from nht import dvc_sync
            t0 = time.perf_counter()
            plan = dvc_sync.prepare(path)
            t_prepare = time.perf_counter() - t0
            row = {"cells": n, "files": files, "stages": len(plan.clean), "first_record_run_s": t_record,
                   "noop_off_s": statistics.median(off), "noop_on_s": statistics.median(on),
                   "overhead_s": statistics.median(on) - statistics.median(off),
                   "prepare_s": t_prepare}
            row.update({f"grid_{k}": v for k, v in push_pull(path, work).items()})
            report["grids"][n] = row
            print(f"{n:5d} cells, {files} files: no-op snakemake {row['noop_off_s']:.2f} s without DVC, "
                  f"{row['noop_on_s']:.2f} s with -> overhead {row['overhead_s']:+.2f} s "
                  f"(prepare {t_prepare:.2f} s; first run recording all: {t_record:.1f} s); "
                  f"push {row['grid_push_s']:.1f} s / pull {row['grid_pull_s']:.1f} s "
                  f"({row['grid_files']} files, {row['grid_bytes'] / 1e6:.1f} MB); "
                  f"clone no-op: {row['grid_clone_noop']}", flush=True)
        if a.push_pull_repo:
            r = push_pull(a.push_pull_repo.resolve(), work)
            report["push_pull_repo"] = {"repo": str(a.push_pull_repo), **r}
            print(f"{a.push_pull_repo}: push {r['push_s']:.1f} s, pull {r['pull_s']:.1f} s "
                  f"({r['files']} files, {r['bytes'] / 1e6:.1f} MB); clone would run: "
                  f"{', '.join(r['clone_planned_rules']) or 'nothing'}")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "dvc_overhead.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
