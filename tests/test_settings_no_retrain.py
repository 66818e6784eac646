"""Settings that cannot change a result retrain nothing (issue 18, item 2).

nht.config sorts the keys of an experiment into categories (workflow-only, analysis, event rule,
scheduling); every other key is a result setting. Editing a key of a category must leave every
cell id and the definition of every training job unchanged, in both domains, and spelling
``results_dir`` differently must not change anything either. Checked on the values the rules
hash (nht.config: ids, :func:`train_job_spec`, the image training settings, the norms settings)
for every key, then through the real ``snakemake -n`` on a completed tiny workspace.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml

from nht.config import (ANALYSIS_KEYS, EVENT_RULE_KEYS, NOT_IN_CELL_HASH, SCHEDULING_KEYS, SCHEMA_DIR,
                        WORKFLOW_ONLY_KEYS, expand_cells, group_jobs, job_scheduling, train_job_spec,
                        validate_config)

from conftest import REPO, copy_workflow, run_snakemake, tiny_modular

CATEGORIES = {"workflow-only": WORKFLOW_ONLY_KEYS, "analysis": ANALYSIS_KEYS, "event rule": EVENT_RULE_KEYS,
              "scheduling": SCHEDULING_KEYS}

TINY_IMAGE = {"kind": "image", "dataset": {"name": "digits", "source": "sklearn", "n_train": 100, "n_test": 50},
              "rho": 1.0, "border": 2, "weight_decay": [0.1, 0.3], "epochs": 1, "batch_size": 50,
              "model": {"name": "simple_cnn", "width_mult": 0.25}}

# One edited value per key of a category, per kind (a key of a category that a kind's schema
# has must be listed here: the test below checks that nothing is left out).
EDITS = {
    "modular": {"description": "edited", "batch_over": ["seed"], "max_cells_per_job": 1, "mem_mb": 3000,
                "runtime_min": 7, "gpus": 1, "figure_cells_max": 3, "train_threshold": 0.8,
                "secondary_threshold": 0.5, "immediate_delay": 7, "fit_phi": 0.1, "transition_rise": 0.1,
                "transition_fall": 0.1, "threads": 2, "checkpoint_seconds": 5, "eval_batch_size": 3},
    "image": {"description": "edited", "max_cells_per_job": 2, "mem_mb": 3000, "runtime_min": 7, "gpus": 1,
              "reference_rho": 0.5, "reference_weight_decay": 0.3, "train_threshold": 0.8, "fit_phi": 0.1,
              "transition_rise": 0.1, "transition_fall": 0.1, "immediate_epochs": 2, "threads": 2,
              "checkpoint_seconds": 5, "eval_batch_size": 3},
}
# workflow-only keys that regroup cells into jobs (new job ids, same cells); all others keep the jobs
REGROUPING = ("batch_over", "max_cells_per_job")


def schema_keys(kind: str) -> set[str]:
    return set(yaml.safe_load((SCHEMA_DIR / f"{kind}_experiment.schema.yaml").read_text())["properties"])


def base(kind: str) -> dict:
    return tiny_modular() if kind == "modular" else copy.deepcopy(TINY_IMAGE)


def state(kind: str, exp: dict, results_dir: str = "results") -> dict:
    """What the rules hash, per job and per cell, for a config with one experiment ``e``."""
    config = validate_config({"results_dir": results_dir, "experiments": {"e": exp}})
    cells = expand_cells(config)
    jobs = group_jobs(cells)
    train = ({j.id: train_job_spec(j) for j in jobs} if kind == "modular"
             else {c.id: dict(c.result_settings, experiment=c.experiment) for c in cells})
    return {"ids": [c.id for c in cells], "train": train, "norms": {c.id: c.run_settings for c in cells},
            "paths": (config["results_dir"], config["data_dir"]), "scheduling": [job_scheduling(j.cells) for j in jobs]}


def test_categories_are_disjoint_known_keys_and_all_out_of_the_hash():
    every = [k for keys in CATEGORIES.values() for k in keys]
    assert len(every) == len(set(every)), "a key is in two categories"
    known = schema_keys("modular") | schema_keys("image")
    assert set(every) <= known, f"not a config key: {set(every) - known}"
    assert set(NOT_IN_CELL_HASH) == set(every)
    for kind in EDITS:
        assert set(EDITS[kind]) == set(every) & schema_keys(kind) - ({"batch_over"} if kind == "image" else set())


@pytest.mark.parametrize("kind", ["modular", "image"])
def test_no_category_key_changes_an_id_or_a_training_job(kind):
    before = state(kind, base(kind))
    for key, value in EDITS[kind].items():
        exp = base(kind)
        assert exp.get(key) != value
        exp[key] = value
        after = state(kind, exp)
        assert after["ids"] == before["ids"], key
        if key in REGROUPING:
            continue
        assert after["train"] == before["train"], key
        if key not in EVENT_RULE_KEYS:
            assert after["norms"] == before["norms"], key
        if key in SCHEDULING_KEYS:       # it still reaches the trainer, outside the definition
            assert all(s[key] == value for s in after["scheduling"]), key


@pytest.mark.parametrize("kind", ["modular", "image"])
def test_a_result_setting_still_changes_ids_and_jobs(kind):
    before = state(kind, base(kind))
    exp = base(kind)
    exp["lr"] = 0.02
    after = state(kind, exp)
    assert not set(after["ids"]) & set(before["ids"])
    assert not set(after["train"]) & set(before["train"])


@pytest.mark.parametrize("kind", ["modular", "image"])
@pytest.mark.parametrize("spelling", ["results/", "./results", "results//", "./results/."])
def test_results_dir_spellings_are_one_directory(kind, spelling):
    assert state(kind, base(kind), spelling) == state(kind, base(kind), "results")


def test_absolute_paths_stay_absolute_and_relative_stay_relative():
    config = validate_config({"results_dir": "/scratch/nht/results/", "data_dir": "./data/",
                              "experiments": {"e": tiny_modular()}})
    assert (config["results_dir"], config["data_dir"]) == ("/scratch/nht/results", "data")


# ----------------------------------------------------------------------------- the real snakemake

WORKSPACE_CONFIG = {"results_dir": "results", "data_dir": "data", "experiments": {
    "m": tiny_modular(p=7, train_frac=0.6, weight_decay=1.0, init_scale=1, max_steps=40, eval_every=10,
                      stop_margin=10),
    "i": dict(copy.deepcopy(TINY_IMAGE), weight_decay=0.1)}}
TRAINING = {"make_modular_data", "train_modular", "image_fetch", "image_shortcut", "image_train"}
SUMMARIES = {"experiment_summary_modular", "image_experiment_summary", "summary"}


def planned(workdir: Path) -> dict[str, int]:
    """Rule -> jobs of a dry run ({} when nothing is to be done; nht_force and all left out)."""
    out = run_snakemake(workdir, "-n", "--cores", "1").stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("\n\n")[0]
    rows = (line.split() for line in table.splitlines())
    jobs = {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[1].isdigit()}
    return {k: v for k, v in jobs.items() if k not in ("total", "all", "nht_force")}


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    """A workspace where a full run of one tiny modular and one tiny image experiment completed, with
    its own copy of nht (jobs run ``python -m nht`` from the workspace, so they use the copy)."""
    wd = copy_workflow(tmp_path_factory.mktemp("settings") / "ws", WORKSPACE_CONFIG)
    shutil.copytree(REPO / "nht", wd / "nht", ignore=shutil.ignore_patterns("__pycache__"))
    run_snakemake(wd, "--cores", "2")
    assert planned(wd) == {}
    return wd


def plan_with(wd: Path, edit) -> dict[str, int]:
    config = copy.deepcopy(WORKSPACE_CONFIG)
    edit(config)
    (wd / "config.yaml").write_text(yaml.safe_dump(config))
    try:
        return planned(wd)
    finally:
        (wd / "config.yaml").write_text(yaml.safe_dump(WORKSPACE_CONFIG))


@pytest.mark.slow
def test_snakemake_plans_no_training_for_scheduling_event_rule_or_path_spelling_edits(done):
    for key, value in (("threads", 2), ("checkpoint_seconds", 5), ("eval_batch_size", 3)):
        plan = plan_with(done, lambda c: [c["experiments"][e].update({key: value}) for e in ("m", "i")])
        # the summaries record the config; nothing that trains or extracts reruns
        assert set(plan) <= SUMMARIES, (key, plan)
    plan = plan_with(done, lambda c: c["experiments"]["m"].update(train_threshold=0.5, secondary_threshold=0.4))
    assert not set(plan) & TRAINING, plan
    assert plan.get("extract_norms") == 1, plan           # the event rule re-extracts the one cell
    plan = plan_with(done, lambda c: c["experiments"]["i"].update(train_threshold=0.5))
    assert not set(plan) & TRAINING and plan.get("extract_norms") == 1, plan   # one per-cell rule, every domain
    for spelling in ("results/", "./results"):
        assert plan_with(done, lambda c: c.update(results_dir=spelling, data_dir="./data/")) == {}, spelling
    # a result setting does retrain (the check above can fail)
    plan = plan_with(done, lambda c: c["experiments"]["m"].update(max_steps=30))
    assert plan.get("train_modular") == 1, plan
