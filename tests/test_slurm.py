"""The Slurm profile against a real Slurm: a tiny experiment through sbatch equals a local run.

CI (.ci/run, as root) starts a one-node cluster with .ci/services/slurm.sh before the tests; there
this test must run, so with CI=true a missing cluster is a failure, not a skip. Elsewhere it skips
unless a Slurm whose node is this host is up (jobs must see the test's temporary directories;
NHT_SLURM_TMPDIR may name a directory shared with the compute nodes instead).

What it checks: `snakemake --profile workflow/profiles/slurm` really submits through sbatch (Slurm
job ids in Snakemake's log, per-job Slurm logs, the jobs known to slurmctld), finishes, and its
per-cell results (history.csv, norms.json) and results/summary.json equal those of
`snakemake --cores 2` on the same config; summary.json holds finite numbers.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PROFILE = "workflow/profiles/slurm"
RUN_TIMEOUT_S = 600  # per snakemake run; `timeout -k 10` so a hung run cannot eat CI's budget

# Two training jobs (weight_decay is not batched) of one cell each, p=7, MLP, 200 steps.
TINY_CONFIG = """\
device: cpu
results_dir: results
data_dir: data
experiments:
  tiny:
    kind: modular
    description: "Slurm test: p=7 MLP, 2 cells in 2 training jobs"
    op: add
    p: 7
    train_frac: 0.6
    model: {name: mlp, embed_dim: 8, hidden: 32}
    lr: 0.01
    weight_decay: [0.1, 1.0]
    init_scale: 1
    seed: 0
    batch_size: full
    max_steps: 200
    eval_every: 20
    stop_margin: 20
    batch_over: [lr, init_scale, seed]
    threads: 1
"""

# Fields that legitimately differ between two runs (timings, hosts, dates, job ids).
VOLATILE = re.compile(r"(?i)(wall|seconds|elapsed|duration|time_s|timestamp|date|host|pid|slurm|"
                      r"speed|per_s|steps_s|_at$|started|created|provenance|version|python|platform|user|path|dir)")


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _slurm_problem() -> str | None:
    """None when a usable Slurm is up, else why not."""
    for tool in ("sinfo", "squeue", "sbatch", "scontrol", "scancel"):
        if shutil.which(tool) is None:
            return f"`{tool}` not on PATH (Slurm client tools not installed)"
    try:
        ping = _run(["scontrol", "ping"], timeout=20)
    except subprocess.TimeoutExpired:
        return "`scontrol ping` timed out"
    if ping.returncode != 0 or "UP" not in ping.stdout:
        first = ((ping.stdout + ping.stderr).strip().splitlines() or ["no output"])[0]
        return f"no slurmctld answers `scontrol ping` ({first.strip()[:200]})"
    if os.environ.get("NHT_SLURM_TMPDIR"):
        return None
    node = socket.gethostname().split(".")[0]
    st = _run(["sinfo", "-h", "-N", "-n", node, "-o", "%T"], timeout=20)
    state = st.stdout.strip().splitlines()[0] if st.stdout.strip() else ""
    if not state:
        return (f"this host ({node}) is not a node of the running Slurm, so jobs would not see "
                "local temporary directories; set NHT_SLURM_TMPDIR to a directory shared with the nodes")
    if state.rstrip("*~#!%$@^-") not in {"idle", "mixed", "allocated", "completing"}:
        return f"node {node} is {state!r}, not schedulable"
    return None


def _require_slurm() -> None:
    problem = _slurm_problem()
    if problem:
        if _ci():
            pytest.fail(f"CI=true but no usable Slurm: {problem}. .ci/run should have started one "
                        "with .ci/services/slurm.sh (as root); see its output")
        pytest.skip(f"no usable Slurm here: {problem}. CI starts one with .ci/services/slurm.sh")


def _workdir(base: Path, name: str) -> Path:
    """A copy of the workflow (Snakefile, workflow/, tiny config); nht comes from the installed package."""
    root = Path(os.environ.get("NHT_SLURM_TMPDIR") or base)
    wd = root / name
    if wd.exists():
        shutil.rmtree(wd)
    wd.mkdir(parents=True)
    shutil.copy2(REPO / "Snakefile", wd / "Snakefile")
    shutil.copytree(REPO / "workflow", wd / "workflow",
                    ignore=shutil.ignore_patterns("__pycache__", ".snakemake"))
    (wd / "tiny.yaml").write_text(TINY_CONFIG)
    # also the default config file: a Snakefile `configfile:` would otherwise merge in the full grid
    (wd / "config.yaml").write_text(TINY_CONFIG)
    return wd


def _snakemake(wd: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    cmd = ["timeout", "-k", "10", str(RUN_TIMEOUT_S), sys.executable, "-m", "snakemake",
           "--configfile", "tiny.yaml", *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=wd, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S + 60)
    wall = time.monotonic() - t0
    (wd / "snakemake.out").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    return proc, wall


def _cancel_jobs_under(wd: Path) -> None:
    """scancel whatever this test submitted that is still queued or running (work dir under wd)."""
    q = _run(["squeue", "-h", "-o", "%i|%Z"], timeout=30)
    ids = [line.split("|", 1)[0] for line in q.stdout.splitlines()
           if "|" in line and line.split("|", 1)[1].startswith(str(wd))]
    if ids:
        _run(["scancel", *ids], timeout=30)


def _tail(proc: subprocess.CompletedProcess, n: int = 4000) -> str:
    return (proc.stdout + "\n" + proc.stderr)[-n:]


def _numbers(obj, key=""):
    """(key path, value) of every number in a JSON object, skipping volatile keys."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not VOLATILE.search(str(k)):
                yield from _numbers(v, f"{key}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{key}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield key, float(obj)


def _strip_volatile(obj):
    if isinstance(obj, dict):
        return {k: _strip_volatile(v) for k, v in obj.items() if not VOLATILE.search(str(k))}
    if isinstance(obj, list):
        return [_strip_volatile(v) for v in obj]
    return obj


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            return False
        if math.isnan(a) and math.isnan(b):
            return True
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def _compare_csv(a: Path, b: Path) -> None:
    import pandas as pd

    da, db = pd.read_csv(a), pd.read_csv(b)
    keep = [c for c in da.columns if not VOLATILE.search(c)]
    assert list(da.columns) == list(db.columns), f"{a.name}: columns differ"
    da, db = da[keep], db[keep]
    assert da.shape == db.shape, f"{a}: shape {da.shape} (slurm) vs {db.shape} (local)"
    pd.testing.assert_frame_equal(da, db, check_exact=False, rtol=1e-6, atol=1e-9)


def test_slurm_profile_matches_local_run(tmp_path, capsys):
    _require_slurm()
    assert (REPO / "Snakefile").is_file(), "Snakefile missing at the repository root"
    assert (REPO / PROFILE / "config.yaml").is_file()

    # ---- Slurm run, through the profile exactly as a user runs it --------------------------------
    swd = _workdir(tmp_path, "slurm")
    try:
        # status checks every second for this tiny DAG (profile: 10 s)
        sproc, s_wall = _snakemake(swd, "--profile", PROFILE,
                                   "--slurm-init-seconds-before-status-checks", "1")
    finally:
        _cancel_jobs_under(swd)
    assert sproc.returncode != 124, f"Slurm run timed out after {RUN_TIMEOUT_S} s:\n{_tail(sproc)}"
    assert sproc.returncode == 0, f"Slurm run failed (rc {sproc.returncode}):\n{_tail(sproc)}"

    # ---- it really went through sbatch ------------------------------------------------------------
    log = sproc.stdout + sproc.stderr
    job_ids = re.findall(r"submitted with SLURM jobid (\d+)", log)
    assert job_ids, f"no 'submitted with SLURM jobid' in Snakemake's log:\n{_tail(sproc)}"
    # .snakemake/slurm_logs/{rule_<rule>,group_<group>_<rules>}/[wildcards/]<jobid>.log
    train_logs = [p for p in (swd / ".snakemake" / "slurm_logs").rglob("*.log")
                  if "train_modular" in p.relative_to(swd).as_posix()]
    assert len(train_logs) >= 2, "expected a Slurm log per train_modular job (2 training jobs)"
    assert all(p.stem.isdigit() and p.stem in job_ids for p in train_logs), train_logs
    # the jobs ran on Slurm: slurmctld still knows them (MinJobAge) and they completed there
    q = _run(["squeue", "-h", "--states=all", "-o", "%i|%T|%Z", "-j", ",".join(job_ids)], timeout=30)
    states = {line.split("|")[0]: line.split("|")[1] for line in q.stdout.splitlines() if "|" in line}
    if states:  # jobs older than MinJobAge are forgotten; the logs above already prove sbatch
        assert all(s == "COMPLETED" for s in states.values()), states

    # ---- local run of the same config ---------------------------------------------------------------
    lwd = _workdir(tmp_path, "local")
    lproc, l_wall = _snakemake(lwd, "--cores", "2")
    assert lproc.returncode == 0, f"local run failed (rc {lproc.returncode}):\n{_tail(lproc)}"

    # ---- same results ------------------------------------------------------------------------------
    sres, lres = swd / "results", lwd / "results"
    s_norms = sorted(p.relative_to(sres) for p in sres.glob("*/cells/*/norms.json"))
    l_norms = sorted(p.relative_to(lres) for p in lres.glob("*/cells/*/norms.json"))
    assert len(s_norms) == 2, f"expected 2 cells, Slurm run has {s_norms}"
    assert s_norms == l_norms, f"different cells: slurm {s_norms} vs local {l_norms}"
    for rel in s_norms:
        a = json.loads((sres / rel).read_text())
        b = json.loads((lres / rel).read_text())
        assert _close(_strip_volatile(a), _strip_volatile(b)), f"{rel} differs:\n{a}\nvs\n{b}"
        _compare_csv(sres / rel.parent / "history.csv", lres / rel.parent / "history.csv")

    s_sum = json.loads((sres / "summary.json").read_text())
    l_sum = json.loads((lres / "summary.json").read_text())
    nums = list(_numbers(s_sum))
    assert nums, "results/summary.json holds no numbers"
    bad = [(k, v) for k, v in nums if not math.isfinite(v)]
    assert not bad, f"non-finite numbers in summary.json: {bad[:10]}"
    assert _close(_strip_volatile(s_sum), _strip_volatile(l_sum)), "summary.json differs from the local run"

    with capsys.disabled():
        print(f"\n[test_slurm] Slurm run {s_wall:.1f} s ({len(job_ids)} sbatch jobs), "
              f"local run {l_wall:.1f} s, overhead {s_wall - l_wall:+.1f} s")
