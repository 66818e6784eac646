"""Seconds per training epoch of an image model on random data, to size presets for a machine.

    .venv/bin/python benchmarks/images_epoch_time.py --n-train 10000 --n-test 2000 --threads 1 --epochs 30

Prints seconds per epoch (train steps + evaluation of the four test sets) and the estimated wall time of
one cell; a preset with C cells on K cores at 1 thread per cell takes about ceil(C / K) cells' time
on an otherwise idle machine. ``--smoke`` (the test suite): a width-0.25 CNN on 16x16 images, CPU,
2 timed steps of batch 32 (seconds).
"""

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from nht.core import device as devmod
from nht.domains.images.models import build_model, n_params


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="simple_cnn")
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--norm", default="batchnorm")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--eval-batch", type=int, default=512)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=20, help="training steps timed")
    p.add_argument("--smoke", action="store_true", help="tiny CPU run for the test suite (see above)")
    a = p.parse_args(argv)
    if a.smoke:
        a.width_mult, a.size, a.n_train, a.n_test, a.batch, a.eval_batch, a.steps, a.device = (
            0.25, 16, 256, 64, 32, 64, 2, "cpu")
    dev = devmod.resolve_device(a.device)
    devmod.configure(a.threads)
    model = build_model({"name": a.model, "width_mult": a.width_mult, "norm": a.norm}, 10).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    x = torch.randn(a.batch, 3, a.size, a.size, device=dev)
    y = torch.randint(0, 10, (a.batch,), device=dev)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_step = (time.perf_counter() - t0) / a.steps
    xe = torch.randn(a.eval_batch, 3, a.size, a.size, device=dev)
    model.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(3):
            model(xe).argmax(1).cpu()
        t_eval = (time.perf_counter() - t0) / 3 / a.eval_batch
    per_epoch = math.ceil(a.n_train / a.batch) * t_step + 4 * a.n_test * t_eval
    print(json.dumps({"device": str(dev), "threads": a.threads, "params": n_params(model),
                      "s_per_step": t_step, "s_per_eval_image": t_eval, "s_per_epoch": per_epoch,
                      "cell_minutes": per_epoch * a.epochs / 60}, indent=1))


if __name__ == "__main__":
    main()
