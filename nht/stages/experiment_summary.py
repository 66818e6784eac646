"""Stage ``experiment-summary``: one experiment's ``experiment_summary.json``, for every domain.

The domain's own block comes first: modular experiments from ``fit.json`` (cells, regimes,
exclusions); image experiments from the cells' ``norms.json`` (:func:`nht.domains.images.summary.summarize`, which also writes ``cells.csv``
with ``--table``). Then, the same for every domain: the training jobs' cost from their ``meta.json``
(wall time, cell steps),  the science layer's blocks (``science.json``),
the figures (sorted paths), the experiment's resolved settings under ``config``, the environment
under ``provenance`` (:func:`nht.core.provenance.record`) and the ``scorecard``.
"""

from __future__ import annotations

import argparse

from nht.config import KINDS
from nht.core import provenance
from nht.core.io import json_arg, read_json, write_json
from nht.science.scorecard import build_scorecard


def training_block(metas: list[dict]) -> dict:
    """The training jobs' cost, any domain: jobs, wall seconds, cell steps, cell-steps/s, devices."""
    wall = sum(m["wall_seconds"] for m in metas)
    steps = sum(m["cell_steps"] for m in metas)
    return {"jobs": len(metas), "train_wall_seconds": wall, "cell_steps": steps,
            "cell_steps_per_second": steps / wall if wall else None,
            "devices": sorted({m["provenance"]["device"] for m in metas})}


def modular_block(fit_json: str, metas: list[dict]) -> dict:
    """The modular part: the cell count, regimes and exclusions of ``fit.json``. The delay law, its
    baseline and fit cells come from ``science.json`` (the one science path), so they are not
    copied from ``fit.json`` here."""
    fitres = read_json(fit_json)
    return {
        "cells": fitres["cells"],
        "regimes": fitres["regimes"],
        "excluded_from_fit": fitres["excluded"],
        "stop_rule": metas[0]["stop_rule"] if metas else None,
    }


def experiment_summary(kind: str, experiment: str, config: dict, block: dict, figure_paths: list[str],
                       science_json: str) -> dict:
    """The summary of one experiment of ``kind`` from its domain ``block`` (see the module docstring)."""
    science = read_json(science_json)
    summary = {**block, "kind": kind, "experiment": experiment}
    summary.update({k: v for k, v in science.items() if k != "figures"})
    summary["figures"] = sorted(set(figure_paths) | set(block.get("figures", [])) | set(science.get("figures", [])))
    summary["config"] = config
    summary["provenance"] = {**provenance.record(), **block.get("provenance", {})}
    summary["scorecard"] = build_scorecard(summary, kind)
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht experiment-summary", description=__doc__)
    ap.add_argument("--kind", choices=sorted(KINDS), required=True)
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--config", type=json_arg, required=True, help="the experiment's resolved settings (JSON)")
    ap.add_argument("--science", required=True, help="the experiment's science.json")
    ap.add_argument("--figures", nargs="*", default=[])
    ap.add_argument("--out", required=True, help="experiment_summary.json")
    ap.add_argument("--fit", help="modular: fit.json")
    ap.add_argument("--job-metas", nargs="+", required=True, help="every training job's meta.json")
    ap.add_argument("--norms", nargs="+", help="image: every cell's norms.json")
    ap.add_argument("--table", help="image: where cells.csv goes")
    a = ap.parse_args(argv)
    metas = [read_json(p) for p in a.job_metas]
    if a.kind == "modular":
        if not a.fit:
            ap.error("--kind modular needs --fit")
        block = modular_block(a.fit, metas)
    else:
        if not (a.norms and a.table):
            ap.error("--kind image needs --norms and --table")
        from nht.domains.images.summary import image_block

        block = image_block(a.norms, a.experiment, a.config, a.table)
    block["training"] = training_block(metas)
    write_json(experiment_summary(a.kind, a.experiment, a.config, block, a.figures, a.science), a.out)
