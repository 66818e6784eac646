"""A tiny image experiment through the real snakemake and the project's Snakefile."""

import json

from conftest import copy_workflow, run_snakemake


def test_tiny_image_experiment_through_snakemake(tmp_path):
    config = {"results_dir": "results", "data_dir": "data", "experiments": {"tiny_img": {
        "kind": "image", "dataset": {"name": "digits", "source": "sklearn", "n_train": 300, "n_test": 100},
        "rho": [0.1, 1.0], "weight_decay": 0.1, "epochs": 2, "batch_size": 100,
        "model": {"name": "simple_cnn", "width_mult": 0.25}}}}
    copy_workflow(tmp_path, config)
    run_snakemake(tmp_path, "--cores", "2")
    summary = json.loads((tmp_path / "results" / "tiny_img" / "experiment_summary.json").read_text())
    assert summary["kind"] == "image" and summary["cells"] == 2
    assert set(summary["clean_acc_by_strength"]) == {"0.1", "1"}
    for f in summary["figures"]:
        assert (tmp_path / f).stat().st_size > 1000
    for rule in ("image_fetch", "image_shortcut", "image_train", "image_figures", "image_experiment_summary"):
        assert list((tmp_path / "logs" / rule).rglob("*.log")), rule
        assert list((tmp_path / "benchmarks" / "rules" / rule).rglob("*.tsv")), rule
    # a second run has nothing to do
    again = run_snakemake(tmp_path, "--cores", "2", "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
