"""Train one image cell on the shared loop (:mod:`nht.core.loop`): per-epoch accuracies on the four
test sets, shortcut reliance, group accuracies and the squared parameter norms; resumable after
SIGKILL, NaN/Inf -> status ``diverged``.

Outputs in the cell directory::

    history.csv   one row per epoch (epoch 0 = initialisation), the history schema
                  (:mod:`nht.core.history`): step, epoch, Lambda (= lambda * sum of lr over the
                  steps so far), train_acc and loss (running means over the epoch's minibatches),
                  test_acc (clean test set), phi (share of cue-conflicting images classified as
                  the border's class), V (squared L2 norm); then lr, wall_s (seconds),
                  aligned_acc, conflicting_acc, shortcut_only_acc, group_acc:y<y>_a<a> and
                  worst_group_acc (datasets with a spurious attribute), V_no_norm, V:<tensor>
    meta.json     the training meta of every domain (a job of one cell; as
                  :func:`nht.domains.modular.train.train_job` writes): job (= the cell id),
                  experiment, n_cells (1), cells: {cell: {status (finished | diverged |
                  time_limit), stop_reason, steps, epochs_done, sum_lr, n_params, n_train,
                  n_test}}, settings, wall_seconds and cell_steps (this process), cell_steps_per_second,
                  resumed_from_step, provenance
    checkpoint.pt resumable state, written every ``checkpoint_seconds`` at an epoch end; deleted on success

Training computes no summary (the ``norms`` stage reads history and meta). Resuming from the
checkpoint gives the same history as an uninterrupted run: the minibatch order of epoch e is drawn
from a generator seeded by (seed, e), and the model/optimizer state is restored.

Optional settings (absent = the original behaviour):

* ``input_noise``: standard deviation of Gaussian pixel noise added to every training image (in the
  normalised [-1, 1] units), drawn afresh per image and step from a generator seeded by (seed, epoch);
  test images are never noised.
* ``time_limit_s``: stop at the first epoch end after this many SECONDS of training; the cell then ends
  with status ``time_limit`` (its history covers the epochs done).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from nht.core import device as devmod
from nht.core import loop
from nht.core.history import history_csv, ordered_columns
from nht.core.io import write_atomic, write_json
from nht.core.norms import squared_norms
from nht.domains.images.data import load_npz
from nht.domains.images.models import build_model, n_params

TEST_SETS = {"clean": "test_acc", "aligned": "aligned_acc", "conflicting": "conflicting_acc",
             "shortcut_only": "shortcut_only_acc"}      # test set -> history column
NOISE_SEED_OFFSET = 7_919_000_000


def group_accuracies(pred: np.ndarray, y: np.ndarray, a: np.ndarray) -> tuple[dict[str, float], float]:
    """Accuracy of every non-empty group (label y, spurious attribute a) and the worst of them."""
    accs = {}
    for yy in np.unique(y):
        for aa in np.unique(a):
            m = (y == yy) & (a == aa)
            if m.any():
                accs[f"group_acc:y{int(yy)}_a{int(aa)}"] = float((pred[m] == y[m]).mean())
    return accs, min(accs.values())


def lr_at(step: int, total: int, base: float, schedule: str) -> float:
    """The learning rate of update ``step + 1`` (``cosine``: from ``base`` to 0 over ``total`` steps)."""
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    return base


def make_optimizer(model, s: dict):
    opt = s["optimizer"]
    if opt["name"] == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=s["weight_decay"],
                                 betas=tuple(opt["betas"]), eps=opt["eps"])
    return torch.optim.SGD(model.parameters(), lr=s["lr"], weight_decay=s["weight_decay"],
                           momentum=opt["momentum"])


class ImageCell:
    """The image domain of :func:`nht.core.loop.run`: one cell, evaluated at every epoch end."""

    def __init__(self, s: dict, d: dict, device: torch.device, cell_id: str, precision: str = "fp32"):
        self.s, self.device, self.cells, self.active = s, device, [cell_id], [cell_id]
        self.precision = precision          # bf16: autocast of every forward pass (nht.core.device)
        self.x_train = torch.from_numpy(d["x_train"]).to(device)
        self.y_train = torch.from_numpy(d["y_train"]).to(device)
        self.tests = {k: torch.from_numpy(d[f"x_{k}"]).to(device) for k in TEST_SETS}
        self.y_test, self.c_conf, self.a_test = d["y_test"], d["c_conflicting"], d.get("a_test")
        self.memory_format = torch.channels_last if s.get("channels_last", True) else torch.contiguous_format
        self.model = build_model(s["model"], int(len(d["classes"])), tuple(d["x_train"].shape[1:])).to(
            device, memory_format=self.memory_format)
        self.opt = make_optimizer(self.model, s)
        self.n = len(self.y_train)
        self.bs = self.n if s["batch_size"] == "full" else min(int(s["batch_size"]), self.n)
        self.steps_per_epoch = self.eval_every = math.ceil(self.n / self.bs)
        self.max_steps = int(s["epochs"]) * self.steps_per_epoch
        self.noise = float(s.get("input_noise") or 0.0)
        self.step, self.sum_lr = 0, 0.0

    def _normalise(self, xb: torch.Tensor) -> torch.Tensor:
        return ((xb.to(devmod.DTYPE) / 255.0 - 0.5) / 0.5).contiguous(memory_format=self.memory_format)

    def _start_epoch(self, epoch: int) -> None:
        seed = int(self.s["seed"]) * 1_000_003 + epoch
        self.perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed)).to(self.device)
        self.noise_gen = torch.Generator().manual_seed(seed + NOISE_SEED_OFFSET) if self.noise > 0 else None
        self.loss_sum, self.correct, self.seen = 0.0, 0, 0

    def train_step(self) -> torch.Tensor:
        """One minibatch update; returns its loss, shape (1,). A non-finite loss is not applied."""
        i = self.step % self.steps_per_epoch
        if i == 0:
            self._start_epoch(self.step // self.steps_per_epoch + 1)
        idx = self.perm[i * self.bs:(i + 1) * self.bs]
        lr = lr_at(self.step, self.max_steps, self.s["lr"], self.s["lr_schedule"])
        for g in self.opt.param_groups:
            g["lr"] = lr
        xb = self._normalise(self.x_train[idx])
        if self.noise_gen is not None:
            xb = xb + self.noise * torch.randn(xb.shape, generator=self.noise_gen, dtype=xb.dtype).to(self.device)
        with devmod.autocast(self.device, self.precision):
            logits = self.model(xb)
        loss = F.cross_entropy(logits.float(), self.y_train[idx])
        if not torch.isfinite(loss):
            return loss.detach().reshape(1)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        self.sum_lr += lr
        self.loss_sum += loss.item() * len(idx)
        self.correct += int((logits.argmax(1) == self.y_train[idx]).sum())
        self.seen += len(idx)
        return loss.detach().reshape(1)

    @torch.no_grad()
    def _predict(self, x: torch.Tensor) -> np.ndarray:
        self.model.eval()
        batch = int(self.s["eval_batch_size"])
        with devmod.autocast(self.device, self.precision):
            out = [self.model(self._normalise(x[i:i + batch])).argmax(1) for i in range(0, len(x), batch)]
        self.model.train()
        return torch.cat(out).cpu().numpy()

    def evaluate(self, wall_s: float) -> list[dict]:
        """The history row at this epoch end (epoch 0: the initialisation, loss/train_acc NaN)."""
        epoch = self.step // self.steps_per_epoch
        first = epoch == 0
        row = {"step": self.step, "epoch": epoch, "Lambda": float(self.s["weight_decay"]) * self.sum_lr,
               "loss": float("nan") if first else self.loss_sum / self.seen,
               "train_acc": float("nan") if first else self.correct / self.seen,
               "lr": lr_at(self.step, self.max_steps, self.s["lr"], self.s["lr_schedule"]), "wall_s": wall_s}
        preds = {k: self._predict(x) for k, x in self.tests.items()}
        for k, col in TEST_SETS.items():
            row[col] = float((preds[k] == self.y_test).mean())
        row["phi"] = float((preds["conflicting"] == self.c_conf).mean())
        if self.a_test is not None:
            accs, worst = group_accuracies(preds["clean"], self.y_test, self.a_test)
            row.update(accs)
            row["worst_group_acc"] = worst
        row.update(squared_norms(self.model))
        return [row]

    def stop(self, cell: str, row: dict) -> tuple[str, str] | None:
        """Finished after ``epochs``; ``time_limit`` at an earlier epoch end past ``time_limit_s``."""
        if self.step >= self.max_steps:
            return "finished", "epochs"
        limit = self.s.get("time_limit_s")
        if self.step > 0 and limit is not None and row["wall_s"] >= float(limit):
            return "time_limit", "time_limit_s"
        return None

    def keep(self, ids: list[str]) -> None:
        self.active = list(ids)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                "sum_lr": float(self.sum_lr)}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.step, self.sum_lr = state["step"], state["sum_lr"]


def train_cell(settings: dict, data_path: str | Path, out_dir: str | Path, device: str = "auto",
               threads: int | None = None, deterministic: bool = True, precision: str = "fp32",
               cell_id: str = "", stop_after_epoch: int | None = None,
               progress_every_s: float = 20.0) -> dict:
    """Train one cell (``settings`` = the cell's resolved config values), write ``history.csv`` and
    ``meta.json`` in ``out_dir`` and return the meta dict (the cell's entry is ``meta["cells"][cell_id]``).

    ``stop_after_epoch`` (tests only) simulates a kill: it writes a checkpoint after that epoch and
    returns ``{"aborted_at": step}`` without final outputs.
    """
    s = settings
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    dev = devmod.resolve_device(device)
    devmod.configure(threads or s.get("threads"), deterministic, precision)
    devmod.seed_everything(int(s["seed"]))
    d = load_npz(data_path)
    cell = ImageCell(s, d, dev, cell_id, precision)
    res = loop.run(cell, code_module=__name__, name=cell_id, checkpoint=ckpt,
                   checkpoint_every_s=float(s["checkpoint_seconds"]), progress_every_s=progress_every_s,
                   stop_after_steps=None if stop_after_epoch is None else stop_after_epoch * cell.steps_per_epoch,
                   provenance_extra={"precision": precision, "deterministic": deterministic})
    if res is None:
        return {"aborted_at": cell.step}

    hist = pd.DataFrame(res.history[cell_id])
    hist = hist[ordered_columns(hist.columns)]
    status = res.status[cell_id]
    meta = {"job": cell_id, "experiment": s.get("experiment"), "n_cells": 1,
            "cells": {cell_id: {"status": status["status"], "stop_reason": status["stop_reason"], "steps": cell.step,
                                "epochs_done": int(hist["epoch"].iloc[-1]), "sum_lr": cell.sum_lr,
                                "n_params": n_params(cell.model), "n_train": cell.n, "n_test": int(len(cell.y_test))}},
            "settings": s, "wall_seconds": res.wall_s, "cell_steps": res.cell_steps,
            "cell_steps_per_second": res.cell_steps / max(res.wall_s, 1e-9),
            "resumed_from_step": res.resumed_from_step, "provenance": res.provenance}
    write_atomic(out / "history.csv", history_csv(hist))
    write_json(meta, out / "meta.json")
    ckpt.unlink(missing_ok=True)
    return meta
