"""Models, squared norms, worst-group accuracy, training, resume after a kill, NaN handling, summary."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from nht.config import ConfigError, expand_cells, validate_config
from nht.domains.images import data, shortcuts
from nht.domains.images.models import ResNet18, SimpleCNN, build_model, n_params
from nht.domains.images.norms import classify_regime, squared_norms, transition_epoch
from nht.domains.images.summary import mean_sd_n, write_summary
from nht.domains.images.train import group_accuracies, train_cell


def _cell(tmp_path, **over):
    exp = {"kind": "image", "dataset": {"name": "digits", "source": "sklearn"}, "rho": 0.9,
           "weight_decay": 0.1, "epochs": 3, "batch_size": 64,
           "model": {"name": "simple_cnn", "width_mult": 0.25}, "checkpoint_seconds": 0}
    exp.update(over)
    cfg = validate_config({"experiments": {"t": exp}})
    cell = expand_cells(cfg)[0]
    raw = data.load_digits()
    d = shortcuts.inject(raw, cell["rho"], cell["border"], cell["seed"], n_train=256, n_test=128)
    path = tmp_path / "data.npz"
    data.save_npz(d, path)
    return cell, path


def test_simple_cnn_matches_paper_size():
    assert n_params(SimpleCNN(10)) == 287_912
    assert all(not isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in SimpleCNN().modules())
    assert SimpleCNN(10, 0.5)(torch.zeros(2, 3, 16, 16)).shape == (2, 10)


def test_resnet18_matches_torchvision_adapted():
    import torchvision
    tv = torchvision.models.resnet18(num_classes=10)
    tv.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    tv.maxpool = nn.Identity()
    assert n_params(ResNet18(10)) == n_params(tv)
    assert n_params(ResNet18(10, 0.25, norm="groupnorm")) == n_params(ResNet18(10, 0.25))
    small = build_model({"name": "resnet18", "width_mult": 0.125, "norm": "none"}, 10)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in small.modules())
    assert small(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_squared_norms_by_hand():
    m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
        m[0].bias.copy_(torch.tensor([3.0, 0.0]))
    v = squared_norms(m)
    # linear: 1 + 4 + 0 + 1 + 9 = 15; batchnorm: weight ones (2) + bias zeros (0) = 2
    assert v["V_layer:0"] == pytest.approx(15.0) and v["V_layer:1"] == pytest.approx(2.0)
    assert v["V"] == pytest.approx(17.0) and v["V_no_norm"] == pytest.approx(15.0)


def test_worst_group_accuracy_by_hand():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    a = np.array([0, 0, 1, 1, 0, 1, 1, 1, 1])
    p = np.array([0, 0, 0, 1, 0, 1, 1, 1, 0])
    accs, worst = group_accuracies(p, y, a)
    # (y0,a0): 2/2, (y0,a1): 1/2, (y1,a0): 0/1, (y1,a1): 3/4
    assert accs == {"group_acc:y0_a0": 1.0, "group_acc:y0_a1": 0.5, "group_acc:y1_a0": 0.0,
                    "group_acc:y1_a1": 0.75}
    assert worst == 0.0


def test_regimes_and_transition():
    th = (1.0, 40.0)
    assert classify_regime(0.5, "ok", th) == "weak"
    assert classify_regime(22.0, "ok", th) == "intermediate"
    assert classify_regime(50.0, "ok", th) == "strong"
    assert classify_regime(None, "diverged", th) == "diverged"
    ep = [0, 1, 2, 3, 4]
    assert transition_epoch(ep, [.1, .2, .3, .6, .7], [.1, .8, .9, .3, .1], 0.5, 0.5) == 3
    assert transition_epoch(ep, [.1, .6, .6, .6, .7], [.1, .1, .1, .1, .1], 0.5, 0.5) is None


def test_mean_sd_n():
    assert mean_sd_n([0.5]) == [0.5, 0.0, 1]
    m, sd, n = mean_sd_n([1.0, 3.0])
    assert (m, n) == (2.0, 2) and sd == pytest.approx(np.sqrt(2))


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="experiments.x.rho"):
        validate_config({"experiments": {"x": {"kind": "image", "rho": 1.5,
                                               "dataset": {"name": "digits", "source": "sklearn"}}}})
    with pytest.raises(ConfigError, match="experiments.x.dataset.name"):
        validate_config({"experiments": {"x": {"kind": "image", "dataset": {"name": "mnist", "source": "sklearn"}}}})


def test_train_outputs_and_resume_equivalence(tmp_path):
    cell, path = _cell(tmp_path)
    full = train_cell(cell.settings, path, tmp_path / "full", threads=1, cell_id=cell.id)
    assert full["status"] == "ok" and not (tmp_path / "full" / "checkpoint.pt").exists()
    h_full = pd.read_csv(tmp_path / "full" / "history.csv")
    assert list(h_full["epoch"]) == [0, 1, 2, 3]
    for col in ("train_acc", "clean_acc", "aligned_acc", "conflicting_acc", "shortcut_only_acc", "reliance",
                "V", "V_no_norm", "V_layer:fc2"):
        assert col in h_full.columns
    norms = json.loads((tmp_path / "full" / "norms.json").read_text())
    for key in ("V_init", "V_peak", "epoch_peak", "V_final", "decay_pct", "regime", "transition_epoch",
                "decay_budget", "provenance"):
        assert key in norms
    assert norms["provenance"]["torch"] == torch.__version__

    # killed after epoch 1 (checkpoint on disk, no outputs), then resumed
    part = train_cell(cell.settings, path, tmp_path / "part", threads=1, cell_id=cell.id, stop_after_epoch=1)
    assert part["status"] == "stopped" and (tmp_path / "part" / "checkpoint.pt").exists()
    assert not (tmp_path / "part" / "history.csv").exists()
    train_cell(cell.settings, path, tmp_path / "part", threads=1, cell_id=cell.id)
    h_res = pd.read_csv(tmp_path / "part" / "history.csv")
    pd.testing.assert_frame_equal(h_full.drop(columns="wall_s"), h_res.drop(columns="wall_s"))


def test_checkpoint_of_other_code_or_cell_is_ignored_and_loads_weights_only(tmp_path, capsys):
    cell, path = _cell(tmp_path)
    train_cell(cell.settings, path, tmp_path / "c", threads=1, cell_id=cell.id, stop_after_epoch=1)
    ckpt = tmp_path / "c" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)               # only tensors and plain values inside
    assert state["cell_id"] == cell.id and state["code"]
    state["code"] = "0" * 16                                  # written by another version of the trainer
    torch.save(state, ckpt)
    res = train_cell(cell.settings, path, tmp_path / "c", threads=1, cell_id=cell.id)
    assert res["status"] == "ok"
    assert "trainer's code changed" in capsys.readouterr().err
    h = pd.read_csv(tmp_path / "c" / "history.csv")
    assert list(h["epoch"]) == [0, 1, 2, 3]                   # trained from scratch, complete
    train_cell(cell.settings, path, tmp_path / "d", threads=1, cell_id=cell.id, stop_after_epoch=1)
    train_cell(cell.settings, path, tmp_path / "d", threads=1, cell_id="another-cell", stop_after_epoch=2)
    assert "belongs to cell" in capsys.readouterr().err


def test_sigkill_then_resume(tmp_path):
    # long enough that the kill lands mid-run even with the faster channels-last training
    cell, path = _cell(tmp_path, epochs=40)
    out = tmp_path / "cell"
    cmd = [sys.executable, "-m", "nht", "image-train", "--settings", json.dumps(cell.settings),
           "--data", str(path), "--out", str(out), "--cell", cell.id, "--threads", "1", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoint.pt").exists() and not (out / "norms.json").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert 1 <= state["epoch"] < 40
    subprocess.run(cmd, check=True, capture_output=True)
    ref = tmp_path / "ref"
    train_cell(cell.settings, path, ref, threads=1, cell_id=cell.id)
    a = pd.read_csv(out / "history.csv").drop(columns="wall_s")
    b = pd.read_csv(ref / "history.csv").drop(columns="wall_s")
    pd.testing.assert_frame_equal(a, b)


def test_nan_becomes_diverged(tmp_path):
    cell, path = _cell(tmp_path, optimizer={"name": "sgd", "momentum": 0.9}, lr=1e12, epochs=3)
    res = train_cell(cell.settings, path, tmp_path / "nan", threads=1, cell_id=cell.id)
    assert res["status"] == "diverged" and res["regime"] == "diverged"
    h = pd.read_csv(tmp_path / "nan" / "history.csv")
    assert h["V"].isna().iloc[-1]
    norms = json.loads((tmp_path / "nan" / "norms.json").read_text())
    assert norms["status"] == "diverged"


def test_experiment_summary_keys(tmp_path):
    paths = []
    for wd in (0.01, 1.0):
        for rho in (0.1, 1.0):
            cell, path = _cell(tmp_path, rho=rho, weight_decay=wd, epochs=2)
            out = tmp_path / cell.id
            train_cell(cell.settings, path, out, threads=1, cell_id=cell.id)
            paths.append(str(out / "norms.json"))
    from nht.domains.images.figures import make_figures
    figs = make_figures(paths, tmp_path / "figs")
    assert all(os.path.getsize(f) > 1000 for f in figs)
    res = write_summary(paths, "t", {"reference_weight_decay": None}, figs, tmp_path / "s.json",
                        tmp_path / "cells.csv")
    for key in ("kind", "cells", "clean_acc_by_strength", "regimes", "decay_from_peak", "norm_ratio",
                "worst_group_acc", "figures", "provenance"):
        assert key in res
    assert res["kind"] == "image" and res["cells"] == 4
    assert set(res["clean_acc_by_strength"]) == {"0.1", "1"}
    assert res["clean_acc_by_strength"]["1"][2] == 1
    assert set(res["decay_from_peak"]) == {"0.01", "1"}
    assert res["worst_group_acc"] is None and res["norm_ratio"] > 0
    assert sum(res["regimes"].values()) == 4
    assert len(pd.read_csv(tmp_path / "cells.csv")) == 4
    # clean-norm separation from the histories: every cell whose reliance passed 0.5 at an
    # epoch >= 1 is scored, and the scorecard's P5 reads the same S
    sep = res["clean_norm_separation"]
    fitted = set()
    for p in paths:
        h = pd.read_csv(os.path.join(os.path.dirname(p), "history.csv"))
        if ((h["epoch"] >= 1) & (h["reliance"] > 0.5)).any():
            fitted.add(json.loads(open(p).read())["cell"])
    assert set(sep["per_cell"]) == fitted
    assert sep["verdict"] in ("holds", "fails", "not_enough_data")
    from nht.science.scorecard import build_scorecard
    p5 = build_scorecard(res, "image")["P5_clean_separation"]
    assert p5["statistic"] == sep["S"]
