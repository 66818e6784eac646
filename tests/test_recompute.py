"""Recompute that can be trusted (docs/dvc.md), with the real workflow on a tiny config (p=7 MLP,
2 cells, 100 steps), the real git, dvc and snakemake, in temporary repositories.

Every scenario runs in a copy of a workspace where a full run had completed ("same workspace",
`.snakemake/` and DVC's cache included), and the main ones again in `git clone` + `dvc pull`
("clone"). Each checks the plan of `snakemake -n`, then a real run, then that nothing is left to do.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dvc_helpers import (SNAKEMAKE, commit_record, dvc, env, git, make_repo, planned,  # noqa: E402
                         sigint_as_in_a_terminal, snakemake, tree_digest)

pytestmark = pytest.mark.slow

ARTIFACTS = ("data", "results")
AGGREGATES = {"fit_modular", "science", "figures_modular", "experiment_summary_modular", "summary"}


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """The real workflow, run once, pushed to the default remote, committed to git."""
    base = tmp_path_factory.mktemp("wf")
    p = make_repo(base / "origin")
    snakemake(p, "--cores", "2")
    push1 = dvc(p, "push").stdout
    push2 = dvc(p, "push").stdout
    commit_record(p)
    return {"path": p, "base": base, "push1": push1, "push2": push2}


def workspace(origin, tmp_path) -> Path:
    """A copy of the completed workspace, file times and all (the "same workspace")."""
    dest = tmp_path / "ws"
    subprocess.run(["cp", "-a", str(origin["path"]), str(dest)], check=True)
    return dest


def clone(origin, tmp_path) -> Path:
    dest = tmp_path / "clone"
    git(origin["base"], "clone", "-q", str(origin["path"]), str(dest))
    dvc(dest, "remote", "modify", "--local", "shared", "url", str(origin["base"] / "storage"))
    dvc(dest, "pull")
    return dest


@pytest.fixture(params=["same", "clone"])
def ws(request, origin, tmp_path):
    return workspace(origin, tmp_path) if request.param == "same" else clone(origin, tmp_path)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))


def summary(p: Path) -> dict:
    return json.loads((p / "results" / "summary.json").read_text())["experiments"]["tiny"]


def run_and_settle(p: Path) -> None:
    snakemake(p, "--cores", "2")
    assert planned(p) == {}, "a second run still has work"


# ----------------------------------------------------------------------------- no-op, push, pull

def test_push_then_clone_pull_recomputes_nothing_byte_identical(origin, tmp_path):
    assert "pushed" in origin["push1"] and "Everything is up to date" in origin["push2"]
    c = clone(origin, tmp_path)
    assert not (c / ".snakemake").exists()
    assert tree_digest(c, *ARTIFACTS) == tree_digest(origin["path"], *ARTIFACTS)
    assert planned(c) == {}
    out = snakemake(c, "--cores", "all").stdout
    assert "Nothing to be done" in out, out[-3000:]
    assert tree_digest(c, *ARTIFACTS) == tree_digest(origin["path"], *ARTIFACTS)
    assert "up to date" in dvc(c, "status").stdout


def test_touch_every_file_recomputes_nothing(origin, tmp_path):
    p = workspace(origin, tmp_path)
    later = time.time() + 5
    for f in list((p / "data").rglob("*")) + list((p / "results").rglob("*")):
        os.utime(f, (later, later))
        later -= 0.01                       # upstream files end up *newer* than downstream ones
    assert planned(p) == {}


# ----------------------------------------------------------------------------- behaviour 1: config

def test_grid_value_edit_reruns_that_cell_and_aggregates(ws):
    edit(ws / "config.yaml", "weight_decay: [0.5, 1.0]", "weight_decay: [0.5, 2.0]")
    future = time.time() + 86400        # a dataset dated tomorrow: no clock-skew failure, no extra rerun
    for f in (ws / "data" / "modular").glob("*.npz"):
        os.utime(f, (future, future))
    assert planned(ws) == {"train_modular": 1, "extract_norms": 1, **{a: 1 for a in AGGREGATES}}
    run_and_settle(ws)
    assert summary(ws)["config"]["weight_decay"] == [0.5, 2.0]
    assert "up to date" in dvc(ws, "status").stdout


def test_non_id_value_reruns_only_what_reads_it(ws):
    edit(ws / "config.yaml", "figure_cells_max: 48", "figure_cells_max: 1")
    assert planned(ws) == {"figures_modular": 1, "experiment_summary_modular": 1, "summary": 1}
    run_and_settle(ws)
    assert summary(ws)["config"]["figure_cells_max"] == 1


def test_max_steps_reruns_every_training_job_not_the_dataset(ws):
    edit(ws / "config.yaml", "max_steps: 100", "max_steps: 60")
    assert planned(ws) == {"train_modular": 2, "extract_norms": 2, **{a: 1 for a in AGGREGATES}}


# ----------------------------------------------------------------------------- behaviour 2: code

def test_comment_docstring_and_format_edits_rerun_nothing(ws):
    f = ws / "nht" / "domains" / "modular" / "train.py"
    text = f.read_text()
    f.write_text('"""Edited docstring."""\n' + text.split('"""', 2)[2].replace("\n\n\n", "\n\n\n\n", 1)
                 + "\n# a comment\n")
    edit(ws / "nht" / "science" / "delay_law.py", "\n", "\n# comment\n")
    assert planned(ws) == {}


def test_real_code_edit_reruns_exactly_the_stages_that_import_it(ws):
    (ws / "nht" / "domains" / "modular" / "figures.py").write_text((ws / "nht" / "domains" / "modular" / "figures.py").read_text() + "\nEDITED = 1\n")
    assert planned(ws) == {"figures_modular": 1, "experiment_summary_modular": 1, "summary": 1}
    run_and_settle(ws)


def test_training_code_edit_reruns_training_and_downstream(origin, tmp_path):
    p = workspace(origin, tmp_path)
    (p / "nht" / "domains" / "modular" / "models.py").write_text((p / "nht" / "domains" / "modular" / "models.py").read_text() + "\nEDITED = 1\n")
    assert planned(p) == {"train_modular": 2, "extract_norms": 2, **{a: 1 for a in AGGREGATES}}


def test_rule_shell_edit_reruns_that_rule(origin, tmp_path):
    p = workspace(origin, tmp_path)
    edit(p / "workflow" / "rules" / "science.smk",
         '" --out {output.science:q} --figure-dir {params.figure_dir:q}"',
         '" --out {output.science:q} --figure-dir {params.figure_dir:q} --n-boot 999"')
    assert planned(p) == {"science": 1, "experiment_summary_modular": 1, "summary": 1}


# ----------------------------------------------------------------------------- behaviour 3: corruption

def _cell_history(p: Path) -> Path:
    return sorted((p / "results" / "tiny" / "cells").glob("*/history.csv"))[0]


def test_truncated_and_deleted_outputs_are_restored_never_used(ws):
    good = tree_digest(ws, *ARTIFACTS)
    h = _cell_history(ws)
    log = ws / "logs" / "extract_norms" / "tiny" / f"{h.parent.name}.log"
    made_by = log.read_text()
    h.write_text("".join(h.read_text().splitlines(True)[:5]))            # truncated csv
    npz = next((ws / "data" / "modular").glob("*.npz"))
    npz.write_bytes(npz.read_bytes()[:100])                              # truncated npz
    (h.parent / "norms.json").unlink()                                   # deleted json
    out = snakemake(ws, "--cores", "2").stdout
    assert "restored" in out or "restore" in out
    assert tree_digest(ws, *ARTIFACTS) == good        # same bytes everywhere: nothing used the corrupt files
    assert planned(ws) == {}
    logs = (ws / "logs").rglob("*.log")
    assert not any("BadZipFile" in f.read_text() for f in logs)
    assert made_by and log.read_text().startswith(made_by) and "restored" in log.read_text()  # log kept, restore appended


def test_corrupt_output_without_cache_copy_reruns_its_job(origin, tmp_path):
    p = workspace(origin, tmp_path)
    shutil.rmtree(p / ".dvc" / "cache")
    h = _cell_history(p)
    good = h.read_bytes()
    h.write_text("step\n")
    plan = planned(p)
    assert plan.get("extract_norms") == 1 and "train_modular" not in plan, plan
    run_and_settle(p)
    assert h.read_bytes() == good


# ----------------------------------------------------------------------------- behaviour 4: records

def test_failed_run_keeps_every_record_and_shows_nothing_stale(origin, tmp_path):
    p = workspace(origin, tmp_path)
    records = {f.name: f.read_bytes() for f in (p / "results" / ".records").glob("*.json")}
    fig = p / "nht" / "domains" / "modular" / "figures.py"
    good = fig.read_text()
    fig.write_text(good + "\nraise RuntimeError('broken on purpose')\n")
    future = time.time() + 86400        # stale outputs dated tomorrow are quarantined all the same
    for f in (p / "results").rglob("*"):
        os.utime(f, (future, future))
    proc = snakemake(p, "--cores", "2", check=False)
    assert proc.returncode != 0
    assert "broken on purpose" in proc.stdout                      # the error, not only a log path
    after = {f.name: f.read_bytes() for f in (p / "results" / ".records").glob("*.json")}
    assert set(records) <= set(after)                             # nothing dropped
    assert not (p / "results" / "summary.json").exists()           # the stale summary is not shown
    assert list((p / ".nht" / "quarantine").rglob("summary.json"))
    fig.write_text(good)
    run_and_settle(p)
    assert (p / "results" / "summary.json").exists()


def test_a_preset_run_never_erases_another_configs_records(origin, tmp_path):
    p = workspace(origin, tmp_path)
    before = {f.name for f in (p / "results" / ".records").glob("*.json")}
    other = (p / "config.yaml").read_text().replace("results_dir: results", "results_dir: results-other") \
        .replace("weight_decay: [0.5, 1.0]", "weight_decay: 3.0")
    (p / "other.yaml").write_text(other)
    snakemake(p, "--cores", "2", "--configfile", "other.yaml")
    assert before <= {f.name for f in (p / "results" / ".records").glob("*.json")}
    assert planned(p) == {}
    assert "up to date" in dvc(p, "status").stdout


# ----------------------------------------------------------------------------- behaviour 5: read-only

@pytest.mark.parametrize("flags", [["-n"], ["--report", "report.html"], ["--lint"], ["--summary"]])
def test_dry_run_report_lint_summary_change_no_file(origin, tmp_path, flags):
    p = workspace(origin, tmp_path)
    edit(p / "config.yaml", "figure_cells_max: 48", "figure_cells_max: 2")   # something is stale
    before = tree_digest(p, ".")
    times = {f: os.stat(p / f).st_mtime_ns for f in before}
    proc = snakemake(p, "--cores", "1", *flags, check=False)
    if "--report" in flags:
        (p / "report.html").unlink(missing_ok=True)
    after = tree_digest(p, ".")
    assert after == before, proc.stdout[-2000:]
    assert {f: os.stat(p / f).st_mtime_ns for f in after} == times


# ----------------------------------------------------------------------------- behaviour 6: concurrency

def test_two_concurrent_runs_and_a_push_lose_nothing(origin, tmp_path):
    p = workspace(origin, tmp_path)
    edit(p / "config.yaml", "weight_decay: [0.5, 1.0]", "weight_decay: [0.5, 1.0, 2.0]")
    runs = [subprocess.Popen([SNAKEMAKE, "--cores", "1"], cwd=p, env=env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    pusher = subprocess.Popen([sys.executable, "-m", "dvc", "push"], cwd=p, env=env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    outs = [r.communicate(timeout=600)[0] for r in runs]
    pusher.communicate(timeout=600)
    codes = [r.returncode for r in runs]
    # Snakemake's lock lets one run proceed; the other either also finishes or stops, saying why
    assert 0 in codes, outs
    for code, out in zip(codes, outs):
        assert code == 0 or "lock" in out.lower(), out[-3000:]
    assert planned(p) == {}
    assert summary(p)["config"]["weight_decay"] == [0.5, 1.0, 2.0]
    assert "up to date" in dvc(p, "status").stdout
    dvc(p, "push")


def test_interrupted_run_keeps_finished_jobs(origin, tmp_path):
    p = workspace(origin, tmp_path)
    edit(p / "config.yaml", "max_steps: 100", "max_steps: 40000")
    edit(p / "config.yaml", "stop_margin: 20", "stop_margin: 40000")
    t0 = time.time()
    proc = subprocess.Popen([SNAKEMAKE, "--cores", "1"], cwd=p, env=env(), text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=sigint_as_in_a_terminal)
    records = p / "results" / ".records"
    deadline = time.time() + 900
    while time.time() < deadline and not any(f.stat().st_mtime >= t0 for f in records.glob("train_modular@*.json")):
        time.sleep(0.2)
    done = [f for f in records.glob("train_modular@*.json") if f.stat().st_mtime >= t0]
    finished = bool(done)
    if finished:
        # the record is written just before the job's process exits; Snakemake counts the job as
        # finished (not incomplete) only after that, and then starts the next job, whose wrapper
        # opens its log: wait for that, so Ctrl-C does not land inside the finishing job
        t_rec = done[0].stat().st_mtime
        own = "logs/train_modular/tiny/" + done[0].stem.split("job=")[1] + ".log"
        while time.time() < deadline and not any(
                f.stat().st_mtime > t_rec for f in (p / "logs").rglob("*.log") if str(f.relative_to(p)) != own):
            time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)                     # Ctrl-C in a terminal
    proc.communicate(timeout=120)
    assert finished, "no training job finished within 900 s, so the interruption tests nothing"
    assert planned(p).get("train_modular") == 1           # the finished job is kept, not rerun


# ----------------------------------------------------------------------------- behaviour 9: DVC

def test_metrics_plots_params(origin, tmp_path):
    p = workspace(origin, tmp_path)
    metrics = json.loads(dvc(p, "metrics", "show", "--json").stdout)
    data = next(iter(metrics.values()))["data"]
    assert data["results/summary.json"]["data"]
    out = tmp_path / "plots"
    dvc(p, "plots", "show", "-o", str(out))
    html = (out / "index.html").read_text()
    assert "tiny_accuracy" in html and "test_acc" in html
    edit(p / "config.yaml", "lr: 0.01", "lr: 0.02")
    diff = dvc(p, "params", "diff").stdout
    assert "experiments.tiny.lr" in diff and "0.02" in diff


def test_off_switch_records_but_never_calls_dvc(tmp_path):
    p = make_repo(tmp_path / "repo")
    edit(p / "config.yaml", "results_dir: results", "dvc: {enabled: false}\nresults_dir: results")
    snakemake(p, "--cores", "2")
    assert not (p / "results.dvc").exists() and not (p / "dvc.yaml").exists()
    assert list((p / "results" / ".records").glob("*.json"))
    assert planned(p) == {}


# ----------------------------------------------------------------------------- S3 (moto)

def test_s3_remote_on_moto(origin, tmp_path, moto_server):
    creds = {"AWS_ACCESS_KEY_ID": "testing-key", "AWS_SECRET_ACCESS_KEY": "testing-secret",
             "AWS_DEFAULT_REGION": "us-east-1"}
    import boto3
    boto3.client("s3", endpoint_url=moto_server, aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
                 region_name="us-east-1").create_bucket(Bucket="nht")
    p = workspace(origin, tmp_path)
    dvc(p, "remote", "add", "s3", "s3://nht/store")          # committed: only the bucket
    dvc(p, "remote", "modify", "--local", "s3", "endpointurl", moto_server)
    assert "pushed" in dvc(p, "push", "-r", "s3", **creds).stdout
    assert "Everything is up to date" in dvc(p, "push", "-r", "s3", **creds).stdout
    committed = (p / ".dvc" / "config").read_text()
    assert "testing" not in committed and "127.0.0.1" not in committed
    commit_record(p, "s3 remote")
    c = tmp_path / "clone-s3"
    git(tmp_path, "clone", "-q", str(p), str(c))
    dvc(c, "remote", "modify", "--local", "s3", "endpointurl", moto_server)
    dvc(c, "pull", "-r", "s3", **creds)
    assert tree_digest(c, *ARTIFACTS) == tree_digest(p, *ARTIFACTS)
    assert planned(c) == {}


# ----------------------------------------------------------------------------- the decision's view of the rules

DECLARED = '''
from nht.recompute.decide import Recompute

RC = Recompute(rules, records_dir="res/.records")

wildcard_constraints:
    n="[^/]+",

rule digits:
    input: unpack(RC.inputs("digits", src="src.txt"))
    output: out="res/{n}.txt"
    wildcard_constraints: n="[0-9]+"
    params: k=lambda w: int(w.n) * 2, scheduling="fast", nht=RC.tag
    shell: "python -m nht.recompute {params.nht:q} {log:q} {input:q} -- python -m nht fit --x {output.out:q}"

rule letters:
    input: unpack(RC.inputs("letters"))
    output: out="res/{n}.txt", extra="res/{n}.extra"
    wildcard_constraints: n="[a-z]+"
    params: nht=RC.tag
    shell: "python -m nht.recompute {params.nht:q} {log:q} {input:q} -- python -m nht summary"

def show(w):
    print("NHT-VIEW", json.dumps({
        "7": RC.producer_of("res/7.txt"), "q": RC.producer_of("res/q.txt"), "7q": RC.producer_of("res/7q.txt"),
        "outputs": RC.outputs_of("letters", {"n": "q"}), "params": RC.params_of("digits", {"n": "7"}),
        "shell": RC.shell_of("digits"), "code": "nht.stages.fit" in RC.code("digits")[1]}))
    return []

rule all:
    input: show
'''


def test_decisions_read_the_rules_as_snakemake_declares_them(tmp_path):
    """Which rule makes a file follows the rules' wildcard_constraints (Snakemake's matching), and a
    job's outputs, params (less nht and scheduling) and shell command come from the rule itself."""
    (tmp_path / "Snakefile").write_text("import json\n" + DECLARED)
    (tmp_path / "src.txt").write_text("x\n")
    proc = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "all"], cwd=tmp_path, capture_output=True, text=True,
                          env=env(PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("NHT-VIEW ")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    view = json.loads(line[len("NHT-VIEW "):])
    assert view["7"] == ["digits", {"n": "7"}] and view["q"] == ["letters", {"n": "q"}] and view["7q"] is None
    assert view["outputs"] == ["res/q.txt", "res/q.extra"]
    assert view["params"] == {"k": 14}
    assert view["shell"].endswith("python -m nht fit --x {output.out:q}") and view["code"]
