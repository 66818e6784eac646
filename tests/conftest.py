"""Shared fixtures: the repo root, a tiny modular config, and a runner for the real snakemake."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def tiny_modular(**overrides) -> dict:
    """A modular experiment small enough to train in a second or two on one core."""
    exp = {"kind": "modular", "p": 11, "train_frac": 0.7,
           "model": {"name": "mlp", "embed_dim": 8, "hidden": 32},
           "lr": 0.01, "weight_decay": [0.5, 1.0], "init_scale": [1, 3],
           "max_steps": 300, "eval_every": 20, "stop_margin": 40}
    exp.update(overrides)
    return exp


def copy_workflow(dest: Path, config: dict) -> Path:
    """Copy the Snakefile and workflow/ into ``dest`` and write ``config`` as its config.yaml."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Snakefile", dest / "Snakefile")
    for name in ("workflow", "profiles"):
        shutil.copytree(REPO / name, dest / name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    with open(dest / "config.yaml", "w") as fh:
        yaml.safe_dump(config, fh)
    return dest


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture
def tiny_config() -> dict:
    return {"experiments": {"tiny": tiny_modular()}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def moto_server(tmp_path):
    """A real S3 server (moto) on loopback; skipped without moto[server], except under CI=true."""
    moto_bin = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if moto_bin is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("moto[server] is not installed but CI=true: the S3 remote test must run in CI")
        pytest.skip("moto[server] not installed (pip install 'moto[server]'): S3 remote not tested")
    port = _free_port()
    proc = subprocess.Popen([moto_bin, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(tmp_path / "moto.log", "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("moto_server did not start: " + (tmp_path / "moto.log").read_text())
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


_RULE_START = re.compile(r"^(?:rule|checkpoint)\s+(\w+)\s*:", re.M)


def rule_sources(paths) -> dict[str, str]:
    """Normalised source block of every rule in the given Snakemake files (name -> text): the tests
    read the rules' shell commands as written (nht itself asks Snakemake, nht.recompute.decide)."""
    blocks: dict[str, str] = {}
    for path in paths:
        text = Path(path).read_text()
        starts = list(_RULE_START.finditer(text))
        for m in starts:
            body = []
            for line in text[m.end():].splitlines()[1:]:
                if line.strip() and not line[0].isspace() and not line.lstrip().startswith("#"):
                    break                                   # next top-level statement
                code = re.sub(r"(^|\s)#.*$", "", line).strip()   # comments (not inside f-strings' {})
                if code:
                    body.append(" ".join(code.split()))
            blocks[m.group(1)] = "\n".join(body)
    return blocks
