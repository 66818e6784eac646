"""Training of modular cells: one process trains a *job* of cells together, vectorised.

All cells of a job share the dataset, the model architecture and the schedule (batch size,
max_steps, eval_every, thresholds); they may differ in learning rate eta, weight decay lambda,
init scale alpha and seed. Their parameters are stacked along a leading *cell* dimension and the
model runs as :func:`nht.domains.modular.models.stacked_forward` (batched matrix products over the
cells); the optimizer step applies per-cell eta and lambda. A job of one cell is the per-cell
path: the code is the same.

:class:`Trainer` is the modular domain of the shared loop (:mod:`nht.core.loop`), which does the
evaluation cadence, divergence, checkpoints and progress; :func:`train_job` runs it and writes
the job's files.

Units: ``step`` counts optimizer updates. Evaluation happens at step 0 and every ``eval_every``
steps on the *whole* train and test sets. History columns (:mod:`nht.core.history`): ``step``,
``Lambda = eta lambda step`` (constant lr), ``train_acc``, ``test_acc``, ``phi = 1 - test_acc``,
``loss`` (train loss on the full train set), ``V`` (squared L2 norm), ``test_loss``,
``V:<tensor>``; the job's table adds a ``cell`` column (long format).

Stop rule (per cell, recorded in the job's meta.json): a cell stops at the first evaluation at
least ``stop_margin`` steps after its test accuracy first reached ``test_threshold``, or at
``max_steps``, or as soon as its loss is NaN/Inf (status ``diverged``). Stopped cells are removed
from the stacked tensors, so they stop costing compute.

Minibatches: see :mod:`nht.domains.modular.samplers`; ``batch_size: full`` is full-batch gradient
descent. The ``with_replacement`` generator of a cell starts in the state the global generator has
right after the cell's model was initialised from its seed (the companion's ``torch.randint``
stream on the CPU).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch.func import stack_module_state
from torch.optim.adamw import adamw as functional_adamw

from nht.config import Cell
from nht.core import device as devmod
from nht.core import loop
from nht.core.history import ordered_columns
from nht.core.io import write_atomic, write_json
from nht.core.norms import stacked_squared_norms
from nht.domains.modular.models import build_model, scale_init, stacked_forward
from nht.domains.modular.samplers import MinibatchSampler, ReplacementSampler

STOP_RULE = ("stop at the first evaluation >= stop_margin steps after test accuracy first reached "
             "test_threshold, else at max_steps; NaN/Inf loss ends the cell as 'diverged'")
HPARAMS = ("lr", "weight_decay", "init_scale", "seed")


def _bcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-cell vector (C,) to broadcast against a stacked tensor (C, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


class Trainer:
    """The modular domain of :func:`nht.core.loop.run`: the active cells' stacked parameters,
    optimizer moments and samplers. Use :func:`train_job` from outside."""

    steps_per_epoch = None            # minibatches are drawn with replacement: no epochs

    def __init__(self, cells: list[Cell], data: dict, device: torch.device, precision: str = "fp32"):
        s = cells[0].settings
        self.s, self.device, self.precision = s, device, precision
        self.p = int(s["p"])
        self.cells = [c.id for c in cells]
        self.hp = {c.id: {"lr": float(c["lr"]), "weight_decay": float(c["weight_decay"]),
                          "init_scale": float(c["init_scale"]), "seed": int(c["seed"])} for c in cells}
        self.max_steps, self.eval_every = int(s["max_steps"]), int(s["eval_every"])
        self.x_train = torch.as_tensor(data["x_train"], device=device)
        self.y_train = torch.as_tensor(data["y_train"], device=device)
        self.x_test = torch.as_tensor(data["x_test"], device=device)
        self.y_test = torch.as_tensor(data["y_test"], device=device)
        self.n_train = len(self.y_train)
        self.sampling = s.get("sampling", "with_replacement")
        self.full_batch = s["batch_size"] == "full" or (
            self.sampling == "epoch_shuffle" and int(s["batch_size"]) >= self.n_train)
        self.opt = s["optimizer"]

        models, rng_states = [], []
        for c in self.cells:
            devmod.seed_everything(self.hp[c]["seed"])
            models.append(scale_init(build_model(s["model"], self.p), self.hp[c]["init_scale"]))
            rng_states.append(torch.get_rng_state())
        params, _ = stack_module_state(models)
        self.names = list(params)
        self.params = {k: v.detach().to(device, devmod.DTYPE).clone().requires_grad_(True)
                       for k, v in params.items()}
        self.forward = stacked_forward(s["model"])   # (params (C, ...), x (B, 2) | (C, B, 2)) -> (C, B, p)
        self.m = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.v = {k: torch.zeros_like(v) for k, v in self.params.items()}
        if self.full_batch:
            self.samplers = []
        elif self.sampling == "with_replacement":
            self.samplers = [ReplacementSampler(self.n_train, int(s["batch_size"]), st) for st in rng_states]
        elif self.sampling == "epoch_shuffle":
            self.samplers = [MinibatchSampler(self.n_train, int(s["batch_size"]), self.hp[c]["seed"])
                             for c in self.cells]
        else:
            raise ValueError(f"unknown sampling '{self.sampling}'")
        self.active = list(self.cells)       # aligned with dim 0 of the stacked tensors
        self.first_test_pass: dict[str, int] = {}
        self.step = 0
        self._refresh_hparams()

    # ------------------------------------------------------------------ helpers
    def _refresh_hparams(self) -> None:
        self.lr = torch.tensor([self.hp[c]["lr"] for c in self.active], device=self.device, dtype=devmod.DTYPE)
        self.wd = torch.tensor([self.hp[c]["weight_decay"] for c in self.active], device=self.device,
                               dtype=devmod.DTYPE)

    def keep(self, ids: list[str]) -> None:
        """Keep only the active cells ``ids`` in the stacked tensors (the others stopped)."""
        if list(ids) == self.active:
            return
        positions = [self.active.index(c) for c in ids]
        idx = torch.tensor(positions, device=self.device, dtype=torch.long)
        self.params = {k: v.detach().index_select(0, idx).clone().requires_grad_(True)
                       for k, v in self.params.items()}
        self.m = {k: v.index_select(0, idx).clone() for k, v in self.m.items()}
        self.v = {k: v.index_select(0, idx).clone() for k, v in self.v.items()}
        if self.samplers:
            self.samplers = [self.samplers[i] for i in positions]
        self.active = list(ids)
        self._refresh_hparams()

    @staticmethod
    def _per_cell_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        C, N, P = logits.shape
        return F.cross_entropy(logits.reshape(C * N, P), y.reshape(C * N), reduction="none").view(C, N)

    # ------------------------------------------------------------------ one update
    def train_step(self) -> torch.Tensor:
        """One optimizer update of every active cell; returns the per-cell training loss (C,)."""
        with devmod.autocast(self.device, self.precision):
            if self.full_batch:
                logits = self.forward(self.params, self.x_train)
                y = self.y_train.expand(logits.shape[0], -1)
            else:
                idx = torch.stack([s.next() for s in self.samplers]).to(self.device)
                logits = self.forward(self.params, self.x_train[idx])
                y = self.y_train[idx]
        loss = self._per_cell_ce(logits.float(), y).mean(dim=1)
        grads = torch.autograd.grad(loss.sum(), [self.params[k] for k in self.names])
        self.step += 1
        with torch.no_grad():
            if self.opt["name"] == "adamw":
                self._adamw(grads)
            else:
                self._sgd(grads)
        return loss.detach()

    def _adamw(self, grads) -> None:
        """torch.optim.AdamW's update (decoupled decay) with per-cell lr and weight decay.

        torch's public functional AdamW (``torch.optim.adamw.adamw``) with ``fused=True``, once
        per distinct (lr, weight decay) among the active cells, on those cells' slices of the
        stacked tensors: one pass over memory instead of about ten elementwise ops per tensor,
        and each slice gets the same kernel call as a one-cell job would give it. The kernel
        assumes contiguous tensors (a transposed gradient would be misread), hence
        ``.contiguous()`` on the gradients; parameters and moments are contiguous by construction.
        The functional form increments each ``state_steps`` entry before the update, so every
        entry is its own tensor holding the previous step count.
        """
        b1, b2 = self.opt["betas"]
        grads = [g.contiguous() for g in grads]
        groups: dict[tuple[float, float], list[int]] = {}
        for pos, c in enumerate(self.active):
            groups.setdefault((self.hp[c]["lr"], self.hp[c]["weight_decay"]), []).append(pos)
        for (lr, wd), positions in groups.items():
            params = [self.params[k].data[pos] for pos in positions for k in self.names]
            steps = [torch.full((), float(self.step - 1), device=self.device) for _ in params]
            functional_adamw(
                params, [g[pos] for pos in positions for g in grads],
                [self.m[k][pos] for pos in positions for k in self.names],
                [self.v[k][pos] for pos in positions for k in self.names], [], steps, fused=True,
                amsgrad=False, beta1=b1, beta2=b2, lr=lr, weight_decay=wd, eps=self.opt["eps"], maximize=False)

    def _sgd(self, grads) -> None:
        """SGD on L_train + lambda/2 ||theta||^2 (gradient + lambda theta), optional momentum."""
        mu = self.opt.get("momentum", 0.0)
        for k, g in zip(self.names, grads):
            p = self.params[k]
            d = g + _bcast(self.wd, p) * p
            if mu:
                self.m[k].mul_(mu).add_(d)
                d = self.m[k]
            p.sub_(_bcast(self.lr, p) * d)

    # ------------------------------------------------------------------ evaluation and stop rule
    @torch.no_grad()
    def _loss_acc(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = int(self.s.get("eval_batch_size", 4096))
        loss_sum = torch.zeros(len(self.active), dtype=torch.float64, device=self.device)
        correct = torch.zeros_like(loss_sum)
        for start in range(0, len(y), chunk):
            xs, ys = x[start:start + chunk], y[start:start + chunk]
            with devmod.autocast(self.device, self.precision):
                logits = self.forward(self.params, xs).float()
            yb = ys.expand(logits.shape[0], -1)
            loss_sum += self._per_cell_ce(logits, yb).double().sum(dim=1)
            correct += (logits.argmax(dim=-1) == yb).double().sum(dim=1)
        return loss_sum / len(y), correct / len(y)

    @torch.no_grad()
    def evaluate(self, wall_s: float = 0.0) -> list[dict]:
        """One history row per active cell at the current step (whole train and test sets)."""
        tr_loss, tr_acc = self._loss_acc(self.x_train, self.y_train)
        te_loss, te_acc = self._loss_acc(self.x_test, self.y_test)
        norms = stacked_squared_norms(self.params)
        rows = []
        for pos, c in enumerate(self.active):
            test_acc = te_acc[pos].item()
            rows.append({"step": self.step, "Lambda": self.hp[c]["lr"] * self.hp[c]["weight_decay"] * self.step,
                         "train_acc": tr_acc[pos].item(), "test_acc": test_acc, "phi": 1.0 - test_acc,
                         "loss": tr_loss[pos].item(), "test_loss": te_loss[pos].item(),
                         **{k: v[pos].item() for k, v in norms.items()}})
        return rows

    def stop(self, cell: str, row: dict) -> tuple[str, str] | None:
        """The stop rule (module docstring) after the evaluation ``row`` of ``cell``."""
        if cell not in self.first_test_pass and row["test_acc"] >= self.s["test_threshold"]:
            self.first_test_pass[cell] = self.step
        if cell in self.first_test_pass and self.step >= self.first_test_pass[cell] + self.s["stop_margin"]:
            return "finished", "generalised+margin"
        if self.step >= self.max_steps:
            return "finished", "max_steps"
        return None

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"step": self.step, "active": self.active, "first_test_pass": self.first_test_pass,
                "params": {k: v.detach().cpu() for k, v in self.params.items()},
                "m": {k: v.cpu() for k, v in self.m.items()}, "v": {k: v.cpu() for k, v in self.v.items()},
                "samplers": [s.state() for s in self.samplers]}

    def load_state_dict(self, state: dict) -> None:
        self.keep(state["active"])
        self.step, self.first_test_pass = state["step"], dict(state["first_test_pass"])
        self.params = {k: v.to(self.device).requires_grad_(True) for k, v in state["params"].items()}
        self.m = {k: v.to(self.device) for k, v in state["m"].items()}
        self.v = {k: v.to(self.device) for k, v in state["v"].items()}
        for sampler, st in zip(self.samplers, state["samplers"]):
            sampler.load(st)


def train_job(cells: list[Cell], data: dict, history_path: str | Path, meta_path: str | Path,
              checkpoint_path: str | Path | None = None, device: str = "auto", threads: int | None = None,
              deterministic: bool = True, precision: str = "fp32", job_id: str = "job",
              progress_every_s: float = 20.0, stop_after_steps: int | None = None) -> dict:
    """Train ``cells`` (one job) and write ``history.csv`` (long: cell, then the history columns)
    and ``meta.json``; returns the meta dict.

    ``stop_after_steps`` (tests only) aborts at the first evaluation at or after that step without
    writing outputs, as if the process had been killed; the checkpoint written there stays on disk
    and ``{"aborted_at": step}`` is returned.
    """
    devmod.configure(threads, deterministic=deterministic, precision=precision)
    dev = devmod.resolve_device(device)
    s = cells[0].settings
    trainer = Trainer(cells, data, dev, precision)
    res = loop.run(trainer, code_module=__name__, name=job_id, checkpoint=checkpoint_path,
                   checkpoint_every_s=float(s.get("checkpoint_seconds", 60)), progress_every_s=progress_every_s,
                   stop_after_steps=stop_after_steps,
                   provenance_extra={"precision": precision, "deterministic": deterministic})
    if res is None:
        return {"aborted_at": trainer.step}

    rows = [{"cell": c, **row} for c in trainer.cells for row in res.history[c]]
    table = pd.DataFrame(rows)
    table = table[["cell"] + ordered_columns(c for c in table.columns if c != "cell")]
    write_atomic(history_path, table.to_csv(index=False, float_format="%.9g"))
    meta = {
        "job": job_id, "experiment": cells[0].experiment, "n_cells": len(cells),
        "cells": {c: {**res.status[c], **trainer.hp[c]} for c in trainer.cells},
        "stop_rule": STOP_RULE,
        "settings": {k: v for k, v in s.items() if k not in HPARAMS},
        "wall_seconds": res.wall_s, "cell_steps": res.cell_steps,
        "cell_steps_per_second": res.cell_steps / max(res.wall_s, 1e-9),
        "resumed_from_step": res.resumed_from_step, "provenance": res.provenance,
    }
    write_json(meta, meta_path)
    if checkpoint_path is not None:
        Path(checkpoint_path).unlink(missing_ok=True)
    return meta
