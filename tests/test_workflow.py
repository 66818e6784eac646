"""The real snakemake on a tiny modular config, in a temporary copy of the workflow."""

import json
import math
import re

import pytest
import yaml

from conftest import copy_workflow, run_snakemake, tiny_modular


def planned_jobs(workdir, *args) -> dict[str, int]:
    """Rule -> job count of a dry run ({} when there is nothing to do)."""
    out = run_snakemake(workdir, "-n", *args).stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)
            if m.group(1) != "total"}


def _finite_numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _finite_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _finite_numbers(v)
    elif isinstance(obj, float):
        yield obj


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    wd = copy_workflow(tmp_path_factory.mktemp("wf"), {"experiments": {"tiny": tiny_modular(
        weight_decay=[0.5, 1.0], init_scale=[1, 3], lr=0.02, max_steps=400, batch_over=["init_scale"])}})
    run_snakemake(wd, "--cores", "2")
    return wd


def test_pipeline_writes_a_finite_summary_and_figures(tiny_run):
    summary = json.loads((tiny_run / "results/summary.json").read_text())
    exp = summary["experiments"]["tiny"]
    assert exp["kind"] == "modular" and exp["cells"] == 4
    assert sum(exp["regimes"].values()) == 4
    for key in ("k", "b", "r2", "n"):
        assert key in exp["delay_law"] and key in exp["baseline_inverse_eta_lambda"]
    assert all(math.isfinite(x) for x in _finite_numbers(exp))
    assert exp["figures"] and all((tiny_run / f).stat().st_size > 1000 for f in exp["figures"])
    assert summary["provenance"]["torch"]
    norms = list((tiny_run / "results/tiny/cells").glob("*/norms.json"))
    assert len(norms) == 4
    rec = json.loads(norms[0].read_text())
    assert rec["V_init"] > 0 and rec["provenance"]["device"] == "cpu"


def test_second_run_has_nothing_to_do(tiny_run):
    assert planned_jobs(tiny_run) == {}
    out = run_snakemake(tiny_run, "--cores", "2").stdout + run_snakemake(tiny_run, "--cores", "2").stderr
    assert "Nothing to be done" in out


def test_changing_one_lambda_reruns_only_its_cells_and_aggregates(tiny_run):
    original = (tiny_run / "config.yaml").read_text()
    config = yaml.safe_load(original)
    config["experiments"]["tiny"]["weight_decay"] = [0.5, 2.0]
    (tiny_run / "config.yaml").write_text(yaml.safe_dump(config))
    try:
        jobs = planned_jobs(tiny_run)
    finally:
        (tiny_run / "config.yaml").write_text(original)
    # batch_over=[init_scale]: one training job per lambda, so exactly one new job of 2 cells
    assert jobs.get("train_modular") == 1
    assert jobs.get("extract_norms") == 2
    assert "make_modular_data" not in jobs
    assert jobs.get("fit_modular") == 1 and jobs.get("summary") == 1


def test_running_one_cell_alone(tiny_run):
    cell = next((tiny_run / "results/tiny/cells").iterdir()).name
    target = f"results/tiny/cells/{cell}/norms.json"
    jobs = planned_jobs(tiny_run, target, "--forcerun", "extract_norms")
    assert jobs == {"extract_norms": 1}


def test_malformed_config_fails_fast_naming_the_key(tmp_path):
    wd = copy_workflow(tmp_path, {"experiments": {"bad": tiny_modular(weight_decay=[0.5, -3])}})
    proc = run_snakemake(wd, "--cores", "1", check=False)
    assert proc.returncode != 0
    assert "experiments.bad.weight_decay" in proc.stdout + proc.stderr
    assert not (wd / "results").exists()


def test_lint_is_clean(tiny_run):
    out = run_snakemake(tiny_run, "--lint")
    assert "Congratulations" in out.stdout + out.stderr
