"""Models, squared norms, worst-group accuracy, training (history schema, meta), resume after a kill,
NaN handling, input noise, time limit."""

import json
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
from nht.core.history import ordered_columns, read_history
from nht.core.loop import signature
from nht.core.norms import squared_norms, stacked_squared_norms
from nht.domains.images.summary import mean_sd_n
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
    # linear: weight 1 + 4 + 0 + 1 = 6, bias 9; batchnorm: weight ones (2) + bias zeros (0) = 2
    assert v["V:0.weight"] == 6.0 and v["V:0.bias"] == 9.0 and v["V:1.weight"] == 2.0 and v["V:1.bias"] == 0.0
    assert v["V"] == pytest.approx(17.0) and v["V_no_norm"] == pytest.approx(15.0)
    stacked = stacked_squared_norms({"w": torch.stack([m[0].weight, 2 * m[0].weight])})
    assert stacked["V:w"].tolist() == [6.0, 24.0] and stacked["V"].dtype == torch.float64


def test_worst_group_accuracy_by_hand():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    a = np.array([0, 0, 1, 1, 0, 1, 1, 1, 1])
    p = np.array([0, 0, 0, 1, 0, 1, 1, 1, 0])
    accs, worst = group_accuracies(p, y, a)
    # (y0,a0): 2/2, (y0,a1): 1/2, (y1,a0): 0/1, (y1,a1): 3/4
    assert accs == {"group_acc:y0_a0": 1.0, "group_acc:y0_a1": 0.5, "group_acc:y1_a0": 0.0,
                    "group_acc:y1_a1": 0.75}
    assert worst == 0.0


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
    full = train_cell(cell.settings, path, tmp_path / "full", threads=1, cell_id=cell.id)["cells"][cell.id]
    assert full["status"] == "finished" and not (tmp_path / "full" / "checkpoint.pt").exists()
    assert not (tmp_path / "full" / "norms.json").exists(), "training writes no summary"
    h_full = read_history(tmp_path / "full" / "history.csv")
    assert list(h_full["epoch"]) == [0, 1, 2, 3] and list(h_full["step"]) == [0, 4, 8, 12]
    assert list(h_full.columns) == ordered_columns(h_full.columns)
    for col in ("aligned_acc", "conflicting_acc", "shortcut_only_acc", "V_no_norm", "V:fc2.weight", "lr",
                "wall_s"):
        assert col in h_full.columns
    assert not [c for c in h_full.columns if c.startswith("V_layer:") or c in ("clean_acc", "reliance")]
    assert h_full["Lambda"].iloc[0] == 0.0
    assert h_full["Lambda"].iloc[-1] == pytest.approx(0.1 * full["sum_lr"])      # lambda * sum of lr
    meta = json.loads((tmp_path / "full" / "meta.json").read_text())
    # the one training meta shape of every domain: a job (of one cell) with the cell under "cells"
    assert set(meta) == {"job", "experiment", "n_cells", "cells", "settings", "norm_layer_tensors", "wall_seconds",
                         "cell_steps", "cell_steps_per_second", "resumed_from_step", "provenance"}
    assert set(meta["cells"][cell.id]) == {"status", "stop_reason", "steps", "epochs_done", "sum_lr",
                                           "n_params", "n_train", "n_test"}
    assert meta["cells"][cell.id]["epochs_done"] == 3 and meta["cells"][cell.id]["steps"] == 12
    assert meta["cells"][cell.id]["n_train"] == 256 and meta["cell_steps"] == 12
    assert meta["provenance"]["torch"] == torch.__version__ and meta["provenance"]["code_version"]

    # killed after epoch 1 (checkpoint on disk, no outputs), then resumed
    part = train_cell(cell.settings, path, tmp_path / "part", threads=1, cell_id=cell.id, stop_after_epoch=1)
    assert part == {"aborted_at": 4} and (tmp_path / "part" / "checkpoint.pt").exists()
    assert not (tmp_path / "part" / "history.csv").exists()
    res = train_cell(cell.settings, path, tmp_path / "part", threads=1, cell_id=cell.id)
    assert res["cells"][cell.id]["status"] == "finished"
    h_res = pd.read_csv(tmp_path / "part" / "history.csv")
    pd.testing.assert_frame_equal(h_full.drop(columns="wall_s"), h_res.drop(columns="wall_s"))


def test_checkpoint_of_other_code_or_cell_is_ignored_and_loads_weights_only(tmp_path, capsys):
    cell, path = _cell(tmp_path)
    train_cell(cell.settings, path, tmp_path / "c", threads=1, cell_id=cell.id, stop_after_epoch=1)
    ckpt = tmp_path / "c" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)               # only tensors and plain values inside
    assert state["signature"] == signature([cell.id]) and state["code"]
    state["code"] = "0" * 16                                  # written by another version of the trainer
    torch.save(state, ckpt)
    res = train_cell(cell.settings, path, tmp_path / "c", threads=1, cell_id=cell.id)
    assert res["cells"][cell.id]["status"] == "finished"
    assert "written by other code" in capsys.readouterr().err
    h = pd.read_csv(tmp_path / "c" / "history.csv")
    assert list(h["epoch"]) == [0, 1, 2, 3]                   # trained from scratch, complete
    train_cell(cell.settings, path, tmp_path / "d", threads=1, cell_id=cell.id, stop_after_epoch=1)
    train_cell(cell.settings, path, tmp_path / "d", threads=1, cell_id="another-cell", stop_after_epoch=2)
    assert "written for other cells" in capsys.readouterr().err


def test_sigkill_then_resume(tmp_path):
    # long enough that the kill lands mid-run even with the faster channels-last training
    cell, path = _cell(tmp_path, epochs=40)
    out = tmp_path / "job"
    out.mkdir()
    job = {"experiment": "t", "job": "j", "cells": [{"id": cell.id, "settings": cell.settings, "data": path.stem}]}
    cmd = [sys.executable, "-m", "nht", "image-train", "--job", json.dumps(job), "--data", str(path),
           "--history", str(out / "history.csv"), "--meta", str(out / "meta.json"),
           "--checkpoint", str(out / "checkpoint.pt"), "--threads", "1", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoint.pt").exists() and not (out / "meta.json").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert 1 <= state["domain"]["step"] // 4 < 40                       # 4 steps per epoch
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    line = json.loads(done.stdout.strip().splitlines()[-1])           # the stage's one line per cell
    assert line["status"] == "finished" and line["epochs_done"] == 40 and "final_test_acc" in line
    assert not (out / "checkpoint.pt").exists()
    ref = tmp_path / "ref"
    train_cell(cell.settings, path, ref, threads=1, cell_id=cell.id)
    a = pd.read_csv(out / "history.csv").drop(columns=["wall_s", "cell"])
    b = pd.read_csv(ref / "history.csv").drop(columns="wall_s")
    pd.testing.assert_frame_equal(a, b)


def test_nan_becomes_diverged(tmp_path):
    cell, path = _cell(tmp_path, optimizer={"name": "sgd", "momentum": 0.9}, lr=1e12, epochs=3)
    res = train_cell(cell.settings, path, tmp_path / "nan", threads=1, cell_id=cell.id)["cells"][cell.id]
    assert res["status"] == "diverged" and res["epochs_done"] < 3
    h = read_history(tmp_path / "nan" / "history.csv")
    assert np.isfinite(h["V"]).all()                          # the history ends with its last finite row
    meta = json.loads((tmp_path / "nan" / "meta.json").read_text())
    assert meta["cells"][cell.id]["status"] == "diverged"
    assert meta["cells"][cell.id]["stop_reason"].startswith("non-finite")


def test_input_noise_is_seeded_and_lambda_is_the_decay_budget(tmp_path):
    cell, path = _cell(tmp_path, input_noise=0.5, lr_schedule="constant", lr=1e-3)
    train_cell(cell.settings, path, tmp_path / "a", threads=1, cell_id=cell.id)
    hist = pd.read_csv(tmp_path / "a" / "history.csv")
    # Lambda = lambda * sum(lr): constant lr 1e-3, 4 steps per epoch, 3 epochs
    assert hist["Lambda"].iloc[-1] == pytest.approx(0.1 * 1e-3 * 4 * 3)
    train_cell(cell.settings, path, tmp_path / "a2", threads=1, cell_id=cell.id)
    again = pd.read_csv(tmp_path / "a2" / "history.csv")
    pd.testing.assert_frame_equal(hist.drop(columns="wall_s"), again.drop(columns="wall_s"))
    train_cell(dict(cell.settings, input_noise=0.0), path, tmp_path / "q", threads=1, cell_id=cell.id)
    assert not np.allclose(hist["loss"].iloc[1:], pd.read_csv(tmp_path / "q" / "history.csv")["loss"].iloc[1:])


def test_time_limit_stops_at_an_epoch_end(tmp_path):
    cell, path = _cell(tmp_path, epochs=10_000, time_limit_s=0.5)
    res = train_cell(cell.settings, path, tmp_path / "t", threads=1, cell_id=cell.id)["cells"][cell.id]
    assert res["status"] == "time_limit" and 1 <= res["epochs_done"] < 10_000
    assert res["epochs_done"] == len(pd.read_csv(tmp_path / "t" / "history.csv")) - 1


def test_bf16_precision_is_applied_not_ignored(tmp_path):
    """precision: bf16 reaches the image trainer (one precision option for every domain)."""
    cell, path = _cell(tmp_path, epochs=1)
    meta = train_cell(cell.settings, path, tmp_path / "bf16", threads=1, cell_id=cell.id, precision="bf16")
    assert meta["cells"][cell.id]["status"] == "finished" and meta["provenance"]["precision"] == "bf16"
    fp32 = train_cell(cell.settings, path, tmp_path / "fp32", threads=1, cell_id=cell.id)
    assert fp32["provenance"]["precision"] == "fp32"           # the default, auto, is fp32 on the CPU
    h16, h32 = (read_history(tmp_path / d / "history.csv") for d in ("bf16", "fp32"))
    assert np.isfinite(h16["loss"].iloc[1:]).all()
    assert not np.array_equal(h16["loss"].iloc[1:], h32["loss"].iloc[1:])   # the forward ran in bfloat16


def test_auto_precision_is_the_fast_path_on_cuda_and_fp32_on_the_cpu():
    """precision: auto (the default) resolves per device and domain: fp32 on the CPU, bf16 for
    image cells on CUDA (their fast path), fp32 for modular cells; other values are kept."""
    from nht.config import validate_config
    from nht.core.device import resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")      # a device object needs no GPU
    assert resolve_precision("auto", cpu, "bf16") == "fp32" and resolve_precision("auto", cuda, "bf16") == "bf16"
    assert resolve_precision("auto", cuda, "fp32") == "fp32" and resolve_precision("tf32", cuda, "bf16") == "tf32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", cpu)
    from conftest import tiny_modular
    assert validate_config({"experiments": {"e": tiny_modular()}})["precision"] == "auto"
