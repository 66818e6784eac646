"""Train image cells on the shared loop (:mod:`nht.core.loop`): a *job* of C cells in one process,
evaluated at every epoch end; resumable after SIGKILL, NaN/Inf -> status ``diverged``.

Stacking. The cells of a job share the model architecture, optimizer block, schedule, epochs,
batch size and dataset block; they may differ in learning rate, weight decay, ``model.init_scale``,
seed and their shortcut dataset (rho, border, seed: each cell reads its own ``.npz``; the files
are stacked on the device, (datasets, images, 3, H, W) uint8). Their parameters live in ONE
tensor ``flat`` of shape (cells, parameters per cell); the model tensors are views of it (cell on
dim 0), and the optimizer is :class:`nht.core.stacked_optim.StackedOptimizer` (per-cell lr and
weight decay, the cosine schedule as its per-step ``lr_factor``). The model runs

* ``stack="vmap"`` (default on CUDA; ``simple_cnn``, ``mlp``: models without buffers), two cells
  or more: ``torch.vmap`` of ``torch.func.functional_call`` over the cell dimension, so a step
  issues the same tensor operations for 2 or 16 cells (``benchmarks/images_step_ops.py`` counts
  them; a convolution becomes one grouped convolution): a launch-bound GPU runs C cells in about
  the kernel launches of one;
* ``stack="loop"`` (default on the CPU, and any job of one cell): forward and backward of one
  cell at a time (``functional_call``, its images in ``channels_last``; the memory of one cell's
  activations); the optimizer stays one vectorised update of all cells. On the
  CPU a grouped convolution is 1.4-1.8x slower per cell than a channels-last one, so vmap loses
  there (measured: README, issue 21). ``resnet18`` (BatchNorm running statistics are module
  buffers, updated in place, which vmap cannot batch) trains one cell per job.

A job of one cell is the same code. Each cell keeps exactly its one-cell streams: the minibatch
order of epoch e is ``randperm`` from a generator seeded by (seed, e), the input noise from one
seeded by (seed, e) + an offset; its initial parameters are drawn after ``seed_everything(seed)``.

Host synchronisation: none between evaluations. The step keeps running sums of loss and correct
predictions per cell on the device; :meth:`ImageJob.evaluate` reads the epoch's numbers back (the
predictions on the four test sets and one table of sums and squared norms); a cell whose loss is
NaN/Inf has its update masked from that step on (the optimizer's ``alive``; the other cells are
untouched) and the loop finds it at the evaluation (``check_every = None``) and ends it as
``diverged``, removing it from the stacked tensors.

Fast path (any device; what changes on CUDA): the training and test images stay on the device
as uint8 (no DataLoader, no workers), minibatches are gathered there; ``channels_last`` (schema
key, default true) on the loop path; ``precision='bf16'`` autocasts forward
and backward to bfloat16 with fp32 parameters and optimizer state; ``torch.backends.cudnn.benchmark``
is on when the run is declared non-deterministic (:func:`train_job` ``deterministic=False``);
``compile=True`` wraps the forward in ``torch.compile`` (off by default). There is no data
augmentation (the paper's config states none).

Outputs (:func:`train_job`)::

    history.csv   long table: ``cell`` then the history schema (:mod:`nht.core.history`), one row
                  per cell and epoch (epoch 0 = initialisation): step, epoch, Lambda (= lambda *
                  sum of lr over the steps so far), train_acc and loss (running means over the
                  epoch's minibatches), test_acc (clean test set), phi (share of cue-conflicting
                  images classified as the border's class), V (squared L2 norm); then lr, wall_s
                  (seconds), aligned_acc, conflicting_acc, shortcut_only_acc,
                  group_acc:y<y>_a<a> and worst_group_acc (datasets with a spurious attribute),
                  V_no_norm, V:<tensor>
    meta.json     the training meta of every domain: job, experiment, n_cells, cells: {cell:
                  {status (finished | diverged | time_limit), stop_reason, steps, epochs_done,
                  sum_lr, n_params, n_train, n_test}}, settings (shared), norm_layer_tensors
                  (:func:`nht.core.norms.norm_layer_tensors`), wall_seconds and
                  cell_steps (this process), cell_steps_per_second, resumed_from_step, provenance
    checkpoint    resumable state, written every ``checkpoint_seconds`` at an epoch end; deleted on success

:func:`train_cell` is the one-cell job writing the cell's own ``history.csv`` (no ``cell`` column).

Optional settings (absent = the original behaviour):

* ``input_noise``: standard deviation of Gaussian pixel noise added to every training image (in the
  normalised [-1, 1] units), drawn afresh per image and step; test images are never noised.
* ``time_limit_s``: stop at the first epoch end after this many SECONDS of training; the cells then
  end with status ``time_limit`` (their history covers the epochs done).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.func import functional_call

from nht.config import STACKED_IMAGE_MODELS
from nht.core import device as devmod
from nht.core import loop
from nht.core.history import FLOAT_FORMAT, history_csv, ordered_columns, tensor_column
from nht.core.io import write_atomic, write_json
from nht.core.norms import norm_layer_tensors, stacked_squared_norms
from nht.core.stacked import StackedLayout, gradients_into
from nht.core.stacked_optim import StackedOptimizer
from nht.domains.images.data import load_npz
from nht.domains.images.models import build_model, n_params

TEST_SETS = {"clean": "test_acc", "aligned": "aligned_acc", "conflicting": "conflicting_acc",
             "shortcut_only": "shortcut_only_acc"}      # test set -> history column
NOISE_SEED_OFFSET = 7_919_000_000
STACKED_MODELS = STACKED_IMAGE_MODELS                  # several cells per job; others: one
STACKS = ("auto", "vmap", "loop")                      # how the forward runs the cells (module docstring)
# settings a cell of a job may have of its own (the model block differs in init_scale only)
PER_CELL = ("lr", "weight_decay", "seed", "rho", "border", "model")


def group_accuracies(pred: np.ndarray, y: np.ndarray, a: np.ndarray) -> tuple[dict[str, float], float]:
    """Accuracy of every non-empty group (label y, spurious attribute a) and the worst of them."""
    accs = {}
    for yy in np.unique(y):
        for aa in np.unique(a):
            m = (y == yy) & (a == aa)
            if m.any():
                accs[f"group_acc:y{int(yy)}_a{int(aa)}"] = float((pred[m] == y[m]).mean())
    return accs, min(accs.values())


def lr_factor(step: int, total: int, schedule: str) -> float:
    """The learning rate of update ``step + 1`` over the peak lr (``cosine``: from 1 to 0 over
    ``total`` steps; ``constant``: 1)."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    return 1.0


def lr_at(step: int, total: int, base: float, schedule: str) -> float:
    """The learning rate of update ``step + 1``."""
    return base * lr_factor(step, total, schedule)


def shared_settings(settings: list[dict]) -> dict:
    """The settings all cells of a job share (every key but :data:`PER_CELL`, and the model block
    but ``init_scale``); a ValueError names the first key they disagree on."""
    def common(s):
        return {**{k: v for k, v in s.items() if k not in PER_CELL},
                "model": {k: v for k, v in s["model"].items() if k != "init_scale"}}
    first = common(settings[0])
    for s in settings[1:]:
        other = common(s)
        for k in sorted(set(first) | set(other)):
            if first.get(k) != other.get(k):
                raise ValueError(f"cells of one image job disagree on '{k}': {first.get(k)!r} vs {other.get(k)!r}")
    return first


class ImageJob:
    """The image domain of :func:`nht.core.loop.run`: C stacked cells (module docstring).

    ``cells``: [(cell id, settings)]; ``datasets``: the loaded shortcut datasets; ``data_of``: the
    index into ``datasets`` of each cell; ``stack``: ``vmap`` | ``loop`` | ``auto`` (vmap on CUDA)."""

    check_every = None                # the loop reads divergence back at evaluations only

    def __init__(self, cells: list[tuple[str, dict]], datasets: list[dict], data_of: list[int],
                 device: torch.device, precision: str = "fp32", compile: bool = False, stack: str = "auto"):
        self.s = s = shared_settings([c[1] for c in cells])
        self.device, self.precision = device, precision
        self.cells = [c for c, _ in cells]
        self.hp = {c: {"lr": float(st["lr"]), "weight_decay": float(st["weight_decay"]), "seed": int(st["seed"]),
                       "data": int(i)} for (c, st), i in zip(cells, data_of)}
        self.stacked = s["model"]["name"] in STACKED_MODELS
        if not self.stacked and len(cells) > 1:
            raise ValueError(f"model '{s['model']['name']}' trains one cell per job (it has buffers); got {len(cells)}")
        if stack not in STACKS:
            raise ValueError(f"stack must be one of {STACKS}, got {stack!r}")
        self.stack = ("vmap" if device.type == "cuda" else "loop") if stack == "auto" else stack
        d0 = datasets[0]
        for d in datasets[1:]:
            if not (np.array_equal(d["y_train"], d0["y_train"]) and np.array_equal(d["y_test"], d0["y_test"])):
                raise ValueError("the datasets of one image job must hold the same images and labels")
        self.x_train = torch.stack([torch.from_numpy(d["x_train"]) for d in datasets]).to(device)   # (D, N, 3, H, W)
        self.y_train = torch.from_numpy(d0["y_train"]).to(device)
        self.tests = {k: torch.stack([torch.from_numpy(d[f"x_{k}"]) for d in datasets]).to(device) for k in TEST_SETS}
        self.y_test, self.a_test = d0["y_test"], d0.get("a_test")
        self.c_conf = np.stack([d["c_conflicting"] for d in datasets])                               # (D, Nt)
        self.memory_format = torch.channels_last if s.get("channels_last", True) else torch.contiguous_format
        self.n = len(self.y_train)
        self.bs = self.n if s["batch_size"] == "full" else min(int(s["batch_size"]), self.n)
        self.steps_per_epoch = self.eval_every = math.ceil(self.n / self.bs)
        self.max_steps = int(s["epochs"]) * self.steps_per_epoch
        self.noise = float(s.get("input_noise") or 0.0)
        total, sched = self.max_steps, s["lr_schedule"]
        factors = [lr_factor(t, total, sched) for t in range(total + 1)]
        self.cum_factor = np.concatenate([[0.0], np.cumsum(factors[:-1])])   # sum of lr / peak lr after t steps

        models = []
        for (c, st) in cells:
            devmod.seed_everything(self.hp[c]["seed"])
            models.append(build_model(st["model"], int(len(d0["classes"])), tuple(d0["x_train"].shape[1:])))
        self.base = models[0].to(device)                     # the module functional_call runs (and its buffers)
        self.n_params = n_params(self.base)
        self.norm_layer_tensors = norm_layer_tensors(self.base)
        self.norm_cols = [tensor_column(k) for k in self.norm_layer_tensors]
        self.layout = StackedLayout(models)
        flat = self.layout.initial_flat(device, devmod.DTYPE)
        schedule = None
        if sched == "cosine":
            schedule = torch.tensor([1.0] + factors + [0.0], dtype=torch.float64)[:total + 2]
        self.optim = StackedOptimizer(s["optimizer"], self.max_steps, device, flat.dtype, lr_factor=schedule)
        self.optim.fresh(flat)
        self.forward = self._make_forward(compile)
        self.slots = list(self.cells)
        self.active = list(self.cells)
        self.step = 0
        self.ended_at: dict[str, int] = {}                  # removed cell -> step when it left
        self._set_state(flat, *self.optim.state())

    # ------------------------------------------------------------------ model and stacked state
    def _make_forward(self, compile: bool):
        """(params {name: (C, ...)}, x (C, B, 3, H, W)) -> logits (C, B, classes)."""
        base, mf = self.base, self.memory_format

        def one(p, x):
            return functional_call(base, p, (x,))

        stacked = torch.vmap(one)

        def fwd(params, x):
            if x.shape[0] > 1 and self.stack == "vmap":
                return stacked(params, x)
            return torch.stack([one({k: v[i] for k, v in params.items()}, x[i].contiguous(memory_format=mf))
                                for i in range(x.shape[0])])
        return torch.compile(fwd) if compile else fwd

    def _set_state(self, flat, m, v, t, alive) -> None:
        """Install ``flat`` (slots, parameters) and the optimizer state; the model tensors are views
        of ``flat`` made leaves of autograd, their gradients concatenated into ``grad``."""
        self.flat = flat.detach()
        self.optim.install(m, v, t, alive)
        self.optim.set_hparams([self.hp[c]["lr"] for c in self.slots], [self.hp[c]["weight_decay"] for c in self.slots])
        C = self.flat.shape[0]
        self.grad = torch.zeros_like(self.flat)
        self._leaves = self.layout.leaves(self.flat)
        self._data = torch.tensor([self.hp[c]["data"] for c in self.slots], dtype=torch.long, device=self.device)
        self.loss_sum = torch.zeros(C, dtype=torch.float64, device=self.device)
        self.correct = torch.zeros(C, dtype=torch.float64, device=self.device)

    @property
    def params(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self._leaves.items()}

    def keep(self, ids: list[str]) -> None:
        """Keep only the active cells ``ids``: the others leave the stacked tensors. Called at
        evaluations, which are epoch ends: the next step draws the kept cells' streams afresh."""
        ids = list(ids)
        if ids == self.active:
            return
        for c in self.active:
            if c not in ids:
                self.ended_at[c] = self.step
        pos = torch.tensor([self.slots.index(c) for c in ids], dtype=torch.long, device=self.device)
        sums = (self.loss_sum.index_select(0, pos), self.correct.index_select(0, pos))
        with torch.no_grad():
            state = [x.index_select(0, pos) for x in (self.flat, *self.optim.state())]
        self.slots = self.active = ids
        self._set_state(*state)
        self.loss_sum, self.correct = sums

    # ------------------------------------------------------------------ one update
    def _normalise(self, xb: torch.Tensor) -> torch.Tensor:
        return (xb.to(devmod.DTYPE) / 255.0 - 0.5) / 0.5

    def _start_epoch(self, epoch: int) -> None:
        seeds = [self.hp[c]["seed"] * 1_000_003 + epoch for c in self.slots]
        self.perm = torch.stack([torch.randperm(self.n, generator=torch.Generator().manual_seed(sd))
                                 for sd in seeds]).to(self.device)                      # (slots, n)
        self.noise_gens = ([torch.Generator().manual_seed(sd + NOISE_SEED_OFFSET) for sd in seeds]
                           if self.noise > 0 else [])
        self.loss_sum.zero_()
        self.correct.zero_()
        self.seen = 0

    def train_step(self) -> torch.Tensor:
        """One minibatch update of every active cell; returns their mean losses (slots,), on the
        device, not read back."""
        i = self.step % self.steps_per_epoch
        if i == 0:
            self._start_epoch(self.step // self.steps_per_epoch + 1)
        idx = self.perm[:, i * self.bs:(i + 1) * self.bs]                                # (C, B)
        xb = self._normalise(self.x_train[self._data[:, None], idx])                     # (C, B, 3, H, W)
        if self.noise_gens:
            shape = xb.shape[1:]
            draws = torch.stack([torch.randn(shape, generator=g, dtype=xb.dtype) for g in self.noise_gens])
            xb = xb + self.noise * draws.to(self.device)
        y = self.y_train[idx]
        if self.stack == "vmap" and len(self.slots) > 1:
            loss_sum, correct = self._gradients(self._leaves, xb, y, self.grad)
        else:                         # one cell at a time: the memory of one cell's activations
            parts = [self._gradients({k: v[i:i + 1] for k, v in self._leaves.items()}, xb[i:i + 1], y[i:i + 1],
                                     self.grad[i:i + 1]) for i in range(len(self.slots))]
            loss_sum, correct = (torch.cat(t) for t in zip(*parts))
        with torch.no_grad():
            loss = loss_sum / y.shape[1]
            self.optim.step(self.flat, self.grad, loss)
            self.loss_sum += loss_sum.double()
            self.correct += correct.double()
        self.seen += y.shape[1]
        self.step += 1
        return loss

    def _gradients(self, leaves: dict, xb: torch.Tensor, y: torch.Tensor, grad: torch.Tensor):
        """Forward and backward of the cells of ``leaves`` ((C, ...) slices of the stacked tensors)
        on ``xb`` (C, B, ...); their gradient of the mean loss goes into ``grad`` (C, parameters).
        Returns the summed losses and correct predictions (C,), detached."""
        with devmod.autocast(self.device, self.precision):
            logits = self.forward(leaves, xb)
        logits = logits.float()
        C, B, K = logits.shape
        loss_sum = F.cross_entropy(logits.reshape(C * B, K), y.reshape(C * B), reduction="none").view(C, B).sum(1)
        grads = torch.autograd.grad(loss_sum, list(leaves.values()), grad_outputs=torch.full_like(loss_sum, 1.0 / B))
        gradients_into(grads, grad)
        return loss_sum.detach(), (logits.detach().argmax(-1) == y).sum(1)

    # ------------------------------------------------------------------ evaluation and stop rule
    @torch.no_grad()
    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted classes (slots, images) of each cell on its own copy of test set ``x`` (D, Nt, ...)."""
        batch = int(self.s["eval_batch_size"])
        params = self.params
        self.base.eval()
        out = []
        with devmod.autocast(self.device, self.precision):
            for i in range(0, x.shape[1], batch):
                xb = self._normalise(x[:, i:i + batch].index_select(0, self._data))
                out.append(self.forward(params, xb).argmax(-1))
        self.base.train()
        return torch.cat(out, dim=1)

    def sum_lr(self, cell: str, steps: int | None = None) -> float:
        """Sum of the cell's learning rate over its first ``steps`` updates (default: all done)."""
        return self.hp[cell]["lr"] * float(self.cum_factor[self.step if steps is None else steps])

    @torch.no_grad()
    def evaluate(self, wall_s: float) -> list[dict]:
        """One history row per active cell at this epoch end (epoch 0: the initialisation, loss
        and train_acc NaN). Reads back once: the predictions and one table of sums and norms."""
        epoch = self.step // self.steps_per_epoch
        preds = torch.stack([self._predict(x) for x in self.tests.values()]).cpu().numpy()    # (4, C, Nt)
        norms = stacked_squared_norms(self.params)
        table = torch.stack([self.loss_sum, self.correct, *norms.values()], dim=1).cpu().tolist()
        seen = getattr(self, "seen", 0) if epoch > 0 else 0
        factor = lr_factor(self.step, self.max_steps, self.s["lr_schedule"])
        rows = []
        for j, (c, (loss_sum, correct, *vs)) in enumerate(zip(self.slots, table)):
            hp = self.hp[c]
            row = {"step": self.step, "epoch": epoch, "Lambda": hp["weight_decay"] * self.sum_lr(c),
                   "loss": loss_sum / seen if seen else float("nan"),
                   "train_acc": correct / seen if seen else float("nan"),
                   "lr": hp["lr"] * factor, "wall_s": wall_s}
            p = {k: preds[i, j] for i, k in enumerate(TEST_SETS)}
            for k, col in TEST_SETS.items():
                row[col] = float((p[k] == self.y_test).mean())
            row["phi"] = float((p["conflicting"] == self.c_conf[hp["data"]]).mean())
            if self.a_test is not None:
                accs, worst = group_accuracies(p["clean"], self.y_test, self.a_test)
                row.update(accs)
                row["worst_group_acc"] = worst
            v = dict(zip(norms, vs))
            row["V"], row["V_no_norm"] = v["V"], v["V"] - sum(v[k] for k in self.norm_cols)
            row.update(v)
            rows.append(row)
        return rows

    def stop(self, cell: str, row: dict) -> tuple[str, str] | None:
        """Finished after ``epochs``; ``time_limit`` at an earlier epoch end past ``time_limit_s``."""
        if self.step >= self.max_steps:
            return "finished", "epochs"
        limit = self.s.get("time_limit_s")
        if self.step > 0 and limit is not None and row["wall_s"] >= float(limit):
            return "time_limit", "time_limit_s"
        return None

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Tensors and plain values only (written at epoch ends: the next step starts an epoch)."""
        m, v, t, alive = self.optim.state()
        return {"step": self.step, "slots": self.slots, "ended_at": self.ended_at, "flat": self.flat.cpu(),
                "m": m.cpu(), "v": v.cpu(), "t": t.cpu(), "alive": alive.cpu(),
                "buffers": {k: b.cpu() for k, b in self.base.named_buffers()}}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.ended_at = state["step"], dict(state["ended_at"])
        self.slots = self.active = list(state["slots"])
        self._set_state(*(state[k].to(self.device) for k in ("flat", "m", "v", "t", "alive")))
        with torch.no_grad():
            for k, b in self.base.named_buffers():
                b.copy_(state["buffers"][k])


def load_job_data(data_paths: list[str | Path]) -> tuple[list[dict], list[int]]:
    """The distinct datasets of a job's cells (``data_paths``: one per cell) and each cell's index."""
    unique = list(dict.fromkeys(str(p) for p in data_paths))
    return [load_npz(p) for p in unique], [unique.index(str(p)) for p in data_paths]


def train_job(cells: list[tuple[str, dict]], data_paths: list[str | Path], history_path: str | Path,
              meta_path: str | Path, checkpoint_path: str | Path | None = None, device: str = "auto",
              threads: int | None = None, deterministic: bool = True, precision: str = "auto",
              job_id: str = "job", compile: bool = False, stack: str = "auto", stop_after_epoch: int | None = None,
              progress_every_s: float = 20.0) -> dict:
    """Train ``cells`` ([(id, settings)], one job; ``data_paths``: each cell's shortcut dataset) and
    write the long ``history.csv`` and ``meta.json``; returns the meta dict.

    ``stop_after_epoch`` (tests only) simulates a kill: it writes the checkpoint after that epoch and
    returns ``{"aborted_at": step}`` without final outputs."""
    s0 = cells[0][1]
    dev = devmod.resolve_device(device)
    precision = devmod.resolve_precision(precision, dev, cuda_default="bf16")   # the fast path on CUDA
    devmod.configure(threads or s0.get("threads"), deterministic, precision)
    if dev.type == "cuda" and not deterministic:
        torch.backends.cudnn.benchmark = True        # autotuned convolutions (runs differ in the last bits)
    datasets, data_of = load_job_data(data_paths)
    job = ImageJob(cells, datasets, data_of, dev, precision, compile, stack)
    res = loop.run(job, code_module=__name__, name=job_id, checkpoint=checkpoint_path,
                   checkpoint_every_s=float(s0["checkpoint_seconds"]), progress_every_s=progress_every_s,
                   stop_after_steps=None if stop_after_epoch is None else stop_after_epoch * job.steps_per_epoch,
                   provenance_extra={"precision": precision, "deterministic": deterministic, "stack": job.stack})
    if res is None:
        return {"aborted_at": job.step}

    rows = [{"cell": c, **row} for c in job.cells for row in res.history[c]]
    table = pd.DataFrame(rows)
    table = table[["cell"] + ordered_columns(c for c in table.columns if c != "cell")]
    records = {}
    for c in job.cells:
        st = res.status[c]
        steps = job.ended_at.get(c, job.step)
        if st["stop_reason"] == "non-finite loss":
            steps = st["stop_step"] - 1                  # the updates applied before the first NaN/Inf loss
        hist = res.history[c]
        records[c] = {"status": st["status"], "stop_reason": st["stop_reason"], "steps": steps,
                      "epochs_done": int(hist[-1]["epoch"]) if hist else 0, "sum_lr": job.sum_lr(c, steps),
                      "n_params": job.n_params, "n_train": job.n, "n_test": int(len(job.y_test))}
    meta = {"job": job_id, "experiment": s0.get("experiment"), "n_cells": len(cells), "cells": records,
            "settings": job.s, "norm_layer_tensors": job.norm_layer_tensors,
            "wall_seconds": res.wall_s, "cell_steps": res.cell_steps,
            "cell_steps_per_second": res.cell_steps / max(res.wall_s, 1e-9),
            "resumed_from_step": res.resumed_from_step, "provenance": res.provenance}
    write_atomic(history_path, table.to_csv(index=False, float_format=FLOAT_FORMAT))
    write_json(meta, meta_path)
    if checkpoint_path is not None:
        Path(checkpoint_path).unlink(missing_ok=True)
    return meta


def train_cell(settings: dict, data_path: str | Path, out_dir: str | Path, device: str = "auto",
               threads: int | None = None, deterministic: bool = True, precision: str = "auto",
               cell_id: str = "", stop_after_epoch: int | None = None, progress_every_s: float = 20.0) -> dict:
    """A job of one cell in ``out_dir``: its own ``history.csv`` (no ``cell`` column), ``meta.json``
    and ``checkpoint.pt``; returns the meta dict (the cell's entry is ``meta["cells"][cell_id]``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = train_job([(cell_id, settings)], [data_path], out / "history.csv", out / "meta.json",
                     out / "checkpoint.pt", device=device, threads=threads, deterministic=deterministic,
                     precision=precision, job_id=cell_id, stop_after_epoch=stop_after_epoch,
                     progress_every_s=progress_every_s)
    if "aborted_at" not in meta:
        h = pd.read_csv(out / "history.csv").drop(columns="cell")
        write_atomic(out / "history.csv", history_csv(h[ordered_columns(h.columns)]))
    return meta
