"""Device check: the modular training paths on this machine's accelerator, checked and timed.

Meant for a short lent GPU session (one command), but runs anywhere (on a CPU-only machine it
checks the CPU). It prints one JSON object, and writes it to ``$OUT/gpu_check.json`` when ``$OUT``
is set:

* ``device``: what ``nht.core.device.resolve_device('auto')`` picked, GPU name, torch version;
* ``stacked_vs_modules``: max |difference| between :func:`nht.domains.modular.models.stacked_forward` on the
  device and each cell's ``nn.Module`` on the CPU (outputs and gradients), per model;
* ``adamw_vs_torch``: max |difference| after 30 steps between the trainer's fused per-cell AdamW
  on the device and ``torch.optim.AdamW`` on the CPU, for one MLP cell (all parameters: the MLP
  has none whose gradient is zero up to rounding, unlike the transformer's attention key bias);
* ``speed``: cell-steps/s of the default ``transformer_protocol`` and ``mlp_regimes`` jobs (all
  cells of the experiment in one process, evaluation included), per precision (fp32, tf32, bf16).

Usage: .venv/bin/python benchmarks/gpu_check.py [--steps 300] [--precisions fp32,tf32,bf16]
       .venv/bin/python benchmarks/gpu_check.py --smoke   # CPU, 3 steps, fp32 (test suite)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import stack_module_state

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nht.core import device as devmod  # noqa: E402
from nht.config import expand_cells, load_config  # noqa: E402
from nht.domains.modular.data import make_modular_dataset  # noqa: E402
from nht.domains.modular.models import build_model, scale_init, stacked_forward  # noqa: E402
from nht.domains.modular.train import Trainer  # noqa: E402

MODELS = {"mlp": ({"name": "mlp", "embed_dim": 32, "hidden": 128}, 31),
          "transformer": ({"name": "transformer", "d_model": 128, "n_heads": 4, "d_ff": 512}, 97)}


def stacked_vs_modules(dev: torch.device) -> dict:
    out = {}
    for name, (cfg, p) in MODELS.items():
        modules = []
        for c in range(3):
            torch.manual_seed(c)
            modules.append(scale_init(build_model(cfg, p), 1.0 + c))
        stacked, _ = stack_module_state(modules)
        stacked = {k: v.detach().to(dev).requires_grad_(True) for k, v in stacked.items()}
        x, y = torch.randint(0, p, (3, 256, 2)), torch.randint(0, p, (3, 256))
        logits = stacked_forward(cfg)(stacked, x.to(dev))
        F.cross_entropy(logits.reshape(-1, p), y.to(dev).reshape(-1), reduction="sum").backward()
        d_out = d_grad = 0.0
        for c, m in enumerate(modules):
            ref = m(x[c])
            F.cross_entropy(ref, y[c], reduction="sum").backward()
            d_out = max(d_out, float((logits[c].detach().cpu() - ref.detach()).abs().max()))
            for k, prm in m.named_parameters():
                d_grad = max(d_grad, float((stacked[k].grad[c].cpu() - prm.grad).abs().max()))
        out[name] = {"max_abs_diff_output": d_out, "max_abs_diff_grad": d_grad}
    return out


def adamw_vs_torch(dev: torch.device, config: dict) -> dict:
    cell = expand_cells(config, "mlp_regimes")[0]
    data = make_modular_dataset(cell["op"], cell["p"], cell["train_frac"], cell["split_seed"])
    trainer = Trainer([cell], data, dev)
    torch.manual_seed(cell["seed"])
    model = scale_init(build_model(cell["model"], cell["p"]), cell["init_scale"])
    opt = torch.optim.AdamW(model.parameters(), lr=cell["lr"], weight_decay=cell["weight_decay"],
                            betas=tuple(cell["optimizer"]["betas"]), eps=cell["optimizer"]["eps"])
    x, y = torch.as_tensor(data["x_train"]), torch.as_tensor(data["y_train"])
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        trainer.train_step()
    diff = max(float((trainer.params[k][0].detach().cpu() - p.detach()).abs().max())
               for k, p in model.named_parameters())
    return {"cell": cell.id, "steps": 30, "max_abs_diff_params": diff}


def speed(dev: torch.device, config: dict, experiment: str, steps: int, precision: str) -> dict:
    cells = expand_cells(config, experiment)
    s = cells[0].settings
    data = make_modular_dataset(s["op"], s["p"], s["train_frac"], s["split_seed"])
    devmod.configure(None, deterministic=True, precision=precision)
    trainer = Trainer(cells, data, dev, precision)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(5):
        trainer.train_step()
    sync()
    t = time.perf_counter()
    for step in range(steps):
        trainer.train_step()
        if (step + 1) % int(s["eval_every"]) == 0:
            trainer.evaluate()
    sync()
    wall = time.perf_counter() - t
    return {"cells": len(cells), "steps": steps, "seconds": wall,
            "cell_steps_per_s": len(cells) * steps / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--precisions", default="fp32,tf32,bf16")
    ap.add_argument("--smoke", action="store_true", help="tiny run for the test suite: CPU, 3 steps, fp32")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.precisions = 3, "fp32"
    dev = torch.device("cpu") if args.smoke else devmod.resolve_device("auto")
    devmod.configure(None)
    config = load_config(REPO / "config.yaml")
    result = {"device": devmod.describe(dev)}
    result["stacked_vs_modules"] = stacked_vs_modules(dev)
    result["adamw_vs_torch"] = adamw_vs_torch(dev, config)
    result["speed"] = {}
    for experiment in ("transformer_protocol", "mlp_regimes"):
        for precision in args.precisions.split(","):
            key = f"{experiment}/{precision}"
            result["speed"][key] = speed(dev, config, experiment, args.steps, precision)
            print(f"{key}: {result['speed'][key]['cell_steps_per_s']:.0f} cell-steps/s", file=sys.stderr,
                  flush=True)
    text = json.dumps(result, indent=1)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(text)


if __name__ == "__main__":
    main()
