"""The one training-loop skeleton of every domain: evaluate, stop, diverge, checkpoint, report.

A domain (modular: many cells trained together, vectorised; images: one cell) plugs in as an
object with:

==========================  ======================================================================
``cells``                   ids of all cells of the job, in a fixed order (the checkpoint signature)
``active``                  ids of the cells still training, in the order of ``train_step``'s losses
``step``                    optimizer updates done so far (steps)
``max_steps``, ``eval_every``  the run's length and evaluation cadence, in steps
``steps_per_epoch``         steps in one pass over the training set, or None (no epochs)
``device``                  the torch device it trains on
``train_step()``            one optimizer update of every active cell; returns their training
                            losses, a tensor of shape ``(len(active),)`` (it may stay on the
                            device: the loop does not read it back at every step)
``check_every`` (optional)  loop iterations between read-backs of the losses' finiteness (default
                            1); ``None``: only at evaluations. A domain that sets it above 1 must
                            keep a cell whose loss was NaN/Inf from changing the other cells (its
                            own state no longer matters)
``evaluate(wall_s)``        one history row (:mod:`nht.core.history`) per active cell, in
                            ``active`` order; ``wall_s`` = seconds of training so far
``stop(cell, row)``         the stop rule: ``(status, reason)`` to end the cell after this row,
                            or None to keep it training
``keep(ids)``               drop every active cell not in ``ids`` (stopped cells stop costing compute)
``state_dict()``,           the full training state (tensors and plain Python values only), and
``load_state_dict(state)``  its restoration
==========================  ======================================================================

:func:`run` then does, top to bottom: evaluate at step 0; repeat ``train_step``; a cell whose loss
is NaN/Inf ends as ``diverged`` (the others go on); at every ``eval_every``-th step and at
``max_steps`` evaluate every active cell (a row with a non-finite V, or loss after step 0, also
means ``diverged``: a history ends with its last finite evaluation) and apply the stop rule; write
a checkpoint when ``checkpoint_every_s`` seconds have passed; print a progress line at most every
``progress_every_s`` seconds. It returns the rows, the cells' status and the run's timing and
provenance; the domain writes its own files.

Host synchronisation: between checks the loop only queues work on the device: it keeps the
returned loss tensors (on the device) and reads their finiteness back (one ``tolist`` of one small
tensor) every ``check_every`` iterations and before every evaluation. A cell found non-finite there ends as ``diverged`` with the step of its
first non-finite loss as ``stop_step``, and the iterations it ran after that are not counted in
``cell_steps``: status, history and counts are those of a check at every step.

Checkpoints are written atomically (:func:`nht.core.io.write_atomic`), carry the cells' signature and the trainer's code fingerprint
(:func:`nht.core.fingerprint.code_fingerprint`), and are loaded with ``weights_only=True``; one
written for other cells or by other code, or unreadable, is ignored (the log says why) and the run
starts fresh. A resumed run ends with the same history as an uninterrupted one (same device and
thread count).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nht.core import device as devmod
from nht.core import provenance
from nht.core.fingerprint import code_fingerprint
from nht.core.io import stable_hash, write_atomic


@dataclass
class Run:
    """What :func:`run` returns. Times in seconds; ``cell_steps`` = sum over updates of active cells."""

    history: dict[str, list[dict]]          # cell id -> its rows, in step order
    status: dict[str, dict]                 # cell id -> {status, stop_step, stop_reason}
    resumed_from_step: int | None = None
    wall_s: float = 0.0                     # this process
    elapsed_s: float = 0.0                  # all processes of this run (resumes included)
    cell_steps: int = 0                     # this process
    provenance: dict = field(default_factory=dict)


def signature(cells: list[str]) -> str:
    """Identity of a job's cells: a checkpoint is used only by the same cells."""
    return stable_hash(list(cells), 16)


def save_checkpoint(state: dict, path: Path) -> None:
    """``torch.save`` through the one atomic writer (:func:`nht.core.io.write_atomic`)."""
    write_atomic(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: Path, sig: str, code: str) -> tuple[dict | None, str]:
    """(state, "ok") when ``path`` was written for cells ``sig`` by code ``code``, else (None, why).

    Loaded with ``weights_only=True``: a checkpoint holds only tensors and plain Python values."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file means: start fresh
        return None, f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
    if not isinstance(state, dict) or state.get("signature") != sig:
        return None, "written for other cells"
    if state.get("code") != code:
        return None, f"written by other code (code fingerprint {state.get('code')!s:.12} != {code:.12})"
    return state, "ok"


class FiniteWatch:
    """The losses of the active cells since the last check, kept on the device (one ``detach``
    per step, no read-back); :meth:`read` finds the non-finite ones with one read-back."""

    def __init__(self, domain) -> None:
        self.reset(domain)

    def reset(self, domain) -> None:
        self.cells, self.losses, self.step0 = list(domain.active), [], domain.step

    @property
    def iterations(self) -> int:
        return len(self.losses)

    def update(self, loss: torch.Tensor) -> None:
        self.losses.append(loss.detach() if loss.requires_grad else loss)

    def read(self, step_now: int) -> list[tuple[str, int, int]]:
        """(cell, step of its first non-finite loss, iterations it ran after that) of every cell
        whose loss was non-finite since the last reset: the one host read-back of a check."""
        if not self.losses:
            return []
        finite = torch.isfinite(torch.stack(self.losses))                 # (iterations, cells)
        n_ok = finite.long().cumprod(dim=0).sum(dim=0)                     # finite iterations before the first bad
        found = []
        for cell, n in zip(self.cells, n_ok.tolist()):
            if n < len(self.losses):
                found.append((cell, min(step_now, self.step0 + n + 1), len(self.losses) - n - 1))
        return found


def _finite_row(row: dict) -> bool:
    return math.isfinite(row["V"]) and (row["step"] == 0 or math.isfinite(row["loss"]))


def run(domain, *, code_module: str, name: str = "run", checkpoint: str | Path | None = None,
        checkpoint_every_s: float = 60.0, progress_every_s: float = 20.0, stop_after_steps: int | None = None,
        provenance_extra: dict | None = None) -> Run | None:
    """Train ``domain`` to the end (see the module docstring). ``code_module`` is the trainer's module,
    whose code fingerprint guards the checkpoint. ``stop_after_steps`` (tests only): after the first
    evaluation at or past that step, write the checkpoint and return None, as if killed there."""
    ckpt = Path(checkpoint) if checkpoint else None
    sig, code = signature(domain.cells), code_fingerprint(code_module)
    out = Run({c: [] for c in domain.cells},
              {c: {"status": "running", "stop_step": None, "stop_reason": None} for c in domain.cells})
    elapsed_before = 0.0
    if ckpt is not None and ckpt.exists():
        state, why = load_checkpoint(ckpt, sig, code)
        if state is None:
            print(f"[{name}] ignoring checkpoint {ckpt}: {why}; starting fresh", file=sys.stderr, flush=True)
        else:
            domain.load_state_dict(state["domain"])
            out.history, out.status, elapsed_before = state["history"], state["status"], state["elapsed_s"]
            out.resumed_from_step = domain.step
            print(f"[{name}] resumed from checkpoint at step {domain.step}", file=sys.stderr, flush=True)

    t0 = last_ckpt = last_print = time.perf_counter()
    n_cells, start_step = len(domain.cells), domain.step

    def end(cell: str, status: str, reason: str) -> None:
        out.status[cell] = {"status": status, "stop_step": domain.step, "stop_reason": reason}

    def evaluate() -> None:
        rows = domain.evaluate(elapsed_before + time.perf_counter() - t0)
        for cell, row in zip(list(domain.active), rows):
            if not _finite_row(row):
                end(cell, "diverged", "non-finite evaluation")
                continue
            out.history[cell].append(row)
            stop = domain.stop(cell, row)
            if stop is not None:
                end(cell, *stop)
        domain.keep([c for c in domain.active if out.status[c]["status"] == "running"])

    def save() -> None:
        save_checkpoint({"signature": sig, "code": code, "domain": domain.state_dict(), "history": out.history,
                         "status": out.status, "elapsed_s": elapsed_before + time.perf_counter() - t0}, ckpt)

    check_every = getattr(domain, "check_every", 1)
    watch = FiniteWatch(domain)

    def check() -> None:
        for cell, stop_step, extra in watch.read(domain.step):
            out.status[cell] = {"status": "diverged", "stop_step": stop_step, "stop_reason": "non-finite loss"}
            out.cell_steps -= extra
        if any(out.status[c]["status"] != "running" for c in domain.active):
            domain.keep([c for c in domain.active if out.status[c]["status"] == "running"])
        watch.reset(domain)

    if out.resumed_from_step is None:
        evaluate()
        watch.reset(domain)
    while domain.active:
        loss = domain.train_step()
        out.cell_steps += len(loss)
        watch.update(loss)
        due = domain.step % domain.eval_every == 0 or domain.step >= domain.max_steps
        if due or (check_every is not None and watch.iterations >= check_every):
            check()
        if domain.active and due:
            evaluate()
            watch.reset(domain)
            now = time.perf_counter()
            if stop_after_steps is not None and domain.step >= stop_after_steps:
                save()
                return None
            if ckpt is not None and domain.active and now - last_ckpt >= checkpoint_every_s:
                save()
                last_ckpt = now
        now = time.perf_counter()
        if now - last_print >= progress_every_s:
            rate = (domain.step - start_step) / max(now - t0, 1e-9)
            spe = domain.steps_per_epoch
            epoch = f" (epoch {domain.step // spe}/{domain.max_steps // spe})" if spe else ""
            print(f"[{name}] step {domain.step}/{domain.max_steps}{epoch}  cells {len(domain.active)}/{n_cells} "
                  f"active  {rate:.1f} steps/s  ETA {(domain.max_steps - domain.step) / max(rate, 1e-9):.0f} s",
                  file=sys.stderr, flush=True)
            last_print = now
    out.wall_s = time.perf_counter() - t0
    out.elapsed_s = elapsed_before + out.wall_s
    out.provenance = provenance.record(**(provenance_extra or {}), **devmod.describe(domain.device))
    return out
