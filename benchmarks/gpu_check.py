"""Device check: the modular training paths on this machine's accelerator, checked and timed.

Meant for a short lent GPU session (one command), but runs anywhere (on a CPU-only machine it
checks the CPU). It prints one JSON object, and writes it to ``$OUT/gpu_check.json`` when ``$OUT``
is set:

* ``device``: what ``nht.core.device.resolve_device('auto')`` picked, GPU name, torch version;
* ``stacked_vs_modules``: max |difference| between :func:`nht.domains.modular.models.stacked_forward` on the
  device and each cell's ``nn.Module`` on the CPU (outputs and gradients), per model;
* ``adamw_vs_torch``: max |difference| after 30 steps between the trainer's AdamW (per-cell lr,
  weight decay and step counts over the stacked tensors; on CUDA the captured CUDA-graph step)
  on the device and ``torch.optim.AdamW`` on the CPU, for one MLP cell (all parameters: the MLP
  has none whose gradient is zero up to rounding, unlike the transformer's attention key bias);
* ``speed``: cell-steps/s of the default ``transformer_protocol`` and ``mlp_regimes`` jobs (all
  cells of the experiment in one process, evaluation included), per precision (fp32, tf32, bf16).

``--sweep`` instead runs the companion's lambda sweep (``workflow/presets/companion-sweep.yaml``)
end to end through ``snakemake --cores all`` (DVC off: ``NHT_DVC=0``; results and data in a
temporary directory outside the tree) and reports in ``sweep``: the whole run's wall time
(seconds), each training job's wall time, cells and cell-steps (from its meta.json), nht's
aggregate cell-steps/s (all cell-steps over the whole run's wall time); and, on the same device,
the baseline: a one-cell eager loop in the companion's style (``CompanionTransformer``,
``torch.optim.AdamW`` with the preset's settings, ``torch.randint`` minibatches of 512, evaluation
on the whole train and test sets every 500 steps) for lambda 1 and 0.5, seed 42, ``--baseline-steps``
steps each: its steps/s, and the ratio of nht's aggregate to it. This is nht's re-creation of the
companion's loop (``scripts/shared_v2.py`` ``train_run`` is not in this repository), the same
model, optimizer and minibatch rule. Goals of issue 20 on one H200: sweep training <= 120 s, ratio
>= 50. ``--sweep-cap N`` caps every cell at N steps (evaluation every min(500, N) steps) and
``--sweep-seeds K`` keeps the first K seeds: a short run of the same pipeline (e.g. on a CPU).

``--images`` instead times the image trainer (:class:`nht.domains.images.train.ImageJob`, issue 21)
on random CIFAR-10-sized data (50k 3x32x32 uint8 training images, 4 test sets of 10k, batch 128,
AdamW, cosine lr) and reports in ``images``, per setup: seconds per step (mean over ``--steps``
steps after 5 warm-up steps), seconds of one evaluation (the four test sets), seconds per 50k-image
epoch (391 steps + one evaluation) and per 200-epoch cell (a job of C cells: per job), and
cell-epochs/s. Setups: ``resnet18`` fp32 (deterministic cuDNN) and bf16 (non-deterministic:
``cudnn.benchmark``), channels-last, one cell; ``simple_cnn`` one cell and C = ``--image-cells``
stacked cells (vmap), fp32 and bf16, with the stacked/one-cell throughput ratio; and the wall
time these imply for ``paper-cifar10.yaml`` (39 cells in jobs of ``max_cells_per_job``, one job
after another) and ``paper-resnet18.yaml`` (9 cells, one after another) on this one device. Goals
of issue 21 on one H200: a resnet18 200-epoch cell <= 4 min; >= 16 stacked simple_cnn cells at >=
10x one cell's throughput; paper-cifar10 <= 30 min, paper-resnet18 <= 36 min. With ``--smoke``: the
CPU, width 0.125 models, 16x16 images, 256 training images, 2 steps. Writes
``$OUT/gpu_check_images.json`` when ``$OUT`` is set.

Usage: .venv/bin/python benchmarks/gpu_check.py [--steps 300] [--precisions fp32,tf32,bf16]
       .venv/bin/python benchmarks/gpu_check.py --smoke   # CPU, 3 steps, fp32 (test suite)
       .venv/bin/python benchmarks/gpu_check.py --sweep [--baseline-steps 2000] [--sweep-cap N]
                                                [--sweep-seeds K] [--keep DIR]
       .venv/bin/python benchmarks/gpu_check.py --images [--steps 50] [--image-cells 16] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

import torch
import torch.nn.functional as F
from torch.func import stack_module_state

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nht.core import device as devmod  # noqa: E402
from nht.config import expand_cells, load_config  # noqa: E402
from nht.domains.modular.data import make_modular_dataset  # noqa: E402
from nht.core.norms import scale_init  # noqa: E402
from nht.domains.modular.models import CompanionTransformer, build_model, stacked_forward  # noqa: E402
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


PRESET = REPO / "workflow" / "presets" / "companion-sweep.yaml"


def sweep_config(workdir: Path, cap: int | None, seeds: int | None) -> Path:
    """The companion-sweep preset with results and data under ``workdir`` (optionally capped/cut)."""
    config = yaml.safe_load(PRESET.read_text())
    config["results_dir"], config["data_dir"] = str(workdir / "results"), str(workdir / "data")
    for exp in config["experiments"].values():
        if cap is not None:
            exp["max_steps"] = int(cap)
            exp["eval_every"] = min(int(exp["eval_every"]), int(cap))
            exp["stop_margin"] = min(int(exp["stop_margin"]), int(cap))
        if seeds is not None:
            exp["seed"] = list(exp["seed"])[:seeds]
    path = workdir / "companion-sweep.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_sweep(workdir: Path, cap: int | None, seeds: int | None) -> dict:
    """``snakemake --cores all`` on the preset, DVC off; wall time and the training jobs' figures."""
    cfg = sweep_config(workdir, cap, seeds)
    env = dict(os.environ, NHT_DVC="0", PYTHONUNBUFFERED="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "all", "--configfile", str(cfg)],
                          cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    (workdir / "snakemake.log").write_text(proc.stdout + proc.stderr)
    failed = None
    if proc.returncode != 0:     # report what ran (the training jobs' figures) and say what failed
        failed = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        print(f"snakemake failed (exit {proc.returncode}); last lines:\n{failed}", file=sys.stderr, flush=True)
    jobs = {}
    for meta_path in sorted((workdir / "results").glob("*/jobs/*/meta.json")):
        meta = json.loads(meta_path.read_text())
        jobs[f"{meta['experiment']}/{meta['job']}"] = {
            "cells": meta["n_cells"], "cell_steps": meta["cell_steps"], "wall_s": meta["wall_seconds"],
            "cell_steps_per_s": meta["cell_steps_per_second"], "device": meta["provenance"].get("device"),
            "gpu": meta["provenance"].get("gpu")}
    cell_steps = sum(j["cell_steps"] for j in jobs.values())
    return {"wall_s": wall, "training_wall_s_longest_job": max((j["wall_s"] for j in jobs.values()), default=0.0),
            "cell_steps": cell_steps, "cell_steps_per_s": cell_steps / wall, "jobs": jobs,
            "cap": cap, "seeds": seeds, "snakemake_exit": proc.returncode, "snakemake_failure": failed}


def companion_style_loop(dev: torch.device, weight_decay: float, steps: int, seed: int = 42) -> dict:
    """One cell, eager, the companion's way: its model, torch.optim.AdamW, randint minibatches of
    512, evaluation on the whole train and test sets every 500 steps. Returns steps/s on ``dev``."""
    exp = yaml.safe_load(PRESET.read_text())["experiments"]["companion_sweep"]
    data = make_modular_dataset(exp["op"], exp["p"], exp["train_frac"], 0)
    x_tr, y_tr = torch.as_tensor(data["x_train"]).to(dev), torch.as_tensor(data["y_train"]).to(dev)
    x_te, y_te = torch.as_tensor(data["x_test"]).to(dev), torch.as_tensor(data["y_test"]).to(dev)
    devmod.seed_everything(seed)
    m = exp["model"]
    model = CompanionTransformer(exp["p"], m["d_model"], m["n_heads"], m["d_ff"], m["norm_first"]).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=exp["lr"], weight_decay=weight_decay,
                            betas=tuple(exp["optimizer"]["betas"]), eps=exp["optimizer"]["eps"])
    n, batch = len(y_tr), int(exp["batch_size"])
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, n, (batch,)).to(dev)
        loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 500 == 0:
            with torch.no_grad():
                model.eval()
                float((model(x_tr).argmax(-1) == y_tr).float().mean())
                float((model(x_te).argmax(-1) == y_te).float().mean())
                model.train()
    sync()
    wall = time.perf_counter() - t
    return {"weight_decay": weight_decay, "seed": seed, "steps": steps, "seconds": wall, "steps_per_s": steps / wall}


def sweep(dev: torch.device, args) -> dict:
    keep = Path(args.keep) if args.keep else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nht_sweep_") as tmp:
        workdir = keep or Path(tmp)
        result = run_sweep(workdir, args.sweep_cap, args.sweep_seeds)
    print(f"sweep: {result['wall_s']:.1f} s wall, {result['cell_steps_per_s']:.0f} cell-steps/s", file=sys.stderr,
          flush=True)
    baseline = [companion_style_loop(dev, wd, args.baseline_steps) for wd in (1.0, 0.5)]
    rate = sum(b["steps_per_s"] for b in baseline) / len(baseline)
    result["baseline_companion_style_one_cell"] = baseline
    result["baseline_steps_per_s"] = rate
    result["ratio_nht_aggregate_over_one_cell_loop"] = result["cell_steps_per_s"] / rate
    return result


def image_setup(dev: torch.device, model: dict, cells: int, precision: str, deterministic: bool, data: dict,
                steps: int, epochs: int = 200) -> dict:
    """Time one image job of ``cells`` cells (seconds; see the module docstring)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from images_step_ops import job_cells
    from nht.domains.images.train import ImageJob

    devmod.configure(None, deterministic, precision)
    torch.backends.cudnn.benchmark = dev.type == "cuda" and not deterministic
    specs = job_cells(cells, model, epochs=epochs, eval_batch_size=1024)
    job = ImageJob(specs, [data], [0] * cells, dev, precision, stack="vmap")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(min(5, steps)):
        job.train_step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        job.train_step()
    sync()
    s_step = (time.perf_counter() - t) / steps
    t = time.perf_counter()
    job.evaluate(0.0)
    s_eval = time.perf_counter() - t
    s_epoch = s_step * job.steps_per_epoch + s_eval
    return {"model": model["name"], "cells": cells, "precision": precision, "deterministic": deterministic,
            "seconds_per_step": s_step, "seconds_per_evaluation": s_eval, "steps_per_epoch": job.steps_per_epoch,
            "seconds_per_epoch": s_epoch, "seconds_per_200_epoch_job": 200 * s_epoch,
            "cell_epochs_per_s": cells / s_epoch}


def images(dev: torch.device, args) -> dict:
    """The ``--images`` timings (module docstring)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from images_step_ops import random_dataset

    if args.smoke:
        data, width, steps, cells = random_dataset(256, 64, 16), 0.125, 2, 2
    else:
        data, width, steps, cells = random_dataset(50_000, 10_000, 32), 1.0, args.steps, args.image_cells
    out = {}
    for precision, det in (("fp32", True), ("bf16", False)):
        out[f"resnet18/{precision}"] = image_setup(dev, {"name": "resnet18", "width_mult": width}, 1, precision,
                                                   det, data, steps)
        for c in (1, cells):
            out[f"simple_cnn/{c}/{precision}"] = image_setup(dev, {"name": "simple_cnn", "width_mult": width}, c,
                                                             precision, det, data, steps)
        one, many = out[f"simple_cnn/1/{precision}"], out[f"simple_cnn/{cells}/{precision}"]
        many["throughput_over_one_cell"] = many["cell_epochs_per_s"] / one["cell_epochs_per_s"]
        for key in (f"resnet18/{precision}", f"simple_cnn/1/{precision}", f"simple_cnn/{cells}/{precision}"):
            print(f"{key}: {out[key]['seconds_per_epoch']:.2f} s/epoch, "
                  f"{out[key]['seconds_per_200_epoch_job'] / 60:.1f} min per 200-epoch job", file=sys.stderr, flush=True)
    best = "bf16"
    jobs = -(-39 // cells)
    out["estimate"] = {
        "precision": best, "note": "one job after another on this one device; evaluation every epoch",
        "paper_cifar10_39_cells_min": jobs * out[f"simple_cnn/{cells}/{best}"]["seconds_per_200_epoch_job"] / 60,
        "paper_cifar10_jobs": jobs, "paper_resnet18_9_cells_min": 9 * out[f"resnet18/{best}"]["seconds_per_200_epoch_job"] / 60,
        "resnet18_cell_min": out[f"resnet18/{best}"]["seconds_per_200_epoch_job"] / 60}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--precisions", default="fp32,tf32,bf16")
    ap.add_argument("--smoke", action="store_true", help="tiny run for the test suite: CPU, 3 steps, fp32")
    ap.add_argument("--sweep", action="store_true",
                    help="run the companion-sweep preset through snakemake and the one-cell baseline (see above)")
    ap.add_argument("--baseline-steps", type=int, default=2000, help="--sweep: steps of each one-cell baseline run")
    ap.add_argument("--sweep-cap", type=int, help="--sweep: cap every cell at this many steps (a short run)")
    ap.add_argument("--sweep-seeds", type=int, help="--sweep: keep only the first K seeds")
    ap.add_argument("--keep", help="--sweep: run in this directory and keep it (default: a temporary one)")
    ap.add_argument("--images", action="store_true", help="time the image trainer instead (see above)")
    ap.add_argument("--image-cells", type=int, default=16, help="--images: stacked simple_cnn cells per job")
    args = ap.parse_args()
    for name in ("baseline_steps", "sweep_cap", "sweep_seeds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.sweep:
        dev = devmod.resolve_device("auto")
        devmod.configure(None)
        result = {"device": devmod.describe(dev), "sweep": sweep(dev, args)}
        text = json.dumps(result, indent=1)
        print(text)
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "gpu_check_sweep.json").write_text(text)
        return
    if args.images:
        dev = torch.device("cpu") if args.smoke else devmod.resolve_device("auto")
        result = {"device": devmod.describe(dev), "images": images(dev, args)}
        text = json.dumps(result, indent=1)
        print(text)
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "gpu_check_images.json").write_text(text)
        return
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
