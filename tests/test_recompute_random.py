"""A randomized differential test of the recompute layer (issue 18): random sequences of what users
do to a workspace, each followed by a real ``snakemake`` run, checked against a model and against a
clean run of the same config in a fresh directory.

The workspace is the real workflow on the tiny config of :mod:`dvc_helpers` (p=7 MLP, 2 cells, 100
steps; real git, DVC and Snakemake). An operation is one of

* a config switch among a few variants that differ in one category of key: a grid value
  (``weight_decay``), an analysis-only key (``figure_cells_max``), an event-rule key
  (``immediate_delay``, ``train_threshold``), or scheduling keys (``threads``, ``checkpoint_seconds``,
  ``eval_batch_size``, ``results_dir`` spelled ``./results/``);
* a code edit: comment-only (a module and a rule file) or real (the figures module, the trainer);
* damage: truncate, corrupt or delete a recorded output or the dataset; touch files into the past
  or the future;
* a run of another config that shares ``results/`` (then the next run switches back);
* an interrupted run (SIGINT or SIGKILL to its process group), two runs at once;
* ``dvc push``, ``git clone`` and ``dvc pull``: the sequence goes on in the clone.

After every operation's run (with its exit status checked), the *model* says which rules must and
which may recompute (a job counts as recomputed when its record file was rewritten; a restore
from DVC's cache rewrites no record), a damaged file must come back byte-identical, and
``snakemake -n`` must plan nothing. At the end of a sequence every result and data file must
equal a clean run of the final config in a fresh directory (JSON compared without the keys that
name the machine, time, code version or scheduling; everything else byte for byte: CPU training
here is deterministic).

Sequences are seeded: ``NHT_RANDOM_SEQUENCES`` (default 6) sequences with seeds
``NHT_RANDOM_SEED`` (default 0) + i, of 2 to 4 operations each. A failure names the seed and the
operations, so ``NHT_RANDOM_SEED=<seed> NHT_RANDOM_SEQUENCES=1 pytest tests/test_recompute_random.py``
replays it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from dvc_helpers import (SNAKEMAKE, TINY_CONFIG, commit_record, dvc, env, git, make_repo,  # noqa: E402
                         planned, sigint_as_in_a_terminal, snakemake)

pytestmark = pytest.mark.slow

N_SEQUENCES = int(os.environ.get("NHT_RANDOM_SEQUENCES", "6"))
FIRST_SEED = int(os.environ.get("NHT_RANDOM_SEED", "0"))

TRAIN, NORMS, DATA = "train_modular", "extract_norms", "make_modular_data"
FIT, SCIENCE, FIGURES, EXP_SUMMARY, SUMMARY = ("fit_modular", "science", "figures_modular",
                                               "experiment_summary_modular", "summary")
DOWNSTREAM_OF_TRAINING = {TRAIN, NORMS, FIT, SCIENCE, FIGURES, EXP_SUMMARY, SUMMARY}
ALL = DOWNSTREAM_OF_TRAINING | {DATA}

BASE = yaml.safe_load(TINY_CONFIG)
# Config variants, each one category of key away from BASE (the category decides what may rerun).
VARIANTS = {
    "base": {},
    "grid": {"weight_decay": [0.5, 2.0]},
    "analysis": {"figure_cells_max": 20},
    "event": {"immediate_delay": 20, "train_threshold": 0.95},
}
SCHEDULING = {"threads": 2, "checkpoint_seconds": 30, "eval_batch_size": 512}
# JSON keys that name the machine, the time, the code version or scheduling, not a result.
VOLATILE = {"code_version", "cell_steps_per_second", "wall_seconds", "wall_s", "started", "finished",
            "host", "platform", "cpu", "created", "elapsed_s", "threads", "checkpoint_seconds", "eval_batch_size",
            "results_dir", "data_dir"}


def config_of(variant: str, scheduling: bool) -> dict:
    cfg = copy.deepcopy(BASE)
    cfg["experiments"]["tiny"].update(VARIANTS[variant])
    if scheduling:
        cfg["experiments"]["tiny"].update(SCHEDULING)
        cfg["results_dir"] = "./results/"
    return cfg


def write_config(path: Path, cfg: dict) -> None:
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


# ----------------------------------------------------------------------------- observing a workspace

def records(path: Path) -> dict[str, tuple]:
    """stage -> (size, mtime_ns, inode) of its record file (rewritten only when the job recomputed)."""
    out = {}
    for d in ("results/.records", "data/.records"):
        for p in (path / d).glob("*.json"):
            st = p.stat()
            out[p.stem] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def recomputed_rules(before: dict, after: dict) -> set[str]:
    return {stage.split("@")[0] for stage, state in after.items() if before.get(stage) != state}


def recorded_outputs(path: Path) -> list[str]:
    outs = set()
    for d in ("results/.records", "data/.records"):
        for p in (path / d).glob("*.json"):
            outs.update(json.loads(p.read_text())["outputs"])
    return sorted(o for o in outs if (path / o).is_file())


def _volatile(key: str) -> bool:
    return key in VOLATILE or key.endswith(("wall_seconds", "_per_second"))


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not _volatile(k)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def result_digest(path: Path) -> dict[str, str]:
    """Every file under results/ and data/ (records and DVC pointers left out) -> a digest of
    its content, JSON without :data:`VOLATILE` keys."""
    out = {}
    for top in ("results", "data"):
        for p in sorted((path / top).rglob("*")):
            rel = str(p.relative_to(path))
            if not p.is_file() or "/.records/" in rel or rel.endswith(".dvc"):
                continue
            if p.suffix == ".json":
                blob = json.dumps(_strip(json.loads(p.read_text())), sort_keys=True).encode()
            else:
                blob = p.read_bytes()
            out[rel] = hashlib.md5(blob).hexdigest()
    return out


# ----------------------------------------------------------------------------- the workspace and its model

class Workspace:
    """A workspace under test and what the model knows of it."""

    def __init__(self, path: Path, rng: random.Random, log: list[str]):
        self.path, self.rng, self.log = path, rng, log
        self.variant, self.scheduling = "base", False
        self.edits = 0
        self.carry: set[str] = set()       # rules an interrupted or foreign run may leave to the next run

    def note(self, text: str) -> None:
        self.log.append(text)

    def cfg(self) -> dict:
        return config_of(self.variant, self.scheduling)

    def run(self, must: set[str], may: set[str], restored: dict[str, bytes] | None = None,
            *args: str) -> None:
        before = records(self.path)
        snakemake(self.path, "--cores", "2", *args)
        ran = recomputed_rules(before, records(self.path))
        may = may | self.carry | must
        self.carry = set()
        assert ran <= may, f"recomputed {sorted(ran - may)} that had no reason to (ran {sorted(ran)})"
        assert must <= ran, f"did not recompute {sorted(must - ran)} (ran {sorted(ran)})"
        for rel, content in (restored or {}).items():
            assert (self.path / rel).read_bytes() == content, f"{rel} was not restored to its recorded content"
        left = planned(self.path, *args)                 # the same command again (its --configfile)
        assert left == {}, f"a second run would still do {left}"


# ----------------------------------------------------------------------------- operations

def op_switch_config(ws: Workspace) -> None:
    """Switch to another config variant (or toggle the scheduling keys)."""
    if ws.rng.random() < 0.3:
        ws.scheduling = not ws.scheduling
        ws.note(f"scheduling keys {'on' if ws.scheduling else 'off'}")
        write_config(ws.path, ws.cfg())
        ws.run(set(), {EXP_SUMMARY, SUMMARY})
        return
    old = ws.variant
    ws.variant = ws.rng.choice([v for v in VARIANTS if v != old])
    ws.note(f"config {old} -> {ws.variant}")
    write_config(ws.path, ws.cfg())
    kinds = {old, ws.variant} - {"base"}
    must, may = set(), set()
    if "grid" in kinds:
        must |= {FIT, SCIENCE, EXP_SUMMARY, SUMMARY}
        may |= DOWNSTREAM_OF_TRAINING
    if "event" in kinds:
        must |= {NORMS}
        may |= DOWNSTREAM_OF_TRAINING - {TRAIN}
    if "analysis" in kinds:
        must |= {FIGURES}
        may |= {FIGURES, EXP_SUMMARY, SUMMARY}
    ws.run(must, may)


def _append(path: Path, text: str) -> None:
    with open(path, "a") as fh:
        fh.write(text)


def op_comment_edit(ws: Workspace) -> None:
    """Comment-only edits of a training module, a science module and a rule file: nothing reruns."""
    ws.edits += 1
    for rel in ("nht/domains/modular/train.py", "nht/science/analyse.py", "workflow/rules/summary.smk"):
        _append(ws.path / rel, f"\n# a comment, edit {ws.edits}\n")
    ws.note("comment-only edits")
    ws.run(set(), set())


def op_code_edit(ws: Workspace) -> None:
    """A real edit of the modular figures module (or, rarely, of the trainer): what reads it reruns."""
    ws.edits += 1
    if ws.rng.random() < 0.25:
        _append(ws.path / "nht/domains/modular/train.py", f"\n_EDIT_{ws.edits} = {ws.edits}\n")
        ws.note("real edit of the trainer")
        ws.run({TRAIN}, DOWNSTREAM_OF_TRAINING)
    else:
        _append(ws.path / "nht/domains/modular/figures.py", f"\n_EDIT_{ws.edits} = {ws.edits}\n")
        ws.note("real edit of the figures module")
        ws.run({FIGURES}, {FIGURES, EXP_SUMMARY, SUMMARY})


def op_damage(ws: Workspace) -> None:
    """Truncate, corrupt or delete one recorded output (the dataset included): restored, not recomputed."""
    rel = ws.rng.choice(recorded_outputs(ws.path))
    how = ws.rng.choice(["truncate", "corrupt", "delete"])
    p = ws.path / rel
    content = p.read_bytes()
    if how == "truncate":
        p.write_bytes(content[: len(content) // 2])
    elif how == "corrupt":
        p.write_bytes(b'{"corrupt": 1}\n' if p.suffix == ".json" else content[:-8] + b"corrupt!")
    else:
        p.unlink()
    ws.note(f"{how} {rel}")
    ws.run(set(), set(), {rel: content})


def op_touch(ws: Workspace) -> None:
    """Move the file times of some results and data into the past or the future: nothing reruns."""
    files = [p for top in ("results", "data") for p in (ws.path / top).rglob("*") if p.is_file()]
    shift = ws.rng.choice([-1, 1]) * ws.rng.choice([3600, 86400 * 400])
    chosen = ws.rng.sample(files, max(1, len(files) // 3))
    for p in chosen:
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + shift * 10**9))
    ws.note(f"touch {len(chosen)} files by {shift:+d} s")
    ws.run(set(), set())


def op_other_config(ws: Workspace) -> None:
    """Run a one-cell config that shares results/ (like a preset), then switch back."""
    other = copy.deepcopy(ws.cfg())
    other["experiments"]["tiny"]["weight_decay"] = 0.5
    (ws.path / "other.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    ws.note("run a one-cell config sharing results/, then the own config")
    ws.run({SUMMARY}, {FIT, SCIENCE, FIGURES, EXP_SUMMARY, SUMMARY}, None, "--configfile", "other.yaml")
    ws.run({FIT, SCIENCE, EXP_SUMMARY, SUMMARY}, {FIT, SCIENCE, FIGURES, EXP_SUMMARY, SUMMARY})


def op_interrupt(ws: Workspace) -> None:
    """Start a run that has work to do (a real figures edit), interrupt it, and let the next run finish."""
    ws.edits += 1
    _append(ws.path / "nht/domains/modular/figures.py", f"\n_EDIT_{ws.edits} = {ws.edits}\n")
    sig = ws.rng.choice([signal.SIGINT, signal.SIGKILL])
    delay = ws.rng.uniform(0.5, 5.0)
    ws.note(f"real figures edit, run interrupted by {signal.Signals(sig).name} after {delay:.1f} s")
    proc = subprocess.Popen([SNAKEMAKE, "--cores", "2"], cwd=ws.path, env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=sigint_as_in_a_terminal)
    time.sleep(delay)
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=120)
    _wait_group_gone(proc.pid)
    if sig == signal.SIGKILL:
        snakemake(ws.path, "--unlock")
    ws.carry = {FIGURES, EXP_SUMMARY, SUMMARY}
    ws.run(set(), set())


def _wait_group_gone(pgid: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    raise AssertionError("processes of the interrupted run are still alive")


def op_concurrent(ws: Workspace) -> None:
    """Two runs at once after an analysis edit: one waits or is refused, nothing is lost."""
    old = ws.variant
    ws.variant = "analysis" if old != "analysis" else "base"
    write_config(ws.path, ws.cfg())
    ws.note(f"config {old} -> {ws.variant}, two runs at once")
    procs = [subprocess.Popen([SNAKEMAKE, "--cores", "1"], cwd=ws.path, env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    codes = [p.wait(timeout=600) for p in procs]
    assert 0 in codes, "both concurrent runs failed:\n" + "\n".join(p.stdout.read()[-2000:] for p in procs)
    ws.carry = {FIGURES, EXP_SUMMARY, SUMMARY}
    ws.run(set(), set())


def op_clone(ws: Workspace) -> None:
    """dvc push, git clone, dvc pull: the sequence goes on in the clone, where nothing reruns."""
    dvc(ws.path, "push")
    git(ws.path, "add", "-A")
    git(ws.path, "commit", "-qm", "sequence state", "--allow-empty")     # first in a sequence: nothing new
    dest = ws.path.parent / f"clone{ws.edits}-{len(ws.log)}"
    git(ws.path.parent, "clone", "-q", str(ws.path), str(dest))
    dvc(dest, "pull")
    ws.note(f"push, clone, pull -> {dest.name}")
    ws.path = dest
    ws.run(set(), set())


OPERATIONS = [op_switch_config, op_switch_config, op_comment_edit, op_code_edit, op_damage, op_damage,
              op_touch, op_other_config, op_interrupt, op_concurrent, op_clone]


# ----------------------------------------------------------------------------- the test

@pytest.fixture(scope="module")
def completed(tmp_path_factory):
    """A completed workspace of the base config, and a cache of clean runs by config variant."""
    base = tmp_path_factory.mktemp("random")
    p = make_repo(base / "origin")
    snakemake(p, "--cores", "2")
    commit_record(p)
    return {"path": p, "base": base, "clean": {"base": result_digest(p)}}


def clean_digest(completed, variant: str) -> dict[str, str]:
    if variant not in completed["clean"]:
        cfg = config_of(variant, False)
        p = make_repo(completed["base"] / f"clean-{variant}", yaml.safe_dump(cfg, sort_keys=False))
        snakemake(p, "--cores", "2")
        completed["clean"][variant] = result_digest(p)
    return completed["clean"][variant]


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + N_SEQUENCES))
def test_random_sequence_equals_clean_run(completed, tmp_path, seed):
    rng = random.Random(seed)
    log: list[str] = []
    root = tmp_path / "seq"
    root.mkdir()
    subprocess.run(["cp", "-a", str(completed["path"]), str(root / "repo")], check=True)
    dvc(root / "repo", "remote", "modify", "--local", "shared", "url", str(root / "storage"))
    ws = Workspace(root / "repo", rng, log)
    ops = [rng.choice(OPERATIONS) for _ in range(rng.randint(2, 4))]
    try:
        for op in ops:
            op(ws)
        want = clean_digest(completed, ws.variant)
        got = result_digest(ws.path)
        # files of cells no longer in the config may stay on disk: cached results, shown nowhere
        wrong = sorted(k for k in want if got.get(k) != want[k])
        assert not wrong, f"differs from a clean run of the final config: {wrong[:8]}"
    except AssertionError as err:
        raise AssertionError(f"sequence seed {seed}: operations {log}\n{err}") from None
