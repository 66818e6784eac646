"""Run image experiments through the real ``snakemake`` with a minimal stand-alone Snakefile.

It defines what the project Snakefile provides to ``workflow/rules/images.smk`` (validated ``config``,
CELLS, JOBS, JOB_OF, PY, R, D, experiments_of_kind) and asks for every image experiment's
``experiment_summary.json``. Used by the tests and for CPU-scale measurements, e.g.::

    .venv/bin/python benchmarks/images_harness.py --config workflow/presets/cifar10-cpu.yaml \
        --workdir /tmp/cifar10-cpu --cores 2

Relative dataset paths in the config are resolved against the working directory, so give the
workdir absolute archive paths (``--archive`` rewrites every local-archive path).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent

SNAKEFILE = """\
import sys
sys.path.insert(0, {repo!r})
from nht.config import validate_config, cell_index
validate_config(config)
CELLS, JOBS, JOB_OF = cell_index(config)
PY = sys.executable
R = config["results_dir"]
D = config["data_dir"]

def experiments_of_kind(kind):
    return [n for n, e in config["experiments"].items() if e["kind"] == kind]

include: {rules!r}

rule all:
    input: image_experiment_summary_files()
"""


def write_workflow(workdir: str | Path, config: dict) -> Path:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "Snakefile").write_text(SNAKEFILE.format(
        repo=str(REPO), rules=str(REPO / "workflow" / "rules" / "images.smk")))
    cfg = workdir / "config.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    return cfg


def run(workdir: str | Path, config: dict, cores: int = 2, extra: list[str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    cfg = write_workflow(workdir, config)
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--snakefile", "Snakefile", "--configfile",
           str(cfg.name), "--cores", str(cores), "--resources", "gpu=0", *(extra or [])]
    # rules may call a bare `python`: put this interpreter's bin directory first on PATH
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=check, env=env)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--archive", default=None, help="replace every dataset.archive with this path")
    p.add_argument("--only", nargs="*", default=None, help="keep only these experiments")
    a = p.parse_args(argv)
    config = yaml.safe_load(Path(a.config).read_text())
    config["experiments"] = {k: v for k, v in config["experiments"].items()
                             if v["kind"] == "image" and (a.only is None or k in a.only)}
    if a.archive:
        for exp in config["experiments"].values():
            if "archive" in exp.get("dataset", {}):
                exp["dataset"]["archive"] = str(Path(a.archive).resolve())
    t0 = time.monotonic()
    res = run(a.workdir, config, a.cores, check=False)
    print(res.stdout[-4000:], res.stderr[-8000:], sep="\n")
    print(f"snakemake exit {res.returncode} after {time.monotonic() - t0:.1f} s")
    sys.exit(res.returncode)


if __name__ == "__main__":
    main()
