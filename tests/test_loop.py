"""The shared training loop (nht.core.loop) on a small real domain: per-cell gradient descent on a
least-squares problem, one cell per learning rate."""

import math
import time

import pytest
import torch

from nht.core import loop

X = torch.linspace(-1, 1, 24).reshape(8, 3)
Y = X @ torch.tensor([1.0, -2.0, 0.5])


class LeastSquares:
    """A loop domain: cells ``c<i>`` with learning rate ``lrs[i]``; V = ||w||^2 (squared)."""

    steps_per_epoch = None
    device = torch.device("cpu")

    def __init__(self, lrs, max_steps=60, eval_every=10, pause_s=0.0, names=None):
        self.cells = names or [f"c{i}" for i in range(len(lrs))]
        self.lr = dict(zip(self.cells, lrs))
        self.w = {c: torch.zeros(3) for c in self.cells}
        self.active, self.step = list(self.cells), 0
        self.max_steps, self.eval_every, self.pause_s = max_steps, eval_every, pause_s

    def _loss(self, w):
        return ((X @ w - Y) ** 2).mean()

    def train_step(self):
        losses = []
        for c in self.active:
            w = self.w[c].clone().requires_grad_(True)
            loss = self._loss(w)
            (g,) = torch.autograd.grad(loss, w)
            self.w[c] = (w - self.lr[c] * g).detach()
            losses.append(loss.detach())
        self.step += 1
        time.sleep(self.pause_s)
        return torch.stack(losses)

    def evaluate(self, wall_s):
        rows = []
        for c in self.active:
            loss = float(self._loss(self.w[c]))
            acc = float(loss < 0.1)
            rows.append({"step": self.step, "Lambda": 0.0, "train_acc": acc, "test_acc": acc, "phi": 1 - acc,
                         "loss": loss, "V": float(self.w[c].double().pow(2).sum())})
        return rows

    def stop(self, cell, row):
        return ("finished", "max_steps") if self.step >= self.max_steps else None

    def keep(self, ids):
        self.active = list(ids)

    def state_dict(self):
        return {"w": dict(self.w), "active": self.active, "step": self.step}

    def load_state_dict(self, state):
        self.w, self.active, self.step = dict(state["w"]), list(state["active"]), state["step"]


def _run(domain, **kw):
    return loop.run(domain, code_module="nht.core.loop", progress_every_s=1e9, **kw)


def test_a_nan_cell_is_diverged_while_the_others_train_on():
    res = _run(LeastSquares([0.1, 50.0, 0.05], max_steps=200))
    assert res.status["c1"]["status"] == "diverged" and res.status["c1"]["stop_step"] < 200
    for c in ("c0", "c2"):
        assert res.status[c] == {"status": "finished", "stop_step": 200, "stop_reason": "max_steps"}
        assert [r["step"] for r in res.history[c]] == list(range(0, 201, 10))
    assert all(math.isfinite(r["V"]) and math.isfinite(r["loss"]) for r in res.history["c1"])
    assert res.cell_steps == 2 * 200 + res.status["c1"]["stop_step"]
    assert res.provenance["device"] == "cpu" and "code_version" in res.provenance


def test_resume_equals_uninterrupted(tmp_path):
    ref = _run(LeastSquares([0.1, 0.05]))
    ckpt = tmp_path / "ckpt.pt"
    assert _run(LeastSquares([0.1, 0.05]), checkpoint=ckpt, stop_after_steps=30) is None
    assert ckpt.exists() and not list(tmp_path.glob("*.tmp"))
    assert torch.load(ckpt, weights_only=True)["domain"]["step"] == 30
    res = _run(LeastSquares([0.1, 0.05]), checkpoint=ckpt)
    assert res.resumed_from_step == 30
    assert res.history == ref.history and res.status == ref.status


@pytest.mark.parametrize("case", ["other cells", "other code", "garbage"])
def test_a_checkpoint_from_other_cells_or_code_is_ignored(tmp_path, capfd, case):
    ckpt = tmp_path / "ckpt.pt"
    _run(LeastSquares([0.1, 0.05]), checkpoint=ckpt, stop_after_steps=30)
    if case == "garbage":
        ckpt.write_bytes(b"not a checkpoint")
    capfd.readouterr()
    domain = LeastSquares([0.1] if case == "other cells" else [0.1, 0.05])
    module = "nht.core.norms" if case == "other code" else "nht.core.loop"
    res = loop.run(domain, code_module=module, checkpoint=ckpt, progress_every_s=1e9)
    err = capfd.readouterr().err
    assert res.resumed_from_step is None and res.history["c0"][0]["step"] == 0
    why = {"other cells": "written for other cells", "other code": "written by other code",
           "garbage": "unreadable"}[case]
    assert "ignoring checkpoint" in err and why in err and "starting fresh" in err


def test_progress_line_is_throttled(capfd):
    t = time.perf_counter()
    loop.run(LeastSquares([0.1], max_steps=100, pause_s=0.01), code_module="nht.core.loop",
             name="job", progress_every_s=0.3)
    wall = time.perf_counter() - t
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("[job] step")]
    assert 1 <= len(lines) <= wall / 0.3 + 1
    assert "/100" in lines[0] and "cells 1/1 active" in lines[0] and "steps/s" in lines[0] and "ETA" in lines[0]


@pytest.mark.parametrize("check_every", [7, None])
def test_reading_divergence_back_seldom_gives_the_run_of_a_check_at_every_step(check_every):
    """A domain may let the loop read its losses' finiteness back every k iterations or only at
    evaluations: the diverged cell's stop step, every history and the cell-step count stay those of
    a check after every step."""
    ref = _run(LeastSquares([0.1, 20.0, 0.05], max_steps=200))
    seldom = LeastSquares([0.1, 20.0, 0.05], max_steps=200)
    seldom.check_every = check_every
    res = _run(seldom)
    assert ref.status["c1"]["status"] == "diverged" and ref.status["c1"]["stop_step"] % 10 != 0
    assert res.status == ref.status and res.history == ref.history and res.cell_steps == ref.cell_steps
