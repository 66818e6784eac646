"""A tiny image experiment through the real snakemake and the project's Snakefile."""

import json

import pytest

from conftest import copy_workflow, run_snakemake


@pytest.mark.parametrize("batch_over", [[], ["rho"]])
def test_tiny_image_experiment_through_snakemake(tmp_path, batch_over):
    """One cell per job (the default), or both cells stacked in one job (cells reading different
    shortcut datasets): the per-cell files come from the job's history through ``python -m nht norms``."""
    config = {"results_dir": "results", "data_dir": "data", "experiments": {"tiny_img": {
        "kind": "image", "dataset": {"name": "digits", "source": "sklearn", "n_train": 300, "n_test": 100},
        "rho": [0.1, 1.0], "weight_decay": 0.1, "epochs": 2, "batch_size": 100,
        "model": {"name": "simple_cnn", "width_mult": 0.25}, "batch_over": batch_over, "max_cells_per_job": 2}}}
    copy_workflow(tmp_path, config)
    run_snakemake(tmp_path, "--cores", "2")
    metas = list((tmp_path / "results" / "tiny_img" / "jobs").glob("*/meta.json"))
    assert len(metas) == (1 if batch_over else 2)
    assert sum(json.loads(m.read_text())["n_cells"] for m in metas) == 2
    summary = json.loads((tmp_path / "results" / "tiny_img" / "experiment_summary.json").read_text())
    assert summary["kind"] == "image" and summary["cells"] == 2
    assert set(summary["test_acc_by_rho"]) == {"0.1", "1"}
    # one science path: the image summary has the science blocks and the shared scorecard
    for block in ("delay_law", "prediction", "decay_rate", "clean_norm_separation", "norm_ordering",
                  "regime_ordering", "layer_hierarchy", "scorecard"):
        assert block in summary, block
    assert set(summary["regimes"]) == {"weak", "intermediate", "strong", "immediate", "diverged"}
    for entry in summary["scorecard"].values():
        assert entry["verdict"] in ("holds", "fails", "uncertain", "not_applicable", "not_enough_data")
        if entry["verdict"] == "not_enough_data":
            assert entry["detail"]["reason"], entry
    history = (tmp_path / "results" / "tiny_img" / "cells").glob("*/history.csv")
    import pandas as pd
    from nht.core.history import check_history
    for h in history:
        check_history(pd.read_csv(h), str(h))
    for f in summary["figures"]:
        assert (tmp_path / f).stat().st_size > 1000
    for rule in ("image_fetch", "image_shortcut", "image_train", "extract_norms", "science", "image_figures",
                 "image_experiment_summary"):
        assert list((tmp_path / "logs" / rule).rglob("*.log")), rule
        assert list((tmp_path / "benchmarks" / "rules" / rule).rglob("*.tsv")), rule
    # a second run has nothing to do
    again = run_snakemake(tmp_path, "--cores", "2", "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
