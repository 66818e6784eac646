"""Every stage reads and writes only the paths its rule passes (issue 19).

A tiny workspace (one modular and one image experiment) is run to completion with the real
snakemake. Then, for every job of ``snakemake -n -p --forceall``, the job's declared input files
alone are copied into an empty sandbox (same relative paths) and the job's stage command (the part
of its shell command after the job wrapper's ``--``) runs there. It must succeed, leave its inputs
unchanged and write exactly its declared outputs; and every declared input and output must be
named in the command (an output may be named by its folder: ``--out-dir``). A stage that finds a
file by naming convention (a sibling of an input) either fails in the sandbox, writes something
undeclared, or reads or writes a declared file its command never names; the recompute layer, which
sees only declared files, would miss such a read or write, and a reader of the rule could not see it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import copy_workflow, run_snakemake, tiny_modular

pytestmark = pytest.mark.slow

CONFIG = {"results_dir": "results", "data_dir": "data", "experiments": {
    "tiny": tiny_modular(max_steps=100, init_scale=1),
    "tiny_img": {"kind": "image", "dataset": {"name": "digits", "source": "sklearn", "n_train": 300, "n_test": 100},
                 "rho": [0.1, 1.0], "weight_decay": 0.1, "epochs": 2, "batch_size": 100,
                 "model": {"name": "simple_cnn", "width_mult": 0.25}}}}

EVERY_RULE = {"make_modular_data", "train_modular", "extract_norms", "fit_modular", "figures_modular",
              "experiment_summary_modular", "image_fetch", "image_shortcut", "image_train",
              "image_figures", "image_experiment_summary", "science", "summary"}


# the recompute layer's own rules (the target, the force stamps; docs/dvc.md), which run no stage
RECOMPUTE_RULES = {"all", "nht_force"}
# the recompute layer's force stamps (.nht/force/<stage>/<digest>) are inputs that only the job
# wrapper reads, never a stage
STAMP_PREFIX = ".nht/"


def planned_jobs(workdir: Path) -> list[dict]:
    """Every job of a forced dry run: rule, declared inputs and outputs, and the stage command (the
    shell command after the job wrapper ``python -m nht.recompute TAG LOG INPUTS --``)."""
    out = run_snakemake(workdir, "-n", "-p", "--forceall", "--cores", "1").stdout
    jobs = []
    for block in re.split(r"\n\s*\n", out):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        if not rule or not shell or rule.group(1) in RECOMPUTE_RULES:
            continue
        files = {key: [p.strip() for p in m.group(1).split(",") if p.strip()] if (m := re.search(
            rf"^\s+{key}: (.*)$", block, re.M)) else [] for key in ("input", "output")}
        files["input"] = [p for p in files["input"] if not p.startswith(STAMP_PREFIX)]
        argv = shlex.split(shell.group(1))
        assert argv[:3] == ["python", "-m", "nht.recompute"] and "--" in argv, shell.group(1)
        jobs.append({"rule": rule.group(1), "inputs": files["input"], "outputs": files["output"],
                     "command": argv[argv.index("--") + 1:]})
    return jobs


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def completed(tmp_path_factory) -> Path:
    ws = copy_workflow(tmp_path_factory.mktemp("declared") / "ws", CONFIG)
    run_snakemake(ws, "--cores", "2")
    return ws


def test_every_stage_reads_and_writes_only_what_its_rule_passes(completed, tmp_path):
    jobs = planned_jobs(completed)
    assert {j["rule"] for j in jobs} == EVERY_RULE
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", MPLBACKEND="Agg",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    problems = []
    for i, job in enumerate(jobs):
        named = set(job["command"])
        unnamed = [p for p in job["inputs"] if p not in named]
        unnamed += [p for p in job["outputs"] if p not in named and str(Path(p).parent) not in named]
        if unnamed:  # found by convention (a sibling of a named file, ...), not passed
            problems.append(f"{job['rule']}: declared but not named in its command: {unnamed}")
        box = tmp_path / f"{i:02d}_{job['rule']}"
        box.mkdir()
        for rel in job["inputs"]:
            (box / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(completed / rel, box / rel)
        before = digest(box)
        proc = subprocess.run(job["command"], cwd=box, env=env, text=True, capture_output=True, timeout=600)
        if proc.returncode != 0:
            problems.append(f"{job['rule']}: failed with only its declared inputs ({proc.returncode}):\n"
                            f"  {shlex.join(job['command'])[:300]}\n{proc.stderr[-1500:]}")
            continue
        after = digest(box)
        changed = sorted(p for p in before if after.get(p) != before[p])
        written = set(after) - set(before)
        if changed:
            problems.append(f"{job['rule']}: changed its inputs {changed}")
        if written != set(job["outputs"]):
            problems.append(f"{job['rule']}: wrote {sorted(written - set(job['outputs']))} undeclared, "
                            f"missed {sorted(set(job['outputs']) - written)} declared")
    assert not problems, "\n".join(problems)
