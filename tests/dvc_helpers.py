"""Helpers of the recompute tests (tests/test_recompute*.py): throw-away git + DVC repositories
holding a copy of the real workflow and a tiny config, the real git, dvc and snakemake, and small
parsers of Snakemake's output."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
DVC = str(BIN / "dvc")

TINY_CONFIG = """\
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
    figure_cells_max: 48
    batch_over: []
"""


def sigint_as_in_a_terminal() -> None:
    """``preexec_fn`` of a process a test interrupts with SIGINT: the signal's default action, as
    in a terminal. A script that starts the tests in the background (``cmd &``) leaves SIGINT
    ignored, children inherit that, and the Ctrl-C would never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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


def make_repo(path: Path, config: str = TINY_CONFIG) -> Path:
    """A git + DVC repository at ``path`` with a copy of the real workflow and nht, committed.

    Its jobs run the copy's nht (PYTHONPATH is set by :func:`env` callers through ``cwd``: the
    copy is first on sys.path because ``python -m`` runs from the working directory)."""
    path.mkdir(parents=True)
    shutil.copytree(REPO / "nht", path / "nht", ignore=_ignore)
    shutil.copytree(REPO / "workflow", path / "workflow", ignore=_ignore)
    shutil.copytree(REPO / "profiles", path / "profiles", ignore=_ignore)
    shutil.copyfile(REPO / "Snakefile", path / "Snakefile")
    for name in (".gitignore", ".dvcignore"):
        shutil.copyfile(REPO / name, path / name)
    (path / ".dvc").mkdir()
    (path / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    (path / ".dvc" / "config").write_text("[core]\n    remote = shared\n"
                                          "['remote \"shared\"']\n    url = ../../storage\n")
    (path / "config.yaml").write_text(config)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "workflow")
    return path


def commit_record(path: Path, message: str = "record") -> None:
    """What a user does after a run: commit the DVC pointers, dvc.yaml and the config to git."""
    git(path, "add", "-A")
    git(path, "commit", "-qm", message)


def planned(cwd, *args) -> dict[str, int]:
    """Rule -> number of jobs a dry run plans ({} when there is nothing to do; nht_force and all
    are left out)."""
    out = snakemake(cwd, "-n", "--cores", "1", *args).stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("\n\n")[0]
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    for name in ("total", "all", "nht_force"):
        jobs.pop(name, None)
    return jobs


def tree_digest(root: Path, *dirs: str, skip=(".snakemake",)) -> dict[str, str]:
    """md5 of every file under the given directories (relative path -> md5)."""
    out = {}
    for d in dirs:
        for p in sorted((root / d).rglob("*")):
            rel = p.relative_to(root)
            if p.is_file() and not any(part in skip for part in rel.parts):
                out[str(rel)] = hashlib.md5(p.read_bytes()).hexdigest()
    return out
