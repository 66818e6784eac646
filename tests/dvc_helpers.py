"""Helpers of the DVC tests (tests/test_dvc_*.py): throw-away git + DVC repositories holding a
copy of the workflow (the real Snakefile, or a toy with the same rule structure whose stages run
in milliseconds), and small parsers of Snakemake's output."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
DVC = str(BIN / "dvc")

TOY_CONFIG = """\
results_dir: results
data_dir: data
experiments:
  toy:
    kind: modular
    op: add
    p: 7
    train_frac: 0.6
    lr: 0.01
    weight_decay: [0.5, 1.0, 2.0]
    init_scale: 1
    seed: 0
    max_steps: 100
    batch_over: []
"""

REAL_CONFIG = """\
results_dir: results
data_dir: data
experiments:
  tiny:
    kind: modular
    op: add
    p: 7
    train_frac: 0.6
    model: {name: mlp, embed_dim: 8, hidden: 16}
    optimizer: {name: adamw, betas: [0.9, 0.98]}
    lr: 0.01
    weight_decay: [0.5, 1.0]
    init_scale: 1
    seed: 0
    batch_size: full
    max_steps: 100
    eval_every: 10
    stop_margin: 20
    batch_over: []
"""

# The toy Snakefile: the real workflow's structure (dataset -> train per job -> norms per cell ->
# fit per experiment -> summary), same path templates, same include of workflow/rules/dvc.smk,
# with stages that are tiny deterministic Python modules (nht/toy_*.py, written by make_repo).
TOY_SNAKEFILE = '''\
import sys
from nht import paths as P
from nht.config import cell_index, validate_config

configfile: "config.yaml"
validate_config(config)
PY = sys.executable
R = config["results_dir"]
D = config["data_dir"]
CELLS, JOBS, JOB_OF = cell_index(config)

wildcard_constraints:
    experiment="[A-Za-z0-9][A-Za-z0-9_-]*",
    job="[^/]+",
    cell="[^/]+",
    dataset="[^/]+",

include: "workflow/rules/dvc.smk"

def cells_of(e):
    return [c for c in CELLS.values() if c.experiment == e]

rule all:
    default_target: True
    input: f"{R}/summary.json"

rule make_modular_data:
    output: f"{D}/modular/{{dataset}}.npz"
    log: "logs/make_modular_data/{dataset}.log"
    benchmark: "benchmarks/rules/make_modular_data/{dataset}.tsv"
    shell: "{PY} -m nht.toy_data {output} {wildcards.dataset} > {log} 2>&1"

rule train_modular:
    input: dataset=lambda w: f"{D}/modular/{JOBS[w.job].cells[0].dataset_id}.npz"
    output:
        history=f"{R}/{{experiment}}/jobs/{{job}}/history.csv",
        meta=f"{R}/{{experiment}}/jobs/{{job}}/meta.json",
    log: "logs/train_modular/{experiment}/{job}.log"
    benchmark: "benchmarks/rules/train_modular/{experiment}/{job}.tsv"
    shell: "{PY} -m nht.toy_train {input.dataset} {output.history} {output.meta} {wildcards.job} > {log} 2>&1"

rule extract_norms:
    input:
        history=lambda w: f"{R}/{w.experiment}/jobs/{JOB_OF[w.cell]}/history.csv",
    output:
        history=f"{R}/{{experiment}}/cells/{{cell}}/history.csv",
        norms=f"{R}/{{experiment}}/cells/{{cell}}/norms.json",
    log: "logs/extract_norms/{experiment}/{cell}.log"
    shell: "{PY} -m nht.toy_norms {input.history} {output.history} {output.norms} > {log} 2>&1"

rule fit_modular:
    input: lambda w: [f"{R}/{w.experiment}/cells/{c.id}/norms.json" for c in cells_of(w.experiment)]
    output: fit=f"{R}/{{experiment}}/fit.json", table=f"{R}/{{experiment}}/cells.csv"
    log: "logs/fit_modular/{experiment}.log"
    shell: "{PY} -m nht.toy_fit {output.fit} {output.table} {input} > {log} 2>&1"

rule summary:
    input: [f"{R}/{e}/fit.json" for e in config["experiments"]]
    output: f"{R}/summary.json"
    log: "logs/summary/summary.log"
    shell: "{PY} -m nht.toy_fit {output} /dev/null {input} > {log} 2>&1"
'''

TOY_MODULES = {
    # a dataset of NHT_TOY_DATA_BYTES bytes (default 2.1 MB: over Snakemake's 1 MB checksum limit)
    "toy_data.py": '''
import hashlib, os, sys
out, name = sys.argv[1], sys.argv[2]
n = int(os.environ.get("NHT_TOY_DATA_BYTES", "2100000"))
block = hashlib.sha256(name.encode()).digest() * 4096
with open(out, "wb") as fh:
    while n > 0:
        fh.write(block[:n]); n -= len(block)
''',
    # NHT_TOY_FAIL: fail the job whose id contains it; NHT_TOY_SLEEP: seconds to sleep first;
    # NHT_TOY_HANG_AFTER=n: a job that starts when n jobs have finished hangs (to be interrupted)
    "toy_train.py": '''
import glob, hashlib, json, os, sys, time
dataset, history, meta, job = sys.argv[1:5]
time.sleep(float(os.environ.get("NHT_TOY_SLEEP", "0")))
hang_after = os.environ.get("NHT_TOY_HANG_AFTER")
if hang_after and len(glob.glob(os.path.join(os.path.dirname(os.path.dirname(meta)), "*", "meta.json"))) >= int(hang_after):
    time.sleep(600)
if os.environ.get("NHT_TOY_FAIL") and os.environ["NHT_TOY_FAIL"] in job:
    sys.exit("toy failure of " + job)
h = hashlib.md5(open(dataset, "rb").read() + job.encode()).hexdigest()
with open(history, "w") as fh:
    fh.write("step,train_acc,test_acc,V\\n")
    for step in range(0, 50, 10):
        fh.write(f"{step},{int(h[step % 30], 16) / 15},{step / 50},{len(job) + step}\\n")
json.dump({"job": job, "h": h}, open(meta, "w"))
''',
    "toy_norms.py": '''
import hashlib, json, shutil, sys
src, history, norms = sys.argv[1:4]
shutil.copyfile(src, history)
json.dump({"md5": hashlib.md5(open(src, "rb").read()).hexdigest()}, open(norms, "w"))
''',
    "toy_fit.py": '''
import hashlib, json, sys
out, table, *inputs = sys.argv[1:]
h = hashlib.md5(b"".join(open(p, "rb").read() for p in inputs)).hexdigest()
json.dump({"n": len(inputs), "h": h, "value": int(h[:4], 16)}, open(out, "w"))
if table != "/dev/null":
    open(table, "w").write("path\\n" + "\\n".join(inputs) + "\\n")
''',
}


def env(**extra) -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.update({"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
              "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
              "DVC_NO_ANALYTICS": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    e.pop("NHT_DVC", None)
    e.update({k: str(v) for k, v in extra.items()})
    return e


def run(args: list[str], cwd, check: bool = True, **extra_env) -> subprocess.CompletedProcess:
    p = subprocess.run(args, cwd=cwd, env=env(**extra_env), text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({p.returncode}):\n{p.stdout[-6000:]}")
    return p


def git(cwd, *args, **kw):
    return run(["git", *args], cwd, **kw)


def dvc(cwd, *args, **kw):
    return run([DVC, *args], cwd, **kw)


def snakemake(cwd, *args, **kw):
    return run([SNAKEMAKE, *args], cwd, **kw)


def _ignore(dirpath, names):
    return [n for n in names if n in ("__pycache__", ".snakemake") or n.endswith(".pyc")]


def make_repo(path: Path, toy: bool = True, config: str | None = None) -> Path:
    """A git + DVC repository at ``path`` with a copy of the workflow and nht, committed."""
    path.mkdir(parents=True)
    shutil.copytree(REPO / "nht", path / "nht", ignore=_ignore)
    shutil.copytree(REPO / "workflow", path / "workflow", ignore=_ignore)
    for name in (".gitignore", ".dvcignore"):
        shutil.copyfile(REPO / name, path / name)
    (path / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copyfile(REPO / ".dvc" / name, path / ".dvc" / name)
    if toy:
        (path / "Snakefile").write_text(TOY_SNAKEFILE)
        for name, text in TOY_MODULES.items():
            (path / "nht" / name).write_text(textwrap.dedent(text).lstrip())
    else:
        snakefile = (REPO / "Snakefile").read_text()
        if "workflow/rules/dvc.smk" not in snakefile:  # until the Snakefile includes it itself
            snakefile = snakefile.replace('include: "workflow/rules/common.smk"\n',
                                          'include: "workflow/rules/common.smk"\n'
                                          'include: "workflow/rules/dvc.smk"\n')
        (path / "Snakefile").write_text(snakefile)
    (path / "config.yaml").write_text(config if config is not None else (TOY_CONFIG if toy else REAL_CONFIG))
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "workflow")
    return path


def commit_record(path: Path, message: str = "record") -> None:
    """What a user does after a run: commit dvc.yaml/dvc.lock (and the config) to git."""
    git(path, "add", "dvc.yaml", "dvc.lock", "config.yaml")
    git(path, "commit", "-qm", message)


def planned(cwd, *args) -> dict[str, list[str]]:
    """Jobs a dry run plans: rule -> list of its first outputs (empty dict: nothing to do)."""
    out = snakemake(cwd, "-n", "--cores", "1", *args).stdout
    jobs: dict[str, list[str]] = {}
    rule = None
    for line in out.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            rule = m.group(1)
            continue
        m = re.match(r"^\s+output: (\S+?),?(\s|$)", line)
        if m and rule:
            jobs.setdefault(rule, []).append(m.group(1).rstrip(","))
            rule = None
    jobs.pop("all", None)
    return jobs


def tree_digest(root: Path, *dirs: str) -> dict[str, str]:
    """md5 of every file under the given directories (relative path -> md5)."""
    out = {}
    for d in dirs:
        for p in sorted((root / d).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root))] = hashlib.md5(p.read_bytes()).hexdigest()
    return out
