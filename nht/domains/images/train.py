"""Train one image cell: per-epoch accuracies on the four test sets, shortcut reliance, group
accuracies and the squared parameter norms V; resumable after SIGKILL, NaN -> status ``diverged``.

Outputs in the cell directory::

    history.csv   one row per epoch (epoch 0 = initialisation): lr, loss, train_acc (running mean over
                  the epoch's minibatches), clean_acc, aligned_acc, conflicting_acc, shortcut_only_acc,
                  reliance (share of conflicting images classified as the border's class),
                  group_acc:y<y>_a<a> and worst_group_acc (datasets with a spurious attribute),
                  V = ||theta||^2 (squared L2 norm), V_no_norm, V_layer:<name>, wall_s,
                  decay_budget (cumulative Lambda = lambda * sum of lr over the steps so far)
    norms.json    V_init, V_peak, epoch_peak, V_final, decay_pct, regime, transition_epoch, final
                  accuracies, the decay budget lambda * sum(lr), status, provenance
    checkpoint.pt resumable state, written every ``checkpoint_seconds`` at an epoch end; deleted on success

Resuming from the checkpoint gives the same metrics as an uninterrupted run: the minibatch order of
epoch e is drawn from a generator seeded by (seed, e), and the model/optimizer state is restored.

Optional settings (absent = the original behaviour):

* ``input_noise``: standard deviation of Gaussian pixel noise added to every training image (in the
  normalised [-1, 1] units), drawn afresh per image and step from a generator seeded by (seed, epoch);
  test images are never noised.
* ``time_limit_s``: stop at the first epoch end after this many SECONDS of training; the cell then ends
  with status ``time_limit`` (its history covers the epochs done).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from nht.core import device as devmod
from nht.core.fingerprint import code_fingerprint
from nht.domains.images.data import load_npz
from nht.domains.images.models import build_model, n_params
from nht.domains.images.norms import squared_norms, summarize_history
from nht.core.io import write_atomic

TEST_SETS = ("clean", "aligned", "conflicting", "shortcut_only")


def code_version() -> str | None:
    """``git rev-parse HEAD`` of the working tree, or None outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=10, cwd=Path(__file__).resolve().parent).stdout.strip()
    except Exception:
        return None


def group_accuracies(pred: np.ndarray, y: np.ndarray, a: np.ndarray) -> tuple[dict[str, float], float]:
    """Accuracy of every non-empty group (label y, spurious attribute a) and the worst of them."""
    accs = {}
    for yy in np.unique(y):
        for aa in np.unique(a):
            m = (y == yy) & (a == aa)
            if m.any():
                accs[f"group_acc:y{int(yy)}_a{int(aa)}"] = float((pred[m] == y[m]).mean())
    return accs, min(accs.values())


_MEMORY_FORMAT = torch.contiguous_format


def _normalise(xb: torch.Tensor) -> torch.Tensor:
    return ((xb.to(devmod.DTYPE) / 255.0 - 0.5) / 0.5).contiguous(memory_format=_MEMORY_FORMAT)


@torch.no_grad()
def predict(model, x: torch.Tensor, batch: int) -> torch.Tensor:
    model.eval()
    out = [model(_normalise(x[i:i + batch])).argmax(1) for i in range(0, len(x), batch)]
    model.train()
    return torch.cat(out)


def _lr_at(step: int, total: int, base: float, schedule: str) -> float:
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    return base


def _make_optimizer(model, s: dict):
    opt = s["optimizer"]
    if opt["name"] == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=s["weight_decay"],
                                 betas=tuple(opt["betas"]), eps=opt["eps"])
    return torch.optim.SGD(model.parameters(), lr=s["lr"], weight_decay=s["weight_decay"],
                           momentum=opt["momentum"])


def _load_checkpoint(path: Path, dev, cell_id: str, code: str) -> tuple[dict | None, str]:
    """(state, "") or (None, why). Loaded with ``weights_only=True`` (tensors and plain values only);
    used only when it is this cell's and was written by the same trainer code."""
    try:
        state = torch.load(path, map_location=dev, weights_only=True)
    except Exception as err:  # noqa: BLE001 - a corrupt or foreign checkpoint is not an error: start over
        return None, f"unreadable ({type(err).__name__})"
    if state.get("cell_id") != cell_id:
        return None, f"it belongs to cell {state.get('cell_id')!r}"
    if state.get("code") != code:
        return None, "the trainer's code changed since it was written"
    return state, ""


def train_cell(settings: dict, data_path: str | Path, out_dir: str | Path, device: str = "auto",
               threads: int | None = None, deterministic: bool = True, tf32: bool = False,
               cell_id: str = "", stop_after_epoch: int | None = None) -> dict:
    """Train one cell (``settings`` = the cell's resolved config values) and write its outputs.

    ``stop_after_epoch`` (tests only) simulates a kill: it writes a checkpoint after that epoch and
    returns without final outputs.
    """
    s = settings
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    dev = devmod.resolve_device(device)
    devmod.configure(threads or s.get("threads"), deterministic, tf32)
    devmod.seed_everything(int(s["seed"]))

    d = load_npz(data_path)
    n_classes = int(len(d["classes"]))
    x_train = torch.from_numpy(d["x_train"]).to(dev)
    y_train = torch.from_numpy(d["y_train"]).to(dev)
    tests = {k: torch.from_numpy(d[f"x_{k}"]).to(dev) for k in TEST_SETS}
    y_test = d["y_test"]
    c_conf = d["c_conflicting"]
    a_test = d.get("a_test")

    global _MEMORY_FORMAT
    _MEMORY_FORMAT = torch.channels_last if s.get("channels_last", True) else torch.contiguous_format
    model = build_model(s["model"], n_classes, tuple(d["x_train"].shape[1:])).to(
        dev, memory_format=_MEMORY_FORMAT)
    opt = _make_optimizer(model, s)
    n = len(y_train)
    bs = n if s["batch_size"] == "full" else min(int(s["batch_size"]), n)
    steps_per_epoch = math.ceil(n / bs)
    epochs = int(s["epochs"])
    total_steps = epochs * steps_per_epoch
    schedule = s["lr_schedule"]
    eval_batch = int(s["eval_batch_size"])
    noise = float(s.get("input_noise") or 0.0)
    time_limit = s.get("time_limit_s")

    rows, start_epoch, step, sum_lr, elapsed = [], 1, 0, 0.0, 0.0
    status = "running"
    code = code_fingerprint("nht.domains.images.train")
    if ckpt_path.exists():
        state, why = _load_checkpoint(ckpt_path, dev, cell_id, code)
        if state is None:
            print(f"[{cell_id}] ignoring checkpoint {ckpt_path}: {why}; starting fresh", file=sys.stderr, flush=True)
        else:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            rows, start_epoch, step = json.loads(state["rows"]), state["epoch"] + 1, state["step"]
            sum_lr, elapsed = state["sum_lr"], state["elapsed"]

    def evaluate(epoch: int, loss: float, train_acc: float) -> dict:
        row = {"epoch": epoch, "step": step, "lr": _lr_at(step, total_steps, s["lr"], schedule),
               "loss": loss, "train_acc": train_acc}
        preds = {k: predict(model, tests[k], eval_batch).cpu().numpy() for k in TEST_SETS}
        for k in TEST_SETS:
            row[f"{k}_acc"] = float((preds[k] == y_test).mean())
        row["reliance"] = float((preds["conflicting"] == c_conf).mean())
        if a_test is not None:
            accs, worst = group_accuracies(preds["clean"], y_test, a_test)
            row.update(accs)
            row["worst_group_acc"] = worst
        row.update(squared_norms(model))
        row["decay_budget"] = float(s["weight_decay"]) * sum_lr
        return row

    t0 = time.monotonic()
    last_ckpt = t0
    if not rows:
        rows.append(evaluate(0, float("nan"), float("nan")) | {"wall_s": 0.0})
    model.train()
    for epoch in range(start_epoch, epochs + 1):
        gen = torch.Generator().manual_seed(int(s["seed"]) * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=gen).to(dev)
        noise_gen = torch.Generator().manual_seed(int(s["seed"]) * 1_000_003 + epoch + 7_919_000_000) \
            if noise > 0 else None
        loss_sum, correct, seen, diverged = 0.0, 0, 0, False
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            lr = _lr_at(step, total_steps, s["lr"], schedule)
            for g in opt.param_groups:
                g["lr"] = lr
            xb = _normalise(x_train[idx])
            if noise_gen is not None:
                xb = xb + noise * torch.randn(xb.shape, generator=noise_gen, dtype=xb.dtype).to(dev)
            logits = model(xb)
            loss = F.cross_entropy(logits, y_train[idx])
            if not torch.isfinite(loss):
                diverged = True
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sum_lr += lr
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y_train[idx]).sum())
            seen += len(idx)
        if diverged or not all(math.isfinite(float(p.detach().sum())) for p in model.parameters()):
            status = "diverged"
            rows.append({"epoch": epoch, "step": step, "loss": float("nan"), "V": float("nan"),
                         "wall_s": elapsed + time.monotonic() - t0})
            break
        rows.append(evaluate(epoch, loss_sum / seen, correct / seen)
                    | {"wall_s": elapsed + time.monotonic() - t0})
        r = rows[-1]
        print(f"[{cell_id}] epoch {epoch}/{epochs}  loss {r['loss']:.4f}  train {r['train_acc']:.3f}  "
              f"clean {r['clean_acc']:.3f}  reliance {r['reliance']:.3f}  V {r['V']:.1f}  "
              f"{r['wall_s'] / epoch:.1f} s/epoch",
              file=sys.stderr, flush=True)
        now = time.monotonic()
        stop_now = stop_after_epoch is not None and epoch >= stop_after_epoch
        if stop_now or (epoch < epochs and now - last_ckpt >= float(s["checkpoint_seconds"])):
            state = {"cell_id": cell_id, "code": code, "model": model.state_dict(), "opt": opt.state_dict(),
                     "rows": json.dumps(rows, default=float), "epoch": epoch, "step": step,
                     "sum_lr": float(sum_lr), "elapsed": float(elapsed + now - t0)}
            tmp = ckpt_path.with_name(f"checkpoint.pt.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            torch.save(state, tmp)
            os.replace(tmp, ckpt_path)
            last_ckpt = now
        if stop_now:
            return {"status": "stopped", "epoch": epoch}
        if time_limit is not None and epoch < epochs and rows[-1]["wall_s"] >= float(time_limit):
            status = "time_limit"
            break
    if status == "running":
        status = "ok"

    hist = pd.DataFrame(rows)
    cols = [c for c in hist.columns if not c.startswith("V_layer:")] + \
           [c for c in hist.columns if c.startswith("V_layer:")]
    hist = hist[cols]
    summary = summarize_history(hist, s, status)
    summary.update({
        "cell": cell_id, "experiment": s.get("experiment"),
        "rho": s["rho"], "border": s["border"], "lr": s["lr"], "weight_decay": s["weight_decay"],
        "seed": s["seed"], "n_params": n_params(model), "n_train": n, "n_test": int(len(y_test)),
        "steps": step, "sum_lr": sum_lr, "decay_budget": s["weight_decay"] * sum_lr,
        "wall_s": float(rows[-1].get("wall_s", 0.0)),
        "provenance": {**devmod.describe(dev), "code_version": code_version()},
        "settings": s,
    })
    write_atomic(out / "history.csv", hist.to_csv(index=False))
    write_atomic(out / "norms.json", json.dumps(summary, indent=1, default=_json_default))
    if ckpt_path.exists():
        ckpt_path.unlink()
    return summary


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)
