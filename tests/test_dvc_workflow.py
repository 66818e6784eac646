"""DVC under Snakemake (issue 5) with the real workflow on a tiny config (p=7 MLP, 2 cells,
100 steps), run by the real git, dvc and snakemake in temporary directories:

1. `dvc push` sends data and results to the default shared-directory remote; a second sends nothing;
2. `git clone` + `dvc pull` + `snakemake --cores all` recomputes nothing; files are byte-identical;
   then a code change reruns only the stages whose code it is, and downstream;
4. changing one cell's value on a fresh clone (no .snakemake/) recomputes only that cell and the
   aggregates;
8. `dvc metrics show` reads results/summary.json, `dvc plots show` renders the training curves,
   `dvc params diff` shows config changes;
and dvc.yaml cannot drift from the Snakefile / nht.config's cell grid.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from dvc_helpers import commit_record, dvc, git, make_repo, planned, snakemake, tree_digest  # noqa: E402

pytestmark = pytest.mark.slow

ARTIFACTS = ("data", "results", "logs", "benchmarks/rules")


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """The real workflow, run once, pushed to the default remote, record committed to git."""
    base = tmp_path_factory.mktemp("wf")
    p = make_repo(base / "origin", toy=False)
    snakemake(p, "--cores", "2")
    first = dvc(p, "push").stdout
    second = dvc(p, "push").stdout
    commit_record(p)
    return {"path": p, "base": base, "push1": first, "push2": second}


def _clone(origin, name: str) -> Path:
    clone = origin["base"] / name
    git(origin["base"], "clone", "-q", str(origin["path"]), str(clone))
    dvc(clone, "pull")
    return clone


def _stage_outs(p: Path) -> dict[str, list[str]]:
    doc = yaml.safe_load((p / "dvc.yaml").read_text())
    return {name: st["outs"] for name, st in doc["stages"].items()}


def test_push_sends_data_and_results_then_nothing(origin):
    p = origin["path"]
    m = re.search(r"(\d+) files? pushed", origin["push1"])
    assert m, origin["push1"]
    outs = [o for outs in _stage_outs(p).values() for o in outs]
    lock = yaml.safe_load((p / "dvc.lock").read_text())["stages"]
    contents = {o["md5"] for st in lock.values() for o in st["outs"]}
    assert int(m.group(1)) == len(contents)                 # every output (once per content)
    assert any(o.startswith("data/") for o in outs) and "results/summary.json" in outs
    assert "Everything is up to date" in origin["push2"]
    assert (origin["base"] / "nht-dvc-storage" / "files" / "md5").is_dir()


def test_clone_pull_recomputes_nothing_and_is_byte_identical(origin):
    clone = _clone(origin, "clone")
    assert not (clone / ".snakemake").exists()
    assert tree_digest(clone, *ARTIFACTS) == tree_digest(origin["path"], *ARTIFACTS)
    out = snakemake(clone, "--cores", "all").stdout
    assert "Nothing to be done" in out, out[-3000:]
    assert tree_digest(clone, *ARTIFACTS) == tree_digest(origin["path"], *ARTIFACTS)
    assert "Data and pipelines are up to date" in dvc(clone, "status").stdout

    # code deps are per stage: editing the figure code reruns figures and what reads them only
    fig = clone / "nht" / "figures.py"
    fig.write_text(fig.read_text() + "\n# edited\n")
    plan = planned(clone)
    assert "figures_modular" in plan and "summary" in plan, plan
    assert not {"make_modular_data", "train_modular", "extract_norms", "fit_modular"} & set(plan), plan


def test_one_cell_change_on_fresh_clone_recomputes_that_cell_and_aggregates(origin):
    clone = _clone(origin, "clone-cell")
    cfg = (clone / "config.yaml").read_text()
    (clone / "config.yaml").write_text(cfg.replace("weight_decay: [0.5, 1.0]", "weight_decay: [0.5, 2.0]"))
    plan = planned(clone)
    # the new cell: one training job, one norm extraction; no dataset (it is shared)
    train, norms = plan.pop("train_modular", []), plan.pop("extract_norms", [])
    assert len(train) == 1 and len(norms) == 1 and "_wd2_" in train[0] and "_wd2_" in norms[0], (train, norms)
    assert "make_modular_data" not in plan
    # everything else: once per experiment or once overall (aggregates), never per cell or job
    assert {"fit_modular", "figures_modular", "experiment_summary_modular", "summary"} <= set(plan)
    for rule, outs in plan.items():
        assert len(outs) == 1 and "/cells/" not in outs[0] and "/jobs/" not in outs[0], (rule, outs)
    before = tree_digest(clone, "results/tiny/cells", "results/tiny/jobs", "data")
    snakemake(clone, "--cores", "2")
    after = tree_digest(clone, "results/tiny/cells", "results/tiny/jobs", "data")
    kept = {k: v for k, v in before.items() if "_wd1_" not in k}
    assert {k: after[k] for k in kept} == kept                # the other cell, untouched
    assert "Data and pipelines are up to date" in dvc(clone, "status").stdout
    assert not [n for n in _stage_outs(clone) if "_wd1_" in n]  # the old cell left the record


def test_dvc_yaml_matches_snakefile_and_cell_grid(origin):
    """dvc.yaml is generated from the Snakemake DAG; check it against nht.config and Snakemake."""
    from nht.config import expand_cells, group_jobs, load_config
    from nht import paths as P

    p = origin["path"]
    config = load_config(p / "config.yaml")
    cells = expand_cells(config)
    jobs = group_jobs(cells)
    outs = {o for v in _stage_outs(p).values() for o in v}
    for c in cells:
        assert P.fill(P.CELL_NORMS, config, experiment=c.experiment, cell=c.id) in outs
        assert P.fill(P.DATASET, config, kind=c.kind, dataset=c.dataset_id) in outs
    for j in jobs:
        assert P.fill(P.JOB_HISTORY, config, experiment=j.experiment, job=j.id) in outs
    assert P.fill(P.SUMMARY, config) in outs
    # Snakemake's own list of the workflow's outputs equals the recorded outputs
    summary = snakemake(p, "--summary", "--cores", "1").stdout.splitlines()
    start = next(i for i, line in enumerate(summary) if line.startswith("output_file"))
    sm_outs = {line.split("\t")[0] for line in summary[start + 1:] if "\t" in line}
    recorded = {o for o in outs if not o.startswith(("logs/", "benchmarks/"))}
    assert sm_outs == recorded
    lock = yaml.safe_load((p / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(_stage_outs(p))
    assert "GENERATED" in (p / "dvc.yaml").read_text().splitlines()[0]


def test_metrics_plots_params(origin, tmp_path):
    p = origin["path"]
    metrics = json.loads(dvc(p, "metrics", "show", "--json").stdout)
    data = next(iter(metrics.values()))["data"]
    assert "results/summary.json" in data and data["results/summary.json"]["data"]
    out = tmp_path / "plots"
    dvc(p, "plots", "show", "-o", str(out))
    html = (out / "index.html").read_text()
    assert "tiny_accuracy" in html and "test_acc" in html
    cfg = (p / "config.yaml").read_text()
    try:
        (p / "config.yaml").write_text(cfg.replace("lr: 0.01", "lr: 0.02"))
        diff = dvc(p, "params", "diff").stdout
        assert "experiments.tiny.lr" in diff and "0.02" in diff
    finally:
        (p / "config.yaml").write_text(cfg)
