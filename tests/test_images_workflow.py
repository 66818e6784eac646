"""A tiny image experiment through the real snakemake, with the stand-alone harness Snakefile that
provides what the project Snakefile gives workflow/rules/images.smk."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import images_harness  # noqa: E402


def test_tiny_image_experiment_through_snakemake(tmp_path):
    config = {"results_dir": "results", "data_dir": "data", "experiments": {"tiny_img": {
        "kind": "image", "dataset": {"name": "digits", "source": "sklearn", "n_train": 300, "n_test": 100},
        "rho": [0.1, 1.0], "weight_decay": 0.1, "epochs": 2, "batch_size": 100,
        "model": {"name": "simple_cnn", "width_mult": 0.25}}}}
    res = images_harness.run(tmp_path, config, cores=2, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "results" / "tiny_img" / "experiment_summary.json").read_text())
    assert summary["kind"] == "image" and summary["cells"] == 2
    assert set(summary["clean_acc_by_strength"]) == {"0.1", "1"}
    for f in summary["figures"]:
        assert (tmp_path / f).stat().st_size > 1000
    for rule in ("image_fetch", "image_shortcut", "image_train", "image_figures", "image_experiment_summary"):
        assert list((tmp_path / "logs" / rule).rglob("*.log")), rule
        assert list((tmp_path / "benchmarks" / "rules" / rule).rglob("*.tsv")), rule
    # a second run has nothing to do
    again = images_harness.run(tmp_path, config, cores=2, extra=["-n"], check=False)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
