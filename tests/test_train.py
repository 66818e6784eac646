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
from nht.domains.modular.data import make_modular_dataset
from nht.core.norms import scale_init
from nht.domains.modular.models import build_model
from nht.core.fingerprint import code_fingerprint
from nht.core.history import REQUIRED, ordered_columns
from nht.core.loop import load_checkpoint
from nht.domains.modular.train import Trainer, train_job

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


def trainer_code_hash():
    return code_fingerprint("nht.domains.modular.train")


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
        for col in ("loss", "V"):
            torch.testing.assert_close(torch.tensor(mine[col].values), torch.tensor(alone[col].values),
                                       rtol=1e-3, atol=1e-4)
        assert meta["cells"][cell.id]["stop_step"] == meta1["cells"][cell.id]["stop_step"]


def test_history_follows_the_schema(tmp_path):
    cells = cells_for(lr=[0.01, 0.003], weight_decay=0.5, init_scale=1, max_steps=100)
    hist, meta = _run(cells, data_for(cells[0]), tmp_path, "schema", threads=1)
    assert list(hist.columns) == ["cell"] + ordered_columns(hist.columns[1:])
    assert list(hist.columns[1:len(REQUIRED) + 1]) == list(REQUIRED) and "test_loss" in hist.columns
    assert [c for c in hist.columns if c.startswith("V:")] == ["V:" + k for k in Trainer(
        cells, data_for(cells[0]), torch.device("cpu")).layout.names]
    lr = hist["cell"].map({c.id: c["lr"] for c in cells})
    assert (hist["Lambda"] - lr * 0.5 * hist["step"]).abs().max() < 1e-9      # eta * lambda * step
    assert (hist["phi"] - (1 - hist["test_acc"])).abs().max() < 1e-9
    per_tensor = hist[[c for c in hist.columns if c.startswith("V:")]].sum(axis=1)
    assert ((per_tensor - hist["V"]).abs() / hist["V"]).max() < 1e-6          # V = sum of V:<tensor>
    assert set(meta["cells"][cells[0].id]) == {"status", "stop_step", "stop_reason", "lr", "weight_decay",
                                               "init_scale", "seed"}
    for key in ("stop_rule", "settings", "wall_seconds", "cell_steps", "cell_steps_per_second",
                "resumed_from_step", "provenance"):
        assert key in meta
    assert meta["provenance"]["device"] == "cpu" and meta["provenance"]["code_version"]


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
    from nht.domains.modular.data import save_dataset

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
    resumed_at = torch.load(ckpt, weights_only=True)["domain"]["step"]   # tensors and plain values only
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
    assert (low["loss"] - ref["loss"]).abs().max() < 0.1
    assert not low["V"].equals(ref["V"])


def test_sampling_with_replacement_is_the_companions_randint_stream():
    """set_seed(s); Model(p); then torch.randint(0, n, (b,)) per step: the companion's minibatches."""
    from nht.domains.modular.models import CompanionTransformer

    model = {"name": "transformer", "d_model": 16, "n_heads": 4, "d_ff": 32}
    cells = cells_for(model=model, seed=[3, 42], weight_decay=1.0, init_scale=1, batch_size=64)
    data = data_for(cells[0])
    n = len(data["y_train"])
    trainer = Trainer(cells, data, torch.device("cpu"))
    for pos, cell in enumerate(cells):
        torch.manual_seed(cell["seed"])
        CompanionTransformer(cell["p"], 16, 4, 32)
        expected = [torch.randint(0, n, (64,)) for _ in range(3)]
        got = [trainer.samplers[pos].next() for _ in range(3)]
        for e, g in zip(expected, got):
            assert torch.equal(e, g)
        assert len(set(got[0].tolist())) < 64           # with replacement: repeats within a batch
    shuffled = Trainer(cells_for(model=model, seed=3, weight_decay=1.0, init_scale=1, batch_size=16,
                                 sampling="epoch_shuffle"), data, torch.device("cpu"))
    first_epoch = torch.cat([shuffled.samplers[0].next() for _ in range(-(-n // 16))])
    assert sorted(first_epoch.tolist()) == list(range(n))   # epoch_shuffle: each example once


def _interrupted_checkpoint(tmp_path, cells, data):
    ckpt = tmp_path / "ckpt.pt"
    out = train_job(cells, data, tmp_path / "h.csv", tmp_path / "m.json", ckpt, threads=1, stop_after_steps=100)
    assert out == {"aborted_at": 100} and ckpt.exists()
    assert not list(tmp_path.glob("*.tmp")), "temporary checkpoint files are renamed or removed"
    return ckpt


def test_checkpoint_loads_weights_only_and_resumes(tmp_path, capfd):
    cells = cells_for(weight_decay=[0.5, 1.0], init_scale=1, batch_size=16, max_steps=200,
                      stop_margin=10 ** 6, checkpoint_seconds=0)
    data = data_for(cells[0])
    ckpt = _interrupted_checkpoint(tmp_path, cells, data)
    state = torch.load(ckpt, weights_only=True)
    assert state["code"] == trainer_code_hash() and state["domain"]["step"] == 100
    meta = train_job(cells, data, tmp_path / "h.csv", tmp_path / "m.json", ckpt, threads=1)
    assert meta["resumed_from_step"] == 100
    assert "resumed from checkpoint at step 100" in capfd.readouterr().err


def test_checkpoint_from_other_code_or_garbage_is_ignored_and_the_job_starts_fresh(tmp_path, capfd):
    cells = cells_for(weight_decay=[0.5, 1.0], init_scale=1, batch_size=16, max_steps=200,
                      stop_margin=10 ** 6, checkpoint_seconds=0)
    data = data_for(cells[0])
    ref = train_job(cells, data, tmp_path / "ref.csv", tmp_path / "ref.json", None, threads=1)
    ckpt = _interrupted_checkpoint(tmp_path, cells, data)
    state = torch.load(ckpt, weights_only=True)
    state["code"] = "0" * 16                                  # as written by another version of the trainer
    torch.save(state, ckpt)
    assert load_checkpoint(ckpt, state["signature"], trainer_code_hash())[0] is None
    capfd.readouterr()
    meta = train_job(cells, data, tmp_path / "h.csv", tmp_path / "m.json", ckpt, threads=1)
    err = capfd.readouterr().err
    assert meta["resumed_from_step"] is None
    assert "ignoring checkpoint" in err and "other code" in err and "starting fresh" in err
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "h.csv"), pd.read_csv(tmp_path / "ref.csv"))
    assert meta["cells"] == ref["cells"]

    ckpt.write_bytes(b"not a checkpoint")
    meta = train_job(cells, data, tmp_path / "h2.csv", tmp_path / "m2.json", ckpt, threads=1)
    assert meta["resumed_from_step"] is None and "unreadable" in capfd.readouterr().err


class _Opaque:
    """A class the weights-only unpickler does not know."""


def test_a_checkpoint_with_pickled_objects_is_refused_by_the_weights_only_load(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"signature": "x", "code": trainer_code_hash(), "domain": _Opaque()}, path)
    state, why = load_checkpoint(path, "x", trainer_code_hash())
    assert state is None and why.startswith("unreadable"), why


def test_norm_layer_tensors_reach_the_cell_records(tmp_path):
    """The trainer lists its normalisation-layer tensors by module type (nht.core.norms), and the
    norms stage marks exactly those under ``layers`` (science's P4 reads the mark, not names)."""
    from torch import nn
    from nht.stages import norms as norms_stage

    model = {"name": "transformer", "d_model": 16, "n_heads": 4, "d_ff": 32}
    cells = cells_for(lr=0.01, weight_decay=0.5, init_scale=1, max_steps=20, model=model)
    hist, meta = _run(cells, data_for(cells[0]), tmp_path, "ln", threads=1)
    module = build_model(cells[0]["model"], cells[0]["p"])
    by_type = [n for n, p in module.named_parameters()
               if any(p is q for m in module.modules() if isinstance(m, nn.LayerNorm) for q in m.parameters())]
    assert by_type and meta["norm_layer_tensors"] == by_type
    out = tmp_path / "norms.json"
    norms_stage.main(["--job-history", str(tmp_path / "ln.csv"), "--meta", str(tmp_path / "ln.json"),
                      "--cell", cells[0].id, "--kind", "modular", "--settings", json.dumps(cells[0].run_settings),
                      "--out-history", str(tmp_path / "h.csv"), "--out-norms", str(out)])
    layers = json.loads(out.read_text())["layers"]
    assert {n for n, layer in layers.items() if layer["norm_layer"]} == set(by_type)
