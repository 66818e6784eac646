"""Training loop for modular cells: one process trains a *job* of cells together, vectorised.

All cells of a job share the dataset, the model architecture and the schedule (batch size,
max_steps, eval_every, thresholds); they may differ in learning rate eta, weight decay lambda,
init scale alpha and seed. Their parameters are stacked along a leading *cell* dimension and the
model runs as :func:`nht.domains.modular.models.stacked_forward` (batched matrix products over the cells); the
optimizer step applies per-cell eta and lambda. A job of one cell is the per-cell path: the code
is the same.

Units: ``step`` counts optimizer updates. Evaluation happens at step 0 and every ``eval_every``
steps on the *whole* train and test sets. ``V`` is the squared L2 norm of the parameters.

Stop rule (per cell, recorded in the job's meta.json): a cell stops at the first evaluation at
least ``stop_margin`` steps after its test accuracy first reached ``test_threshold``, or at
``max_steps``, or as soon as its loss is NaN/Inf (status ``diverged``). Stopped cells are removed
from the stacked tensors, so they stop costing compute.

Minibatches (``batch_size`` an integer): ``sampling: with_replacement`` (the companion's rule)
draws ``min(batch_size, n_train)`` indices uniformly with replacement at every step from a
per-cell generator that starts in the state the global generator has right after the cell's
model was initialised from its seed, i.e. the companion's ``torch.randint`` stream on the CPU;
``sampling: epoch_shuffle`` walks through per-epoch random permutations. ``batch_size: full``
is full-batch gradient descent.

Checkpoints: at an evaluation step, when ``checkpoint_seconds`` have passed since the last one,
the full state (parameters, optimizer moments, minibatch generators, history so far; tensors
and plain Python values only, loaded with ``weights_only=True``) is written atomically, with the
code fingerprint of this trainer (:func:`nht.core.fingerprint.code_fingerprint`). A killed job rerun
with the same cells and the same code resumes there and ends with exactly the same metrics as an
uninterrupted run (CPU, same thread count); a checkpoint from other cells or other code, or one
that cannot be read, is ignored (the log says why) and the job starts fresh.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch.func import stack_module_state
from torch.optim.adamw import adamw as functional_adamw

from nht.core import device as devmod
from nht.core import provenance
from nht.config import Cell, stable_hash
from nht.domains.modular.models import build_model, scale_init, stacked_forward

STOP_RULE = ("stop at the first evaluation >= stop_margin steps after test accuracy first reached "
             "test_threshold, else at max_steps; NaN/Inf loss ends the cell as 'diverged'")


@dataclass
class CellRun:
    """Book-keeping of one cell inside a job."""

    id: str
    lr: float
    weight_decay: float
    init_scale: float
    seed: int
    status: str = "running"          # running | finished | diverged
    stop_step: int | None = None
    stop_reason: str | None = None
    first_test_pass: int | None = None
    rows: list = field(default_factory=list)


class ReplacementSampler:
    """Per-cell minibatches drawn uniformly with replacement: ``torch.randint(0, n, (min(b, n),))``.

    ``rng_state`` is the starting state of the cell's own CPU ``torch.Generator``; the trainer
    passes the global generator's state right after the cell's model was built from its seed,
    which makes the draws the companion's (``set_seed(seed); Model(p); ... torch.randint``).
    """

    def __init__(self, n: int, batch_size: int, rng_state: torch.Tensor):
        self.n, self.size = n, min(int(batch_size), n)
        self.gen = torch.Generator()
        self.gen.set_state(rng_state)

    def next(self) -> torch.Tensor:
        return torch.randint(0, self.n, (self.size,), generator=self.gen)

    def state(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


class MinibatchSampler:
    """Per-cell epoch-wise shuffling with its own ``torch.Generator`` (seeded by the cell seed)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator().manual_seed(int(seed))
        self.perm = torch.randperm(n, generator=self.gen)
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.pos >= self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm, "pos": self.pos}

    def load(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.perm, self.pos = state["perm"], state["pos"]


def _bcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-cell vector (C,) to broadcast against a stacked tensor (C, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


class Trainer:
    """Vectorised trainer for one job. Use :func:`train_job` from outside."""

    def __init__(self, cells: list[Cell], data: dict, device: torch.device, precision: str = "fp32"):
        s = cells[0].settings
        self.s, self.device, self.precision = s, device, precision
        self.p = int(s["p"])
        self.runs = [CellRun(c.id, float(c["lr"]), float(c["weight_decay"]), float(c["init_scale"]),
                             int(c["seed"])) for c in cells]
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
        for run in self.runs:
            devmod.seed_everything(run.seed)
            models.append(scale_init(build_model(s["model"], self.p), run.init_scale))
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
            self.samplers = [MinibatchSampler(self.n_train, int(s["batch_size"]), run.seed) for run in self.runs]
        else:
            raise ValueError(f"unknown sampling '{self.sampling}'")
        self.active = list(range(len(self.runs)))  # indices into self.runs, aligned with dim 0
        self.step = 0
        self._refresh_hparams()

    # ------------------------------------------------------------------ helpers
    def _refresh_hparams(self) -> None:
        runs = [self.runs[i] for i in self.active]
        self.lr = torch.tensor([r.lr for r in runs], device=self.device, dtype=devmod.DTYPE)
        self.wd = torch.tensor([r.weight_decay for r in runs], device=self.device, dtype=devmod.DTYPE)

    def _keep(self, keep_positions: list[int]) -> None:
        """Drop stopped cells from the stacked tensors (positions refer to dim 0)."""
        idx = torch.tensor(keep_positions, device=self.device, dtype=torch.long)
        self.params = {k: v.detach().index_select(0, idx).clone().requires_grad_(True)
                       for k, v in self.params.items()}
        self.m = {k: v.index_select(0, idx).clone() for k, v in self.m.items()}
        self.v = {k: v.index_select(0, idx).clone() for k, v in self.v.items()}
        if self.samplers:
            self.samplers = [self.samplers[i] for i in keep_positions]
        self.active = [self.active[i] for i in keep_positions]
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
        for pos, i in enumerate(self.active):
            groups.setdefault((self.runs[i].lr, self.runs[i].weight_decay), []).append(pos)
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

    # ------------------------------------------------------------------ evaluation
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
    def evaluate(self) -> list[dict]:
        """Metrics of every active cell at the current step, appended to each cell's rows."""
        tr_loss, tr_acc = self._loss_acc(self.x_train, self.y_train)
        te_loss, te_acc = self._loss_acc(self.x_test, self.y_test)
        per_param = {k: v.detach().double().pow(2).flatten(1).sum(dim=1) for k, v in self.params.items()}
        total = sum(per_param.values())
        rows = []
        for pos, i in enumerate(self.active):
            row = {"step": self.step, "train_loss": tr_loss[pos].item(), "train_acc": tr_acc[pos].item(),
                   "test_loss": te_loss[pos].item(), "test_acc": te_acc[pos].item(), "V": total[pos].item()}
            row.update({f"V:{k}": v[pos].item() for k, v in per_param.items()})
            self.runs[i].rows.append(row)
            rows.append(row)
        return rows

    def apply_stop_rule(self, rows: list[dict]) -> None:
        s = self.s
        keep = []
        for pos, (i, row) in enumerate(zip(self.active, rows)):
            run = self.runs[i]
            if run.first_test_pass is None and row["test_acc"] >= s["test_threshold"]:
                run.first_test_pass = self.step
            if run.first_test_pass is not None and self.step >= run.first_test_pass + s["stop_margin"]:
                run.status, run.stop_step, run.stop_reason = "finished", self.step, "generalised+margin"
            elif self.step >= s["max_steps"]:
                run.status, run.stop_step, run.stop_reason = "finished", self.step, "max_steps"
            else:
                keep.append(pos)
        if len(keep) < len(self.active):
            self._keep(keep)

    def mark_diverged(self, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss)
        if not bool(bad.any()):
            return
        keep = []
        for pos, i in enumerate(self.active):
            if bad[pos]:
                run = self.runs[i]
                run.status, run.stop_step, run.stop_reason = "diverged", self.step, "non-finite loss"
            else:
                keep.append(pos)
        self._keep(keep)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"step": self.step, "active": self.active, "runs": [vars(r) for r in self.runs],
                "params": {k: v.detach().cpu() for k, v in self.params.items()},
                "m": {k: v.cpu() for k, v in self.m.items()}, "v": {k: v.cpu() for k, v in self.v.items()},
                "samplers": [s.state() for s in self.samplers]}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.active = state["step"], state["active"]
        self.runs = [CellRun(**r) for r in state["runs"]]
        self.params = {k: v.to(self.device).requires_grad_(True) for k, v in state["params"].items()}
        self.m = {k: v.to(self.device) for k, v in state["m"].items()}
        self.v = {k: v.to(self.device) for k, v in state["v"].items()}
        if self.samplers:
            self.samplers = [self.samplers[i] for i in self.active]
            for sampler, st in zip(self.samplers, state["samplers"]):
                sampler.load(st)
        self._refresh_hparams()


def _save_atomic(obj, path: Path) -> None:
    """Write ``obj`` to ``path`` via a temporary file unique to this process, then rename."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def trainer_code_hash() -> str:
    """Fingerprint of this trainer's code and every nht module it imports (AST, comments excluded)."""
    from nht.core.fingerprint import code_fingerprint

    return code_fingerprint("nht.domains.modular.train")


def load_checkpoint(path: Path, signature: str, code: str) -> tuple[dict | None, str]:
    """The trainer state in ``path`` if it was written for these cells by this code, else None.

    Returns (state or None, reason). Loaded with ``weights_only=True``: a checkpoint holds only
    tensors and plain Python values.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file means: start fresh
        return None, f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    if not isinstance(state, dict) or state.get("signature") != signature:
        return None, "written for another set of cells"
    if state.get("code") != code:
        return None, f"written by other code (code hash {state.get('code')!s:.12} != {code:.12})"
    return state, "ok"


def train_job(cells: list[Cell], data: dict, history_path: str | Path, meta_path: str | Path,
              checkpoint_path: str | Path | None = None, device: str = "auto", threads: int | None = None,
              deterministic: bool = True, precision: str = "fp32", job_id: str = "job",
              progress_every_s: float = 5.0, stop_after_steps: int | None = None) -> dict:
    """Train ``cells`` (one job) and write ``history.csv`` (long: cell, step, metrics) and ``meta.json``.

    ``stop_after_steps`` (tests only) aborts after that many steps without writing outputs, as if
    the process had been killed; the checkpoint written so far stays on disk.
    Returns the meta dict.
    """
    devmod.configure(threads, deterministic=deterministic, precision=precision)
    dev = devmod.resolve_device(device)
    s = cells[0].settings
    trainer = Trainer(cells, data, dev, precision)
    signature = stable_hash([c.id for c in cells])
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    code = trainer_code_hash() if ckpt else None
    resumed_from = None
    if ckpt and ckpt.exists():
        state, why = load_checkpoint(ckpt, signature, code)
        if state is not None:
            trainer.load_state_dict(state["trainer"])
            resumed_from = trainer.step
            print(f"[{job_id}] resumed from checkpoint at step {trainer.step}", file=sys.stderr)
        else:
            print(f"[{job_id}] ignoring checkpoint {ckpt}: {why}; starting fresh", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    last_ckpt = last_print = time.time()
    run_steps = 0
    if resumed_from is None:
        trainer.apply_stop_rule(trainer.evaluate())
    max_steps, eval_every = int(s["max_steps"]), int(s["eval_every"])
    n_cells = len(cells)
    while trainer.active:
        loss = trainer.train_step()
        run_steps += len(trainer.active)
        trainer.mark_diverged(loss)
        if not trainer.active:
            break
        if trainer.step % eval_every == 0 or trainer.step >= max_steps:
            trainer.apply_stop_rule(trainer.evaluate())
            now = time.time()
            if ckpt is not None and trainer.active and now - last_ckpt >= float(s.get("checkpoint_seconds", 60)):
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                _save_atomic({"signature": signature, "code": code, "trainer": trainer.state_dict()}, ckpt)
                last_ckpt = now
        if stop_after_steps is not None and trainer.step >= stop_after_steps:
            return {"aborted_at": trainer.step}
        now = time.time()
        if now - last_print >= progress_every_s:
            el = time.perf_counter() - t0
            print(f"[{job_id}] step {trainer.step}/{max_steps}  active {len(trainer.active)}/{n_cells}  "
                  f"{trainer.step / max(el, 1e-9) if resumed_from is None else 0:.0f} steps/s  "
                  f"{run_steps / max(el, 1e-9):.0f} cell-steps/s", file=sys.stderr, flush=True)
            last_print = now
    wall = time.perf_counter() - t0

    rows = [dict(cell=r.id, **row) for r in trainer.runs for row in r.rows]
    history_path, meta_path = Path(history_path), Path(meta_path)
    history_path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(history_path, index=False, float_format="%.9g")
    meta = {
        "job": job_id, "experiment": cells[0].experiment, "n_cells": n_cells,
        "cells": {r.id: {"status": r.status, "stop_step": r.stop_step, "stop_reason": r.stop_reason,
                         "lr": r.lr, "weight_decay": r.weight_decay, "init_scale": r.init_scale,
                         "seed": r.seed} for r in trainer.runs},
        "stop_rule": STOP_RULE,
        "settings": {k: v for k, v in s.items() if k not in ("lr", "weight_decay", "init_scale", "seed")},
        "wall_seconds": wall, "cell_steps": run_steps, "cell_steps_per_second": run_steps / max(wall, 1e-9),
        "resumed_from_step": resumed_from,
        "provenance": provenance.record(precision=precision, deterministic=deterministic, **devmod.describe(dev)),
    }
    with open(meta_path, "w") as fh:
        json.dump(meta, fh, indent=1)
    if ckpt is not None and ckpt.exists():
        ckpt.unlink()
    return meta
