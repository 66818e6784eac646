"""Stacked image cells (issue 21): a job of C cells gives each cell the history of its one-cell job
(the modular equivalence tolerance), NaN in one cell leaves the others alone, nothing is read back
between evaluations, and the ResNet18 fast path (bf16 autocast, channels-last) runs on the CPU."""

import numpy as np
import pandas as pd
import pytest
import torch

from nht.config import expand_cells, validate_config
from nht.core import loop
from nht.domains.images import data, shortcuts
from nht.domains.images.train import ImageJob, load_job_data, train_job

from test_step import SyncLog       # records the step at every read-back to the host

RAW = {}


def job_cells(tmp_path, **over):
    """Cells of a tiny digits experiment and each cell's shortcut dataset file."""
    exp = {"kind": "image", "dataset": {"name": "digits", "source": "sklearn"}, "rho": 0.9,
           "weight_decay": 0.1, "epochs": 3, "batch_size": 50,
           "model": {"name": "simple_cnn", "width_mult": 0.25}, "checkpoint_seconds": 0}
    exp.update(over)
    cells = expand_cells(validate_config({"experiments": {"t": exp}}))
    if "digits" not in RAW:
        RAW["digits"] = data.load_digits()
    paths = []
    for c in cells:
        path = tmp_path / f"{c.dataset_id}.npz"
        if not path.exists():
            data.save_npz(shortcuts.inject(RAW["digits"], c["rho"], c["border"], c["seed"], n_train=200, n_test=100),
                          path)
        paths.append(path)
    return [(c.id, c.settings) for c in cells], paths


def run(tmp_path, cells, paths, tag, **kw):
    meta = train_job(cells, paths, tmp_path / f"{tag}.csv", tmp_path / f"{tag}.json", device="cpu", threads=1,
                     job_id=tag, **kw)
    return pd.read_csv(tmp_path / f"{tag}.csv"), meta


def assert_same_cell(together, meta, alone, meta1, cell):
    """The modular equivalence tolerance (tests/test_train.py): accuracies within one example of
    200 / 100, loss and V to rtol 1e-3, atol 1e-4; the meta's record equal (sum_lr to rounding)."""
    mine = together[together["cell"] == cell].reset_index(drop=True)
    ref = alone[alone["cell"] == cell].reset_index(drop=True)
    assert list(mine["step"]) == list(ref["step"]) and list(mine["epoch"]) == list(ref["epoch"])
    for col in ("train_acc", "test_acc", "aligned_acc", "conflicting_acc", "shortcut_only_acc", "phi"):
        assert (mine[col] - ref[col]).abs().max() <= 1.0 / 100 + 1e-12, col
    for col in ("loss", "V", "V_no_norm", "Lambda", "lr"):
        torch.testing.assert_close(torch.tensor(mine[col].values, dtype=torch.float64), torch.tensor(ref[col].values, dtype=torch.float64),
                                   rtol=1e-3, atol=1e-4, equal_nan=True)
    a, b = dict(meta["cells"][cell]), dict(meta1["cells"][cell])
    assert a.pop("sum_lr") == pytest.approx(b.pop("sum_lr"), rel=1e-12) and a == b


@pytest.mark.parametrize("stack", ["vmap", "loop"])
@pytest.mark.parametrize("over", [
    {"lr": [0.001, 0.003], "weight_decay": [0.1, 1.0], "seed": [0, 1], "rho": [0.5, 0.9]},
    {"model": {"name": "mlp", "hidden": [32, 32]}, "optimizer": {"name": "sgd", "momentum": 0.9}, "lr": [0.01, 0.03],
     "weight_decay": [0.0, 0.5], "input_noise": 0.3, "lr_schedule": "constant"},
])
def test_stacked_cells_have_their_one_cell_histories(tmp_path, over, stack):
    """vmap (the CUDA default) and the loop over cells (the CPU default) against jobs of one cell."""
    cells, paths = job_cells(tmp_path, **over)
    together, meta = run(tmp_path, cells, paths, "together", stack=stack)
    assert meta["provenance"]["stack"] == stack
    assert meta["n_cells"] == len(cells) and set(together["cell"]) == {c for c, _ in cells}
    for (cell, s), path in zip(cells, paths):
        alone, meta1 = run(tmp_path, [(cell, s)], [path], "alone")
        assert_same_cell(together, meta, alone, meta1, cell)


def test_per_cell_init_scale_in_one_job(tmp_path):
    (c0, s0), paths = job_cells(tmp_path)[0][0], job_cells(tmp_path)[1]
    s1 = dict(s0, model=dict(s0["model"], init_scale=2.0))
    cells = [(c0, s0), ("scaled", s1)]
    together, meta = run(tmp_path, cells, paths * 2, "together", stack="vmap")
    for cell, s in cells:
        alone, meta1 = run(tmp_path, [(cell, s)], paths, "alone")
        assert_same_cell(together, meta, alone, meta1, cell)
    v0 = together[(together["cell"] == c0) & (together["step"] == 0)]["V"].item()
    v1 = together[(together["cell"] == "scaled") & (together["step"] == 0)]["V"].item()
    assert v1 == pytest.approx(4 * v0, rel=1e-5)


def test_a_diverging_cell_leaves_the_others_unchanged(tmp_path):
    cells, paths = job_cells(tmp_path, optimizer={"name": "sgd", "momentum": 0.9}, lr=[0.01, 1e12])
    together, meta = run(tmp_path, cells, paths, "together", stack="vmap")
    status = {c: meta["cells"][c]["status"] for c, _ in cells}
    good = next(c for c, s in cells if s["lr"] == 0.01)
    bad = next(c for c, s in cells if s["lr"] == 1e12)
    assert status == {good: "finished", bad: "diverged"}
    assert meta["cells"][bad]["stop_reason"] == "non-finite loss" and meta["cells"][bad]["epochs_done"] < 3
    alone, meta1 = run(tmp_path, [c for c in cells if c[0] == good], paths[:1], "alone")
    assert_same_cell(together, meta, alone, meta1, good)
    bad_alone, meta2 = run(tmp_path, [c for c in cells if c[0] == bad], paths[:1], "bad")
    assert meta2["cells"][bad] == meta["cells"][bad]
    assert np.isfinite(together[together["cell"] == bad]["V"]).all()


def test_cells_of_one_job_must_share_the_schedule(tmp_path):
    cells, paths = job_cells(tmp_path)
    other = (cells[0][0] + "x", dict(cells[0][1], epochs=4))
    with pytest.raises(ValueError, match="disagree on 'epochs'"):
        ImageJob(cells + [other], *load_job_data(paths * 2), torch.device("cpu"))
    res = job_cells(tmp_path, model={"name": "resnet18", "width_mult": 0.125}, lr=[0.001, 0.002])
    with pytest.raises(ValueError, match="one cell per job"):
        ImageJob(res[0], *load_job_data(res[1]), torch.device("cpu"))


def test_the_image_step_reads_nothing_back_between_evaluations(tmp_path):
    cells, paths = job_cells(tmp_path, lr=[0.001, 0.003])
    job = ImageJob(cells, *load_job_data(paths), torch.device("cpu"), stack="vmap")
    with SyncLog(job) as log:
        res = loop.run(job, code_module="nht.domains.images.train", progress_every_s=1e9)
    assert {st["status"] for st in res.status.values()} == {"finished"}
    assert sorted(set(log.steps)) == [0, 4, 8, 12], log.steps      # 4 steps per epoch: epoch ends only


@pytest.mark.parametrize("norm", ["batchnorm", "groupnorm"])
def test_resnet18_fast_path_runs_on_the_cpu(tmp_path, norm):
    """bf16 autocast with fp32 parameters and optimizer state, channels-last, the images resident
    as uint8 on the device, no DataLoader; a checkpoint keeps BatchNorm's running statistics."""
    cells, paths = job_cells(tmp_path, model={"name": "resnet18", "width_mult": 0.125, "norm": norm}, epochs=2)
    hist, meta = run(tmp_path, cells, paths, "fast", precision="bf16", deterministic=False)
    cell = cells[0][0]
    assert meta["cells"][cell]["status"] == "finished" and meta["provenance"]["precision"] == "bf16"
    assert np.isfinite(hist["loss"].iloc[1:]).all() and list(hist["epoch"]) == [0, 1, 2]
    if norm == "batchnorm":
        assert (hist["V_no_norm"] < hist["V"]).all() and "bn1.weight" in meta["norm_layer_tensors"]
    job = ImageJob(cells, *load_job_data(paths), torch.device("cpu"), precision="bf16")
    assert job.flat.dtype == torch.float32 and job.x_train.dtype == torch.uint8
    ckpt = tmp_path / "ckpt.pt"
    part = train_job(cells, paths, tmp_path / "p.csv", tmp_path / "p.json", ckpt, device="cpu", threads=1,
                     precision="bf16", stop_after_epoch=1)
    assert part == {"aborted_at": 4}
    state = torch.load(ckpt, weights_only=True)["domain"]
    if norm == "batchnorm":
        assert any(k.endswith("running_mean") for k in state["buffers"])
    train_job(cells, paths, tmp_path / "p.csv", tmp_path / "p.json", ckpt, device="cpu", threads=1, precision="bf16")
    resumed = pd.read_csv(tmp_path / "p.csv")
    again, _ = run(tmp_path, cells, paths, "again", precision="bf16")
    pd.testing.assert_frame_equal(resumed.drop(columns="wall_s"), again.drop(columns="wall_s"))
