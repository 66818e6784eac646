"""Stage ``experiment-summary``: one modular experiment's summary (fit, science, scorecard, provenance)."""

from __future__ import annotations

import argparse
import json

from nht.core import provenance
from nht.core.io import read_json, write_json
from nht.science.scorecard import build_scorecard


def experiment_summary(experiment: str, settings: dict, fit_json: str, figure_paths: list[str],
                       job_metas: list[str], science_json: str) -> dict:
    fitres = read_json(fit_json)
    metas = [read_json(p) for p in job_metas]
    wall = sum(m["wall_seconds"] for m in metas)
    steps = sum(m["cell_steps"] for m in metas)
    summary = {
        "kind": "modular",
        "experiment": experiment,
        "cells": fitres["cells"],
        "regimes": fitres["regimes"],
        "fit_cells": fitres["fit_cells"],
        "excluded_from_fit": fitres["excluded"],
        "delay_law": fitres["delay_law"],
        "baseline_inverse_eta_lambda": fitres["baseline_inverse_eta_lambda"],
        "figures": sorted(figure_paths),
        "stop_rule": metas[0]["stop_rule"] if metas else None,
        "training": {"jobs": len(metas), "train_wall_seconds": wall, "cell_steps": steps,
                     "cell_steps_per_second": steps / wall if wall else None,
                     "devices": sorted({m["provenance"]["device"] for m in metas})},
        "config": settings,
        "provenance": provenance.record(),
    }
    sci = read_json(science_json)
    summary["figures"] = sorted(set(summary["figures"]) | set(sci.pop("figures", [])))
    summary.update(sci)
    summary["scorecard"] = build_scorecard(summary, "modular")
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht experiment-summary", description=__doc__)
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--settings", type=json.loads, required=True)
    ap.add_argument("--fit", required=True)
    ap.add_argument("--figures", nargs="+", required=True)
    ap.add_argument("--job-metas", nargs="+", required=True)
    ap.add_argument("--science", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    write_json(experiment_summary(a.experiment, a.settings, a.fit, a.figures, a.job_metas, a.science), a.out)
