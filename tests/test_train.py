import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from nht.config import expand_cells, validate_config
from nht.data import make_modular_dataset
from nht.models import build_model, scale_init
from nht.train import Trainer, train_job

from conftest import tiny_modular


def cells_for(**overrides):
    config = validate_config({"experiments": {"e": tiny_modular(**overrides)}})
    return expand_cells(config)


def data_for(cell):
    return make_modular_dataset(cell["op"], cell["p"], cell["train_frac"], cell["split_seed"])


@pytest.mark.parametrize("model", [{"name": "mlp", "embed_dim": 8, "hidden": 32},
                                   {"name": "transformer", "d_model": 16, "n_heads": 4, "d_ff": 32}])
def test_vectorised_adamw_matches_torch_adamw_for_one_cell(model):
    cell = cells_for(weight_decay=0.7, init_scale=2.0, lr=0.005, model=model)[0]
    data = data_for(cell)
    trainer = Trainer([cell], data, torch.device("cpu"))
    torch.manual_seed(cell["seed"])
    model = scale_init(build_model(cell["model"], cell["p"]), 2.0)
    opt = torch.optim.AdamW(model.parameters(), lr=0.005, weight_decay=0.7, betas=(0.9, 0.98),
                            eps=1e-8, foreach=False)
    x, y = torch.as_tensor(data["x_train"]), torch.as_tensor(data["y_train"])
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        trainer.train_step()
    for name, ref in model.named_parameters():
        mine, ref = trainer.params[name][0].detach(), ref.detach()
        if name == "attn.qkv.bias":
            # The key bias adds q.b_k to both attention scores, so softmax cancels it: its
            # gradient is zero up to rounding, and Adam turns that rounding noise into full
            # lr-sized steps, different under any change of summation order. Compare the rest.
            d = cell["model"]["d_model"]
            mine, ref = torch.cat([mine[:d], mine[2 * d:]]), torch.cat([ref[:d], ref[2 * d:]])
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(trainer.forward(trainer.params, x)[0], model(x), rtol=1e-4, atol=1e-4)


def _run(cells, data, tmp_path, tag, **kw):
    meta = train_job(cells, data, tmp_path / f"{tag}.csv", tmp_path / f"{tag}.json", **kw)
    return pd.read_csv(tmp_path / f"{tag}.csv"), meta


@pytest.mark.parametrize("batch_size", ["full", 64])
def test_batched_training_equals_one_cell_at_a_time(tmp_path, batch_size):
    cells = cells_for(weight_decay=[0.5, 1.0], init_scale=[1, 3], lr=[0.01, 0.003], seed=[0, 1],
                      batch_size=batch_size, max_steps=200)
    data = data_for(cells[0])
    together, meta = _run(cells, data, tmp_path, "together", threads=1)
    for cell in cells:
        alone, meta1 = _run([cell], data, tmp_path, cell.id, threads=1)
        mine = together[together["cell"] == cell.id].reset_index(drop=True)
        assert list(mine["step"]) == list(alone["step"])
        for col in ("train_acc", "test_acc"):
            assert (mine[col] - alone[col]).abs().max() <= 1.0 / 50  # at most one example flips
        for col in ("train_loss", "V"):
            torch.testing.assert_close(torch.tensor(mine[col].values), torch.tensor(alone[col].values),
                                       rtol=1e-3, atol=1e-4)
        assert meta["cells"][cell.id]["stop_step"] == meta1["cells"][cell.id]["stop_step"]


def test_nan_loss_marks_only_that_cell_diverged(tmp_path):
    cells = cells_for(lr=[0.01, 1e30], weight_decay=0.5, init_scale=1, optimizer={"name": "sgd"})
    hist, meta = _run(cells, data_for(cells[0]), tmp_path, "nan", threads=1)
    status = {c["lr"]: meta["cells"][c.id]["status"] for c in cells}
    assert status[1e30] == "diverged" and status[0.01] == "finished"
    bad = next(c for c in cells if c["lr"] == 1e30)
    assert meta["cells"][bad.id]["stop_step"] < 10


def test_stop_rule_stops_at_margin_after_generalisation(tmp_path):
    # a tiny threshold: the first evaluation with one correct test example triggers the rule
    cells = cells_for(lr=0.03, weight_decay=0.1, init_scale=1, max_steps=2000, stop_margin=60,
                      test_threshold=1e-6)
    hist, meta = _run(cells, data_for(cells[0]), tmp_path, "stop", threads=1)
    first = hist.loc[hist["test_acc"] >= 1e-6, "step"].min()
    assert first < 2000 - 60
    assert meta["cells"][cells[0].id]["stop_step"] == first + 60
    assert meta["cells"][cells[0].id]["stop_reason"] == "generalised+margin"


def _train_cmd(cells, dataset, out, ckpt):
    job = {"experiment": "e", "job": "j", "cells": [{"id": c.id, "settings": c.settings} for c in cells]}
    return [sys.executable, "-m", "nht", "train", "--job", json.dumps(job), "--dataset", str(dataset),
            "--history", str(out / "history.csv"), "--meta", str(out / "meta.json"),
            "--checkpoint", str(ckpt), "--device", "cpu", "--threads", "1"]


def test_sigkill_and_rerun_resumes_to_identical_metrics(tmp_path):
    from nht.data import save_dataset

    cells = cells_for(weight_decay=[0.5, 1.0], init_scale=1, batch_size=32, max_steps=3000,
                      stop_margin=10 ** 6, checkpoint_seconds=0)
    dataset = tmp_path / "d.npz"
    save_dataset(data_for(cells[0]), dataset)
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref_dir.mkdir(), run_dir.mkdir()
    subprocess.run(_train_cmd(cells, dataset, ref_dir, ref_dir / "ckpt.pt"), check=True, capture_output=True)

    ckpt = run_dir / "ckpt.pt"
    proc = subprocess.Popen(_train_cmd(cells, dataset, run_dir, ckpt), stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    assert proc.poll() is None, "training ended before it could be killed; make the test run longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (run_dir / "history.csv").exists()
    resumed_at = torch.load(ckpt, weights_only=False)["trainer"]["step"]
    assert 0 < resumed_at < 3000

    subprocess.run(_train_cmd(cells, dataset, run_dir, ckpt), check=True, capture_output=True)
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["resumed_from_step"] >= resumed_at
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "history.csv"), pd.read_csv(ref_dir / "history.csv"))
    assert not ckpt.exists(), "checkpoint is removed once the job has finished"


def test_bf16_autocast_tracks_fp32(tmp_path):
    cells = cells_for(weight_decay=0.5, init_scale=1, max_steps=100)
    data = data_for(cells[0])
    ref, _ = _run(cells, data, tmp_path, "fp32", threads=1)
    low, meta = _run(cells, data, tmp_path, "bf16", threads=1, precision="bf16")
    assert meta["provenance"]["precision"] == "bf16"
    assert list(low["step"]) == list(ref["step"])
    # bf16 has ~3 significant digits: the curves agree loosely, not bitwise
    assert (low["V"] / ref["V"] - 1).abs().max() < 0.05
    assert (low["train_loss"] - ref["train_loss"]).abs().max() < 0.1
    assert not low["V"].equals(ref["V"])
