"""DVC under Snakemake (issue 5) on a toy workflow with the real one's rule structure and path
templates, workflow/rules/dvc.smk and nht.dvc_sync, run by the real git, dvc and snakemake.
The toy's stages take milliseconds, so each behaviour is cheap to check precisely:

3. touch (incl. a 2.1 MB file) recomputes nothing; a content change recomputes that stage's
   consumers and their downstream only;    code and config changes likewise, on a fresh clone
4. (toy part) a config value change recomputes only the stages that read it, on a fresh clone;
5. --cores 4 with DVC's repository lock held by another process still succeeds;
6. a failing and an interrupted run leave the record consistent: finished jobs are not rerun;
7. shared-directory remote out of the box; S3 against a real moto server on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dvc_helpers import (DVC, SNAKEMAKE, commit_record, dvc, env, git, make_repo, planned,  # noqa: E402
                         snakemake, tree_digest)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    """One toy repository after a first full run (copied, times and all, by each test)."""
    p = make_repo(tmp_path_factory.mktemp("seed") / "repo")
    snakemake(p, "--cores", "2")
    return p


@pytest.fixture
def repo(seed, tmp_path):
    p = tmp_path / "repo"
    shutil.copytree(seed, p, symlinks=True)
    return p


def _lock(p: Path) -> dict:
    import yaml
    return yaml.safe_load((p / "dvc.lock").read_text())["stages"]


def test_first_run_records_everything_and_dvc_agrees(repo):
    stages = _lock(repo)
    rules = sorted({n.split("-")[0] for n in stages})
    assert rules == ["extract_norms", "fit_modular", "make_modular_data", "summary", "train_modular"]
    assert len(stages) == 1 + 3 + 3 + 1 + 1
    assert "Data and pipelines are up to date" in dvc(repo, "status").stdout


def test_touch_recomputes_nothing_content_change_recomputes_downstream(repo):
    dataset = next((repo / "data" / "modular").glob("*.npz"))
    assert dataset.stat().st_size > 1_000_000          # over Snakemake's checksum limit
    time.sleep(0.05)
    for p in list((repo / "data").rglob("*")) + list((repo / "results").rglob("*")):
        if p.is_file():
            p.touch()
    dataset.touch()                                     # the dataset is now the newest file
    out = snakemake(repo, "--cores", "2").stdout
    assert "Nothing to be done" in out

    # change the content of the dataset: its three training jobs and everything downstream rerun
    with open(dataset, "ab") as fh:
        fh.write(b"changed")
    plan = planned(repo)
    assert sorted(plan) == ["extract_norms", "fit_modular", "summary", "train_modular"]
    assert len(plan["train_modular"]) == 3 and len(plan["extract_norms"]) == 3
    snakemake(repo, "--cores", "2")
    assert "Data and pipelines are up to date" in dvc(repo, "status").stdout


def test_content_change_of_one_job_output(repo):
    hist = sorted((repo / "results" / "toy" / "jobs").glob("*/history.csv"))[0]
    hist.write_text(hist.read_text() + "99,0,0,0\n")
    plan = planned(repo)
    # that job's cell, then the aggregates; neither training nor the other cells
    assert sorted(plan) == ["extract_norms", "fit_modular", "summary"]
    assert len(plan["extract_norms"]) == 1
    assert hist.parent.name.split("-")[0] in plan["extract_norms"][0]   # the cell of that job


def test_fresh_clone_pull_then_params_and_code_changes(repo, tmp_path):
    dvc(repo, "push")                                   # default shared-directory remote
    assert (tmp_path / "nht-dvc-storage").is_dir()      # ../nht-dvc-storage, out of the box
    commit_record(repo)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    dvc(clone, "pull")
    assert not (clone / ".snakemake").exists()
    assert tree_digest(clone, "data", "results") == tree_digest(repo, "data", "results")
    assert planned(clone) == {}

    # a config value read only by the per-experiment stages: fit + summary, nothing else
    cfg = (clone / "config.yaml").read_text()
    (clone / "config.yaml").write_text(cfg.replace("max_steps: 100", "max_steps: 100\n    figure_cells_max: 7"))
    assert sorted(planned(clone)) == ["fit_modular", "summary"]
    (clone / "config.yaml").write_text(cfg)

    # code of one stage: that stage and downstream
    fit = clone / "nht" / "toy_norms.py"
    fit.write_text(fit.read_text() + "\n# a change\n")
    plan = planned(clone)
    assert sorted(plan) == ["extract_norms", "fit_modular", "summary"] and len(plan["extract_norms"]) == 3
    # a change of one cell's value: that cell's stages and the aggregates (also on this clone)
    fit.write_text(fit.read_text().replace("\n# a change\n", ""))
    (clone / "config.yaml").write_text(cfg.replace("weight_decay: [0.5, 1.0, 2.0]", "weight_decay: [0.5, 1.0, 3.0]"))
    plan = planned(clone)
    assert sorted(plan) == ["extract_norms", "fit_modular", "summary", "train_modular"]
    assert len(plan["train_modular"]) == 1 and "wd3" in plan["train_modular"][0]
    assert len(plan["extract_norms"]) == 1 and "wd3" in plan["extract_norms"][0]
    snakemake(clone, "--cores", "2")
    assert "Data and pipelines are up to date" in dvc(clone, "status").stdout
    # the full run dropped the stages of the removed cell from the record
    assert not [n for n in _lock(clone) if "wd2" in n]


def test_parallel_run_does_not_meet_dvc_lock(tmp_path):
    p = make_repo(tmp_path / "repo", config=(
        "experiments:\n  toy:\n    kind: modular\n    p: 7\n    weight_decay: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]\n"
        "    seed: [0, 1]\n    max_steps: 10\n    batch_over: []\n"))
    # hold DVC's repository lock the way a concurrent `dvc push` would, for the whole run
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from dvc.repo import Repo; r = Repo('.');\n"
         "with r.lock:\n    print('locked', flush=True); time.sleep(120)"],
        cwd=p, env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = snakemake(p, "--cores", "4").stdout
        assert "steps (100%) done" in out
    finally:
        holder.kill()
        holder.wait()
    assert len(_lock(p)) == 1 + 12 + 12 + 1 + 1
    assert "Data and pipelines are up to date" in dvc(p, "status").stdout


def test_failed_run_keeps_finished_jobs(tmp_path):
    p = make_repo(tmp_path / "repo")
    r = snakemake(p, "--cores", "1", "--keep-going", check=False, NHT_TOY_FAIL="wd1_")
    assert r.returncode != 0
    stages = _lock(p)
    assert len([n for n in stages if n.startswith("train_modular")]) == 2
    assert len([n for n in stages if n.startswith("extract_norms")]) == 2
    assert not [n for n in stages if n.startswith(("fit_modular", "summary"))]
    assert "Data and pipelines are up to date" in dvc(p, "status").stdout   # record is consistent
    shutil.rmtree(p / ".snakemake")                     # the record, not Snakemake's metadata
    plan = planned(p)
    assert sorted(plan) == ["extract_norms", "fit_modular", "summary", "train_modular"]
    assert len(plan["train_modular"]) == 1 and "wd1_" in plan["train_modular"][0]


def _default_sigint():
    # A shell that starts a command in the background (`cmd &`) makes it ignore SIGINT, and that
    # is inherited; give the run the default disposition so Ctrl-C works however pytest started.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupted_run_keeps_finished_jobs(tmp_path):
    p = make_repo(tmp_path / "repo")
    # the third training job hangs, so the interrupt always lands while it runs (no timing race)
    proc = subprocess.Popen([SNAKEMAKE, "--cores", "1"], cwd=p,
                            env=env(NHT_TOY_SLEEP="0.5", NHT_TOY_HANG_AFTER="2"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=_default_sigint)
    # wait until two training jobs have finished, then Ctrl-C
    deadline = time.time() + 60
    while time.time() < deadline:
        if len(list((p / "results" / "toy" / "jobs").glob("*/meta.json"))) >= 2:
            break
        time.sleep(0.1)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)   # Ctrl-C in a terminal: the whole foreground process group
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, out
    stages = _lock(p)
    finished = [n for n in stages if n.startswith("train_modular")]
    assert 2 <= len(finished) < 3, out
    assert "Data and pipelines are up to date" in dvc(p, "status").stdout
    plan = planned(p)
    assert len(plan.get("train_modular", [])) == 3 - len(finished)


def test_off_switch(tmp_path):
    p = make_repo(tmp_path / "repo")
    cfg = (p / "config.yaml").read_text()
    (p / "config.yaml").write_text("dvc: {enabled: false}\n" + cfg)
    snakemake(p, "--cores", "2")
    assert not (p / "dvc.lock").exists() and not (p / "dvc.yaml").exists()


# ----------------------------------------------------------------------------- S3 (moto)

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def moto_server(tmp_path):
    moto_bin = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if moto_bin is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("moto[server] is not installed but CI=true: the S3 remote test must run in CI")
        pytest.skip("moto[server] not installed (pip install 'moto[server]'): S3 remote not tested")
    port = _free_port()
    proc = subprocess.Popen([moto_bin, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(tmp_path / "moto.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
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
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_s3_remote_on_moto(repo, tmp_path, moto_server):
    creds = {"AWS_ACCESS_KEY_ID": "testing-key", "AWS_SECRET_ACCESS_KEY": "testing-secret",
             "AWS_DEFAULT_REGION": "us-east-1"}
    import boto3
    boto3.client("s3", endpoint_url=moto_server, aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
                 region_name="us-east-1").create_bucket(Bucket="nht")
    # the remote is committed; the endpoint of this machine goes to .dvc/config.local (untracked)
    dvc(repo, "remote", "add", "s3", "s3://nht/store")
    dvc(repo, "remote", "modify", "--local", "s3", "endpointurl", moto_server)
    out = dvc(repo, "push", "-r", "s3", **creds).stdout
    assert "pushed" in out
    assert "Everything is up to date" in dvc(repo, "push", "-r", "s3", **creds).stdout
    committed = (repo / ".dvc" / "config").read_text()
    assert "testing" not in committed and "127.0.0.1" not in committed
    assert ".dvc/config.local" not in git(repo, "ls-files").stdout
    git(repo, "add", ".dvc/config")
    commit_record(repo)

    clone = tmp_path / "clone-s3"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    dvc(clone, "remote", "modify", "--local", "s3", "endpointurl", moto_server)
    dvc(clone, "pull", "-r", "s3", **creds)
    assert tree_digest(clone, "data", "results") == tree_digest(repo, "data", "results")
    assert planned(clone) == {}
