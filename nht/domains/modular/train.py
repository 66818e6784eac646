"""Training of modular cells: one process trains a *job* of cells together, vectorised.

All cells of a job share the dataset, the model architecture and the schedule (batch size,
max_steps, eval_every, thresholds); they may differ in learning rate eta, weight decay lambda,
init scale alpha and seed. Their parameters live in ONE tensor of shape (cells, parameters per
cell), ``flat``; each model tensor is a view of it (cell on dim 0), the model runs as
:func:`nht.domains.modular.models.stacked_forward` (batched matrix products over the cells), and
the optimizer updates ``flat`` with per-cell eta, lambda and step counts held as per-cell
tensors broadcast over the cell dimension. A job of one cell is the per-cell path: the code is
the same.

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
``max_steps``, or as soon as its loss is NaN/Inf (status ``diverged``; found at the next
evaluation, its ``stop_step`` is the step of its first non-finite loss).

The cost of a step does not grow with the number of cells: its tensor operations are the same for
1 or 320 cells (``benchmarks/step_ops.py`` counts them), and nothing is read back to the host
between evaluations:

* optimizer: :class:`nht.core.stacked_optim.StackedOptimizer` (AdamW or SGD), a handful of
  elementwise operations on ``flat`` and its moments, whatever the number of cells or parameter
  tensors, or one compiled kernel on the CPU (``optimizer_kernel``);
* minibatches: each cell's sampler draws the indices of a stretch of steps at once (up to one
  evaluation interval, at most ``CHUNK_INDICES`` indices per job), stacked and moved to the device
  once per stretch (pinned, non-blocking on CUDA);
* divergence: a cell whose loss is NaN/Inf has its update masked from that step on (its
  parameters stay at their last finite values, the other cells are untouched); the loop reads the
  losses' finiteness back at evaluations only (``check_every = None``);
* stopped cells: removed from the stacked tensors on the CPU (they stop costing compute); on the
  CUDA-graph path masked instead (static shapes), and the tensors compacted (and the graph
  captured anew) once at most half of the stacked cells are still active. Masked and removed give
  the same history (tested on the CPU).

On CUDA (``graph="auto"``) one whole training step (gather, forward, backward, optimizer) is
captured once as a CUDA graph (``torch.cuda.CUDAGraph``) and replayed; the step's minibatch
indices are copied into its static input first. Needs the same minibatch size at every step
(``with_replacement``, full batch, or ``epoch_shuffle`` with a batch size dividing n); otherwise
the eager step runs. On the CPU the eager step always runs. fp32 on the CPU is bitwise
deterministic for a given thread count.

Where the host waits for the device (all outside the step loop): :meth:`Trainer.evaluate` reads
the whole evaluation back in one ``.cpu()`` of a (slots, columns) table; the loop's divergence
check reads one small tensor (``tolist``) just before it; :meth:`Trainer.keep` sends a small mask
or index tensor when cells stop (at evaluations); :meth:`Trainer.state_dict` copies the state to
the CPU when a checkpoint is written (at evaluations). Drawing a stretch of minibatches is CPU
work and one non-blocking copy (pinned memory) per stretch, not a wait. Capturing the CUDA graph
(first step, and after a compaction) synchronises the side stream it warms up on.

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

from nht.config import Cell
from nht.core import device as devmod
from nht.core import loop
from nht.core.history import ordered_columns
from nht.core.io import write_atomic, write_json
from nht.core.norms import norm_layer_tensors, scale_init, stacked_squared_norms
from nht.core.stacked import StackedLayout, gradients_into
from nht.core.stacked_optim import StackedOptimizer, resolve_kernel
from nht.domains.modular.intervention import Hook as InterventionHook
from nht.domains.modular.models import build_model, stacked_forward
from nht.domains.modular.samplers import MinibatchSampler, ReplacementSampler

STOP_RULE = ("stop at the first evaluation >= stop_margin steps after test accuracy first reached "
             "test_threshold, else at max_steps; NaN/Inf loss ends the cell as 'diverged'")
HPARAMS = ("lr", "weight_decay", "init_scale", "seed")
CHUNK_INDICES = 1 << 25      # most minibatch indices (all cells, all steps) drawn at once: 256 MiB of int64
STOPPED = ("auto", "remove", "mask")
GRAPH = ("auto", "on", "off")


class Trainer:
    """The modular domain of :func:`nht.core.loop.run`: the stacked parameters of the job's cells,
    their optimizer state and samplers. Use :func:`train_job` from outside.

    ``slots``: the cells held in the stacked tensors, in dim-0 order (``active`` is a subset of it
    when stopped cells are masked). ``stopped``: ``"remove"`` drops stopped cells from the tensors
    at once, ``"mask"`` keeps them (updates off) until at most half the slots are active,
    ``"auto"`` = mask on the CUDA-graph path, remove otherwise. ``graph``: ``"auto"`` captures the
    step as a CUDA graph on CUDA when every minibatch has the same size, ``"on"`` requires it,
    ``"off"`` never. ``chunk_indices``: the most minibatch indices (all slots, all steps) drawn at
    once (a stretch is at most one evaluation interval).
    """

    steps_per_epoch = None            # minibatches are drawn with replacement: no epochs
    check_every = None                # the loop reads divergence back at evaluations only

    def __init__(self, cells: list[Cell], data: dict, device: torch.device, precision: str = "fp32",
                 stopped: str = "auto", graph: str = "auto", chunk_indices: int = CHUNK_INDICES,
                 optimizer_kernel: str = "eager"):
        if stopped not in STOPPED:
            raise ValueError(f"stopped must be one of {STOPPED}, got {stopped!r}")
        if graph not in GRAPH:
            raise ValueError(f"graph must be one of {GRAPH}, got {graph!r}")
        if int(chunk_indices) < 1:
            raise ValueError(f"chunk_indices must be >= 1, got {chunk_indices!r}")
        s = cells[0].settings
        self.s, self.device, self.precision = s, device, precision
        self.chunk_indices = int(chunk_indices)
        self.p = int(s["p"])
        self.cells = [c.id for c in cells]
        self.hp = {c.id: {"lr": float(c["lr"]), "weight_decay": float(c["weight_decay"]),
                          "init_scale": float(c["init_scale"]), "seed": int(c["seed"])} for c in cells}
        bad = [c for c in self.cells if not self.hp[c]["lr"] > 0]
        if bad:
            raise ValueError(f"lr must be > 0, got {[self.hp[c]['lr'] for c in bad]} for cells {bad}")
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
        self.layout = StackedLayout(models)
        self.norm_layer_tensors = norm_layer_tensors(models[0])
        flat = self.layout.initial_flat(device, devmod.DTYPE)
        self.forward = stacked_forward(s["model"])   # (params (C, ...), x (B, 2) | (C, B, 2)) -> (C, B, p)
        self._batch_size = self.n_train if self.full_batch else min(int(s["batch_size"]), self.n_train)
        self._batch = torch.tensor(float(self._batch_size), dtype=flat.dtype, device=device)
        self.optimizer_kernel = resolve_kernel(optimizer_kernel, device, flat.numel() * self.max_steps)
        self.optim = StackedOptimizer(self.opt, self.max_steps, device, flat.dtype, kernel=self.optimizer_kernel)
        self.optim.fresh(flat)
        self._set_state(flat, *self.optim.state())
        if self.full_batch:
            samplers = []
        elif self.sampling == "with_replacement":
            samplers = [ReplacementSampler(self.n_train, int(s["batch_size"]), st) for st in rng_states]
        elif self.sampling == "epoch_shuffle":
            samplers = [MinibatchSampler(self.n_train, int(s["batch_size"]), self.hp[c]["seed"]) for c in self.cells]
        else:
            raise ValueError(f"unknown sampling '{self.sampling}'")
        self.samplers = samplers                     # aligned with ``slots``
        uniform = {sm.uniform_size() for sm in samplers}
        static = self.full_batch or (len(uniform) == 1 and None not in uniform)
        on_cuda = device.type == "cuda"
        if graph == "on" and not (on_cuda and static):
            raise ValueError("graph='on' needs a CUDA device and the same minibatch size at every step")
        self.use_graph = graph != "off" and on_cuda and static
        self.stopped = ("mask" if self.use_graph else "remove") if stopped == "auto" else stopped
        self.slots = list(self.cells)                # dim 0 of the stacked tensors
        self.active = list(self.cells)               # cells still training (a subset of slots)
        self.first_test_pass: dict[str, int] = {}
        self.step = 0
        self._chunk: torch.Tensor | None = None      # (slots, indices of the drawn steps) on the device
        self._chunk_steps: list[tuple[int, int]] = []  # per drawn step not yet taken: (offset, size)
        self._graph = None
        self.stretch = 0                             # steps of the last stretch of minibatches drawn
        self._refresh()
        self.intervention = InterventionHook.for_trainer(self)   # settings' intervention (None: does nothing)

    # ------------------------------------------------------------------ cells held, hyperparameters
    @property
    def params(self) -> dict[str, torch.Tensor]:
        """The stacked model tensors ``{name: (slots, ...)}``: views of ``flat`` (no gradient)."""
        return {k: v.detach() for k, v in self._leaves.items()}

    def _set_state(self, flat, m, v, t, alive) -> None:
        """Install the stacked state: ``flat`` (slots, parameters), the optimizer's moments ``m``,
        ``v`` of the same shape, per-slot step counts ``t`` and update mask ``alive``
        (:class:`nht.core.stacked_optim.StackedOptimizer`). The model tensors the forward reads are
        views of ``flat`` made leaves of autograd; the step concatenates their gradients into
        ``grad`` (slots, parameters), the one gradient the optimizer reads. Tensors keep their
        addresses from here on (updated in place), as a CUDA graph needs."""
        self.flat = flat.detach()
        self.grad = torch.zeros_like(self.flat)
        self.optim.install(m, v, t, alive)
        self._leaves = self.layout.leaves(self.flat)
        C = self.flat.shape[0]
        self._inv_batch = torch.full((C,), 1.0 / self._batch_size, dtype=self.flat.dtype, device=self.device)
        self._graph = None

    # the optimizer's state, read by the intervention hook and the tests
    m = property(lambda self: self.optim.m)
    v = property(lambda self: self.optim.v)
    t = property(lambda self: self.optim.t)
    alive = property(lambda self: self.optim.alive)

    def _refresh(self) -> None:
        """Per-slot hyperparameter tensors (new tensors: only when the slots changed, which also
        drops a captured CUDA graph) and the positions of the active cells among the slots."""
        self.optim.set_hparams([self.hp[c]["lr"] for c in self.slots], [self.hp[c]["weight_decay"] for c in self.slots])
        self._graph = None
        self._refresh_active()

    def _refresh_active(self) -> None:
        """Where the active cells sit among the slots (read outside the captured step only)."""
        self._all_active = self.active == self.slots
        pos = {c: i for i, c in enumerate(self.slots)}
        self._active_pos = torch.tensor([pos[c] for c in self.active], dtype=torch.long, device=self.device)

    def keep(self, ids: list[str]) -> None:
        """Keep only the active cells ``ids`` (the others stopped): removed from the stacked tensors,
        or masked (updates off) while more than half of the slots stay active (module docstring)."""
        ids = list(ids)
        if ids == self.active:
            return
        self.active = ids
        if self.stopped == "mask" and 2 * len(ids) > len(self.slots):
            kept = set(ids)          # in place: a captured CUDA graph reads these very tensors
            self.alive.logical_and_(torch.tensor([c in kept for c in self.slots], device=self.device))
            self._refresh_active()
        else:
            self._compact(ids)
            self._refresh()

    def _compact(self, ids: list[str]) -> None:
        positions = [self.slots.index(c) for c in ids]
        idx = torch.tensor(positions, device=self.device, dtype=torch.long)
        with torch.no_grad():
            self._set_state(*(x.index_select(0, idx) for x in (self.flat, self.m, self.v, self.t, self.alive)))
            if self._chunk is not None:
                self._chunk = self._chunk.index_select(0, idx)
        self.samplers = [self.samplers[i] for i in positions] if self.samplers else []
        self.slots = list(ids)

    @staticmethod
    def _per_cell_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        C, N, P = logits.shape
        return F.cross_entropy(logits.reshape(C * N, P), y.reshape(C * N), reduction="none").view(C, N)

    # ------------------------------------------------------------------ minibatches
    def _next_indices(self) -> torch.Tensor:
        """This step's minibatch indices, (slots, batch), from the drawn stretch (drawn when empty)."""
        if not self._chunk_steps:
            size = self.samplers[0].uniform_size() or self.samplers[0].batch_size
            k = min(self.eval_every, max(1, self.max_steps - self.step),
                    max(1, self.chunk_indices // max(1, len(self.slots) * size)))
            drawn = [sm.take(k) for sm in self.samplers]
            chunk = torch.stack([d[0] for d in drawn])
            if self.device.type == "cuda":
                chunk = chunk.pin_memory().to(self.device, non_blocking=True)
            elif chunk.device != self.device:
                chunk = chunk.to(self.device)
            offsets, off = [], 0
            for size in drawn[0][1]:
                offsets.append((off, size))
                off += size
            self._chunk, self._chunk_steps = chunk, offsets[::-1]
            self.stretch = k
        off, size = self._chunk_steps.pop()
        return self._chunk[:, off:off + size]

    # ------------------------------------------------------------------ one update
    def train_step(self) -> torch.Tensor:
        """One optimizer update of every active cell; returns the active cells' training losses
        (len(active),), on the device, not read back."""
        idx = None if self.full_batch else self._next_indices()
        if self.use_graph:
            loss = self._graph_step(idx)
        else:
            loss = self._step(idx)
        self.step += 1
        return loss if self._all_active else loss.index_select(0, self._active_pos)

    def _step(self, idx: torch.Tensor | None, autocast_cache: bool = True) -> torch.Tensor:
        """The whole update on tensors of fixed shape: gather, forward, backward, optimizer. Returns
        the per-slot losses (slots,). The same code runs eagerly and inside the CUDA graph."""
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                            enabled=self.precision == "bf16", cache_enabled=autocast_cache):
            if idx is None:
                logits = self.forward(self._leaves, self.x_train)
                y = self.y_train.expand(logits.shape[0], -1)
            else:
                logits = self.forward(self._leaves, self.x_train[idx])
                y = self.y_train[idx]
        if logits.dtype != torch.float32:
            logits = logits.float()
        loss_sum = self._per_cell_ce(logits, y).sum(dim=1)       # (slots,): summed over the minibatch
        # the gradient of the per-cell mean loss: 1/batch as the backward's starting gradient
        grads = torch.autograd.grad(loss_sum, list(self._leaves.values()), grad_outputs=self._inv_batch)
        gradients_into(grads, self.grad)
        loss = loss_sum.detach().div_(self._batch)              # the per-cell mean loss
        self.optim.step(self.flat, self.grad, loss)              # a non-finite cell: masked from now on
        return loss

    # ------------------------------------------------------------------ CUDA graph
    def _graph_step(self, idx: torch.Tensor | None) -> torch.Tensor:
        """Copy this step's indices into the graph's static input and replay the captured step."""
        if self._graph is None:
            self._capture(idx)
        if idx is not None:
            self._idx_static.copy_(idx, non_blocking=True)
        self._graph.replay()
        return self._loss_static.clone()

    def _capture(self, idx: torch.Tensor | None) -> None:
        """Warm up on a side stream (state restored afterwards), then capture one step."""
        self._idx_static = None if idx is None else idx.clone()
        held = [self.flat, self.m, self.v, self.t, self.alive]
        state = [x.clone() for x in held]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                self._step(self._idx_static, autocast_cache=False)
        torch.cuda.current_stream(self.device).wait_stream(side)
        with torch.no_grad():
            for dst, src in zip(held, state):
                dst.copy_(src)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._loss_static = self._step(self._idx_static, autocast_cache=False)
        self._graph = graph

    # ------------------------------------------------------------------ evaluation and stop rule
    @torch.no_grad()
    def _loss_acc(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = int(self.s.get("eval_batch_size", 4096))
        params = self.params
        loss_sum = torch.zeros(len(self.slots), dtype=torch.float64, device=self.device)
        correct = torch.zeros_like(loss_sum)
        for start in range(0, len(y), chunk):
            xs, ys = x[start:start + chunk], y[start:start + chunk]
            with devmod.autocast(self.device, self.precision):
                logits = self.forward(params, xs).float()
            yb = ys.expand(logits.shape[0], -1)
            loss_sum += self._per_cell_ce(logits, yb).double().sum(dim=1)
            correct += (logits.argmax(dim=-1) == yb).double().sum(dim=1)
        return loss_sum / len(y), correct / len(y)

    @torch.no_grad()
    def evaluate(self, wall_s: float = 0.0) -> list[dict]:
        """One history row per active cell at the current step (whole train and test sets). All
        numbers go to the host in one read-back."""
        tr_loss, tr_acc = self._loss_acc(self.x_train, self.y_train)
        te_loss, te_acc = self._loss_acc(self.x_test, self.y_test)
        norms = stacked_squared_norms(self.params)
        table = torch.stack([tr_loss, tr_acc, te_loss, te_acc, *norms.values()], dim=1)
        table = (table if self._all_active else table.index_select(0, self._active_pos)).cpu().tolist()
        rows = []
        for c, (loss, train_acc, test_loss, test_acc, *vs) in zip(self.active, table):
            rows.append({"step": self.step, "Lambda": self.hp[c]["lr"] * self.hp[c]["weight_decay"] * self.step,
                         "train_acc": train_acc, "test_acc": test_acc, "phi": 1.0 - test_acc,
                         "loss": loss, "test_loss": test_loss, **dict(zip(norms, vs))})
        self.intervention.after_evaluate(self, rows)   # rows show the state before it; training goes on after
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
        """Tensors and plain values only; the drawn but untaken minibatch indices included, so a
        resumed run takes exactly the minibatches an uninterrupted one takes."""
        chunk = None
        if self._chunk_steps:
            first = self._chunk_steps[-1][0]
            chunk = {"idx": self._chunk[:, first:].cpu(),
                     "steps": [(off - first, size) for off, size in self._chunk_steps]}
        return {"step": self.step, "active": self.active, "slots": self.slots,
                "first_test_pass": self.first_test_pass,
                "flat": self.flat.cpu(), "m": self.m.cpu(), "v": self.v.cpu(), "t": self.t.cpu(),
                "alive": self.alive.cpu(), "samplers": [sm.state() for sm in self.samplers], "chunk": chunk,
                "intervention": self.intervention.state()}

    def load_state_dict(self, state: dict) -> None:
        by_cell = dict(zip(self.slots, self.samplers)) if self.samplers else {}
        self.slots, self.active = list(state["slots"]), list(state["active"])
        self.step, self.first_test_pass = state["step"], dict(state["first_test_pass"])
        self._set_state(*(state[k].to(self.device) for k in ("flat", "m", "v", "t", "alive")))
        self.samplers = [by_cell[c] for c in self.slots] if by_cell else []
        for sampler, st in zip(self.samplers, state["samplers"]):
            sampler.load(st)
        chunk = state.get("chunk")
        self._chunk = None if chunk is None else chunk["idx"].to(self.device)
        self._chunk_steps = [] if chunk is None else [tuple(x) for x in chunk["steps"]]
        self._refresh()
        self.intervention.load(state.get("intervention"))


def train_job(cells: list[Cell], data: dict, history_path: str | Path, meta_path: str | Path,
              checkpoint_path: str | Path | None = None, device: str = "auto", threads: int | None = None,
              deterministic: bool = True, precision: str = "auto", job_id: str = "job",
              progress_every_s: float = 20.0, stop_after_steps: int | None = None,
              optimizer_kernel: str = "auto") -> dict:
    """Train ``cells`` (one job) and write ``history.csv`` (long: cell, then the history columns)
    and ``meta.json``; returns the meta dict.

    ``stop_after_steps`` (tests only) aborts at the first evaluation at or after that step without
    writing outputs, as if the process had been killed; the checkpoint written there stays on disk
    and ``{"aborted_at": step}`` is returned.
    """
    dev = devmod.resolve_device(device)
    precision = devmod.resolve_precision(precision, dev, cuda_default="fp32")
    devmod.configure(threads, deterministic=deterministic, precision=precision)
    s = cells[0].settings
    trainer = Trainer(cells, data, dev, precision, optimizer_kernel=optimizer_kernel)
    res = loop.run(trainer, code_module=__name__, name=job_id, checkpoint=checkpoint_path,
                   checkpoint_every_s=float(s.get("checkpoint_seconds", 60)), progress_every_s=progress_every_s,
                   stop_after_steps=stop_after_steps,
                   provenance_extra={"precision": precision, "deterministic": deterministic,
                                     "optimizer_kernel": trainer.optimizer_kernel})
    if res is None:
        return {"aborted_at": trainer.step}

    rows = [{"cell": c, **row} for c in trainer.cells for row in res.history[c]]
    table = pd.DataFrame(rows)
    table = table[["cell"] + ordered_columns(c for c in table.columns if c != "cell")]
    write_atomic(history_path, table.to_csv(index=False, float_format="%.9g"))
    meta = {
        "job": job_id, "experiment": cells[0].experiment, "n_cells": len(cells),
        "cells": {c: {**res.status[c], **trainer.hp[c], **trainer.intervention.record(c)} for c in trainer.cells},
        "stop_rule": STOP_RULE,
        "settings": {k: v for k, v in s.items() if k not in HPARAMS},
        "norm_layer_tensors": trainer.norm_layer_tensors,
        "wall_seconds": res.wall_s, "cell_steps": res.cell_steps,
        "cell_steps_per_second": res.cell_steps / max(res.wall_s, 1e-9),
        "resumed_from_step": res.resumed_from_step, "provenance": res.provenance,
    }
    write_json(meta, meta_path)
    if checkpoint_path is not None:
        Path(checkpoint_path).unlink(missing_ok=True)
    return meta
