"""Torch-free estimates of a training job's compute, used only to order jobs (longest first).

Snakemake starts ready jobs in order of ``priority``; giving long training jobs a higher one
is the longest-processing-time-first rule, which packs a fixed set of jobs onto few cores
with a short tail. Nothing here changes what a job computes.
"""

from __future__ import annotations

import math


def parameter_count(model_cfg: dict, p: int) -> int:
    """Number of scalar parameters of :func:`nht.domains.modular.models.build_model` (tests check it on the models)."""
    name = model_cfg["name"]
    if name == "mlp":
        e, h = int(model_cfg.get("embed_dim", 32)), int(model_cfg.get("hidden", 128))
        return 2 * p * e + (2 * e * h + h) + (h * p + p)
    if name == "transformer":
        d, f = int(model_cfg.get("d_model", 128)), int(model_cfg.get("d_ff", 512))
        layer_norms = 3 * 2 * d
        return (p * d + 2 * d + layer_norms + (3 * d * d + 3 * d) + (d * d + d)
                + (d * f + f) + (f * d + d) + (d * p + p))
    raise ValueError(f"unknown model '{name}'")


def modular_job_work(cells: list) -> float:
    """Relative compute of a modular training job, in parameter x example passes.

    cells x max_steps x (examples per step + the evaluation's p^2 forward passes every
    ``eval_every`` steps, a forward pass costing about a third of a training pass) x parameters.
    An upper bound: cells that stop early cost less.
    """
    s = cells[0].settings
    p = int(s["p"])
    n_train = round(s["train_frac"] * p * p)
    batch = n_train if s["batch_size"] == "full" else min(int(s["batch_size"]), n_train)
    per_step = batch + p * p / (3 * int(s["eval_every"]))
    return len(cells) * int(s["max_steps"]) * per_step * parameter_count(s["model"], p)


def priority(work: float) -> int:
    """Snakemake priority from a work estimate: 10 x log10(work), so 10x the work is +10."""
    return max(0, int(round(10 * math.log10(max(work, 1.0)))))
