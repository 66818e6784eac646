"""Run a config's image experiments through the real ``snakemake`` and the project's own Snakefile.

The Snakefile, ``workflow/`` and ``profiles/`` are copied into ``--workdir`` with a config holding
only the image experiments (``--only`` narrows them), and snakemake is asked for every image
experiment's ``experiment_summary.json`` (so modular work and the cross-experiment summary are not
built). For CPU-scale measurements, e.g.::

    .venv/bin/python benchmarks/images_harness.py --config workflow/presets/cifar10-cpu.yaml \
        --workdir /tmp/cifar10-cpu --cores 2

Relative dataset paths in the config are resolved against the working directory, so give the
workdir absolute archive paths (``--archive`` rewrites every local-archive path).

``--smoke`` (the test suite) runs :data:`SMOKE_CONFIG` (one digits cell, 100 train / 50 test images,
1 epoch) in a temporary working directory, removed afterwards, and prints its experiment summary's
scalar entries and keys.

(Before issue 18 this harness wrote its own minimal Snakefile around ``workflow/rules/images.smk``;
that file now needs the recompute layer and the science rules, so the harness uses the real one.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent

#: --smoke: one image cell of sklearn's digits (bundled, nothing to fetch), 1 epoch
SMOKE_CONFIG = {"experiments": {"smoke": {
    "kind": "image", "dataset": {"name": "digits", "source": "sklearn", "n_train": 100, "n_test": 50},
    "rho": 1.0, "border": 2, "lr": 0.001, "weight_decay": 0.1, "seed": 0,
    "model": {"name": "simple_cnn", "width_mult": 0.25}, "epochs": 1, "batch_size": 50}}}


def write_workflow(workdir: str | Path, config: dict) -> Path:
    """Copy the workflow into ``workdir`` and write ``config`` as its config.yaml; returns that path."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Snakefile", workdir / "Snakefile")
    for name in ("workflow", "profiles"):
        shutil.copytree(REPO / name, workdir / name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    cfg = workdir / "config.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    return cfg


def targets(config: dict) -> list[str]:
    """Every image experiment's summary, relative to the working directory."""
    results = config.get("results_dir", "results")
    return [f"{results}/{name}/experiment_summary.json" for name, exp in config["experiments"].items()
            if exp["kind"] == "image"]


def run(workdir: str | Path, config: dict, cores: int = 2, extra: list[str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    cfg = write_workflow(workdir, config)
    # targets first: --configfile and --resources take several values
    cmd = [str(Path(sys.executable).parent / "snakemake"), *targets(config), "--configfile", str(cfg.name),
           "--cores", str(cores), "--resources", "gpu=0", *(extra or [])]
    # rules may call a bare `python`: put this interpreter's bin directory first on PATH
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=check, env=env)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="config file (required unless --smoke)")
    p.add_argument("--workdir", help="working directory (required unless --smoke)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--archive", default=None, help="replace every dataset.archive with this path")
    p.add_argument("--only", nargs="*", default=None, help="keep only these experiments")
    p.add_argument("--smoke", action="store_true", help="run SMOKE_CONFIG in a temporary directory (tests)")
    a = p.parse_args(argv)
    if a.smoke:
        config, workdir = SMOKE_CONFIG, Path(tempfile.mkdtemp(prefix="nht-images-smoke-"))
    elif not a.config or not a.workdir:
        p.error("--config and --workdir are required (or --smoke)")
    else:
        config, workdir = yaml.safe_load(Path(a.config).read_text()), Path(a.workdir)
    config["experiments"] = {k: v for k, v in config["experiments"].items()
                             if v["kind"] == "image" and (a.only is None or k in a.only)}
    if not config["experiments"]:
        sys.exit("no image experiment selected")
    if a.archive:
        for exp in config["experiments"].values():
            if "archive" in exp.get("dataset", {}):
                exp["dataset"]["archive"] = str(Path(a.archive).resolve())
    t0 = time.monotonic()
    try:
        res = run(workdir, config, a.cores, check=False)
        print(res.stdout[-4000:], res.stderr[-8000:], sep="\n")
        print(f"snakemake exit {res.returncode} after {time.monotonic() - t0:.1f} s")
        if a.smoke and res.returncode == 0:
            doc = json.loads((workdir / targets(config)[0]).read_text())
            print(json.dumps({k: v for k, v in doc.items() if not isinstance(v, (dict, list))}, indent=1))
            print("summary keys:", ", ".join(sorted(doc)))
    finally:
        if a.smoke:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(res.returncode)


if __name__ == "__main__":
    main()
