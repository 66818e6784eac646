"""DVC's plots (dvc.yaml, nht.recompute.dvc_yaml) name the history schema's columns: loss, test_acc, V."""

from pathlib import Path

from nht.core.history import REQUIRED
from nht.recompute.dvc_yaml import top_level


def test_plots_show_loss_test_acc_and_v(tmp_path: Path):
    cell = tmp_path / "results" / "tiny" / "cells" / "c0"
    cell.mkdir(parents=True)
    columns = list(REQUIRED) + ["test_loss"]
    (cell / "history.csv").write_text(",".join(columns) + "\n" + ",".join("0" for _ in columns) + "\n")
    doc = top_level(tmp_path, {"results_dir": "results", "experiments": {"tiny": {}}})
    plots = {name: spec for entry in doc["plots"] for name, spec in entry.items()}
    ys = {name: set(next(iter(spec["y"].values()))) for name, spec in plots.items()}
    assert ys == {"tiny_accuracy": {"train_acc", "test_acc"}, "tiny_loss": {"loss", "test_loss"},
                  "tiny_norm": {"V"}}
    assert all(spec["x"] == "step" for spec in plots.values())
