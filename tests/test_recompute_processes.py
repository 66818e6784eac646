"""Paths, processes and file times of the recompute layer (issue 18, items 3 and 5; docs/dvc.md).

Real processes throughout: the real job wrapper (``python -m nht.recompute``) running a sleeping
child, killed with SIGKILL; the real snakemake on a two-rule Snakefile whose shell commands go
through the wrapper (seconds, no training), killed with SIGKILL; the real dvc on the results
directory given as an absolute path through a symlink, and outside the repository.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dvc_helpers import SNAKEMAKE, TINY_CONFIG, dvc, env, make_repo, planned, snakemake  # noqa: E402

from nht.recompute.publish import finish  # noqa: E402

PY = sys.executable
GONE_WITHIN_S = 30          # a deadline for polling, not a measured time: the kernel acts at once
TAG = {"stage": "sleeper@", "rule": "sleeper", "wildcards": {}, "definition": "d",
       "records": "records", "outputs": ["out.txt"]}
# the child writes its pid, then sleeps SLEEP seconds, then writes out.txt
CHILD = ("import os, sys, time; open('child.pid', 'w').write(str(os.getpid())); "
         "time.sleep(float(sys.argv[1])); open('out.txt', 'w').write('done')")


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (a zombie has ended; only its entry is left)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_until(cond, what: str, timeout: float = GONE_WITHIN_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def read_pid(path: Path) -> int:
    wait_until(lambda: path.exists() and path.read_text().strip(), f"{path} written", timeout=120)
    return int(path.read_text())


def wrapper(cwd: Path, sleep: float, tag: dict = TAG, **extra_env) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "nht.recompute", json.dumps(tag), "job.log", "--", PY, "-c", CHILD,
                             str(sleep)], cwd=cwd, env=env(**extra_env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture
def no_orphans():
    """Pids a test started; any still alive at the end are killed (and fail the test there)."""
    pids: list[int] = []
    yield pids
    left = [p for p in pids if alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes outlived the test: {left}"


# ----------------------------------------------------------------------------- the wrapper

def test_kill_9_of_the_wrapper_kills_its_command(tmp_path, no_orphans):
    w = wrapper(tmp_path, 600)
    child = read_pid(tmp_path / "child.pid")
    no_orphans.append(child)
    assert alive(child)
    w.kill()                                              # SIGKILL: the wrapper runs no code
    w.wait()
    wait_until(lambda: not alive(child), f"the wrapper's child {child} is gone")
    assert not (tmp_path / "records").exists()           # a killed job writes no record


def test_a_second_wrapper_of_a_running_job_refuses_and_names_it(tmp_path, no_orphans):
    first = wrapper(tmp_path, 600)
    child = read_pid(tmp_path / "child.pid")
    no_orphans.append(child)
    (tmp_path / "child.pid").unlink()
    second = wrapper(tmp_path, 0, NHT_JOB_LOCK_WAIT_S="0.5")
    _, err = second.communicate(timeout=120)
    assert second.returncode != 0
    assert "already running" in err and f"command pid {child}" in err and f"wrapper pid {first.pid}" in err, err
    assert not (tmp_path / "child.pid").exists()         # its command never started
    first.kill()
    first.wait()
    # the lock goes with the last of the wrapper and its command: a third run waits for it, then runs
    third = wrapper(tmp_path, 0, NHT_JOB_LOCK_WAIT_S="120")
    out, err = third.communicate(timeout=300)
    assert third.returncode == 0, err
    assert (tmp_path / "out.txt").read_text() == "done"
    assert json.loads((tmp_path / "records" / "sleeper@.json").read_text())["outputs"]["out.txt"]


def test_future_dated_input_is_redated_and_its_content_kept(tmp_path):
    (tmp_path / "in.txt").write_text("input bytes")
    future = time.time() + 86400
    os.utime(tmp_path / "in.txt", (future, future))
    tag = dict(TAG, stage="copy@")
    proc = subprocess.run([PY, "-m", "nht.recompute", json.dumps(tag), "job.log", "in.txt", "--",
                           "cp", "in.txt", "out.txt"], cwd=tmp_path, env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert os.stat(tmp_path / "in.txt").st_mtime <= time.time()
    assert (tmp_path / "in.txt").read_text() == "input bytes"
    assert "re-dated input in.txt" in (tmp_path / "job.log").read_text()


# ----------------------------------------------------------------------------- real snakemake

SNAKEFILE = '''\
import json
TAG = json.dumps({tag!r})
rule all:
    input: "out.txt"
rule sleeper:
    input: "in.txt"
    output: "out.txt"
    log: "job.log"
    params: nht=TAG, child={child!r}, sleep=config.get("sleep", 600), tail="; true" if config.get("shell_stays") else ""
    shell: "python -m nht.recompute {{params.nht:q}} {{log:q}} {{input:q}} -- python -c {{params.child:q}} {{params.sleep}}{{params.tail}}"
'''


def tiny_workflow(path: Path) -> Path:
    path.mkdir()
    (path / "Snakefile").write_text(SNAKEFILE.format(tag=dict(TAG, outputs=["out.txt"]), child=CHILD))
    (path / "in.txt").write_text("input")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("shell_stays", [False, True], ids=["bash-execs-the-wrapper", "bash-stays-between"])
def test_kill_9_of_snakemake_stops_the_whole_chain_and_unlock_is_the_one_step_after(tmp_path, shell_stays,
                                                                                    no_orphans):
    p = tiny_workflow(tmp_path / "wf")
    sm = subprocess.Popen([SNAKEMAKE, "--cores", "1", "--config", f"shell_stays={shell_stays}"], cwd=p, env=env(),
                          text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    child = read_pid(p / "child.pid")
    no_orphans.append(child)
    lock = next((p / ".nht" / "locks").glob("*.lock")).read_text()
    wrapper_pid = int(lock.split("wrapper pid ")[1].split()[0])
    no_orphans.append(wrapper_pid)
    sm.kill()                                            # kill -9 snakemake
    out = sm.communicate(timeout=60)[0]
    wait_until(lambda: not alive(child) and not alive(wrapper_pid),
               f"the job's command {child} and wrapper {wrapper_pid} are gone")
    assert "snakemake --unlock" in out + (p / "job.log").read_text()
    (p / "child.pid").unlink()
    # Snakemake's lock outlived it (Snakemake has no stale-lock detection): the one step is --unlock
    again = snakemake(p, "--cores", "1", "--config", "sleep=0", check=False)
    assert again.returncode != 0 and "--unlock" in again.stdout, again.stdout[-3000:]
    snakemake(p, "--unlock")
    snakemake(p, "--cores", "1", "--config", "sleep=0")
    assert (p / "out.txt").read_text() == "done"


@pytest.mark.slow
def test_future_dated_input_runs_under_snakemake(tmp_path):
    """Snakemake touches a job's outputs to now and refuses them when an input is newer."""
    p = tiny_workflow(tmp_path / "wf")
    future = time.time() + 86400
    os.utime(p / "in.txt", (future, future))
    proc = snakemake(p, "--cores", "1", "--config", "sleep=0", check=False)
    assert proc.returncode == 0 and "clock skew" not in proc.stdout, proc.stdout[-3000:]
    assert (p / "out.txt").read_text() == "done"
    assert "Nothing to be done" in snakemake(p, "--cores", "1", "--config", "sleep=0").stdout


# ----------------------------------------------------------------------------- results directory paths

@pytest.mark.slow
def test_absolute_path_through_a_symlink_is_snapshotted_inside_the_repo(tmp_path):
    repo = tmp_path / "repo"
    make_repo(repo, TINY_CONFIG.replace("results_dir: results", f"results_dir: {repo}/results"))
    (repo / "store" / "results").mkdir(parents=True)
    (repo / "results").symlink_to("store/results")
    proc = snakemake(repo, "--cores", "2")
    assert "DVC snapshot of data, store/results, logs" in proc.stdout, proc.stdout[-3000:]
    assert (repo / "store" / "results.dvc").exists()
    assert "up to date" in dvc(repo, "status").stdout
    assert planned(repo) == {}


@pytest.mark.slow
def test_results_outside_the_repo_is_named_with_the_reason(tmp_path):
    repo = make_repo(tmp_path / "repo")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (repo / "results").symlink_to(outside)
    for d in (repo / "data", repo / "logs", outside):
        d.mkdir(exist_ok=True)
        (d / "f.txt").write_text(d.name)
    proc = subprocess.run([PY, "-c", "from nht.recompute.publish import finish; "
                           "finish({'results_dir': 'results', 'data_dir': 'data'}, {}, [])"],
                          cwd=repo, env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "results is not snapshotted into DVC" in proc.stderr and "outside this DVC repository" in proc.stderr
    assert str(outside) in proc.stderr and "dvc cache dir" in proc.stderr
    assert (repo / "data.dvc").exists() and (repo / "logs.dvc").exists() and not (repo / "results.dvc").exists()


def test_quarantine_of_absolute_paths_moves_them(tmp_path):
    """A stale job's outputs recorded under an absolute results_dir really leave their place."""
    from nht.recompute.decide import Decision
    from nht.recompute.records import write_record

    out = tmp_path / "results" / "x.json"
    out.parent.mkdir()
    out.write_text("{}")
    write_record(tmp_path / "results" / ".records" / "r@.json",
                 {"stage": "r@", "rule": "r", "definition": "d", "code": "", "inputs": {},
                  "outputs": {str(out): "0"}, "forced_by": ".nht/force/r@/old"})
    finish({"dvc": {"enabled": False}}, {"r@": Decision("r@", "stale", "test", {}, ".nht/force/r@/new")},
           [str(tmp_path / "results" / ".records")], root=tmp_path)
    assert not out.exists()
    assert list((tmp_path / ".nht" / "quarantine").rglob("x.json"))
