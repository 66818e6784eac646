"""File-level pipeline stages for modular experiments: each Snakemake rule calls one of these
(through ``python -m nht <stage>``, see :mod:`nht.cli`). They read and write the artifacts named
in :mod:`nht.paths` and hold no science of their own."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from nht import data as datamod
from nht import provenance
from nht.config import Cell
from nht.norms import extract_norms
from nht.scaling import fit_cells

AXES_IN_TABLE = ("op", "p", "train_frac", "split_seed", "lr", "weight_decay", "init_scale", "seed")


def _write_json(obj, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")

    def clean(x):  # JSON has no NaN: write null
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    with open(tmp, "w") as fh:
        json.dump(clean(obj), fh, indent=1, sort_keys=True)
        fh.write("\n")
    tmp.replace(path)


def read_json(path: str | Path):
    with open(path) as fh:
        return json.load(fh)


def make_data(op: str, p: int, train_frac: float, split_seed: int, out: str) -> None:
    datamod.save_dataset(datamod.make_modular_dataset(op, p, train_frac, split_seed), out)


def train(job: dict, dataset: str, history: str, meta: str, checkpoint: str, device: str,
          threads: int, deterministic: bool, precision: str = "fp32") -> None:
    from nht.train import train_job  # torch import only where needed

    cells = [Cell(job["experiment"], "modular", c["id"], c["settings"]) for c in job["cells"]]
    train_job(cells, datamod.load_dataset(dataset), history, meta, checkpoint, device=device,
              threads=threads, deterministic=deterministic, precision=precision, job_id=job["job"])


def norms(job_history: str, job_meta: str, cell: str, settings: dict, out_history: str, out_norms: str) -> None:
    """Cut one cell's curves out of its job's history and extract its norm record."""
    h = pd.read_csv(job_history)
    h = h[h["cell"] == cell].drop(columns="cell").reset_index(drop=True)
    meta = read_json(job_meta)
    status = meta["cells"][cell]["status"]
    Path(out_history).parent.mkdir(parents=True, exist_ok=True)
    h.to_csv(out_history, index=False, float_format="%.9g")
    rec = {"cell": cell, "experiment": meta["experiment"], "stop_reason": meta["cells"][cell]["stop_reason"]}
    rec.update(extract_norms(h, settings, status))
    rec.update({a: settings[a] for a in AXES_IN_TABLE})
    rec["optimizer"] = settings["optimizer"]["name"]
    rec["model"] = settings["model"]["name"]
    rec["provenance"] = meta["provenance"]
    _write_json(rec, out_norms)


def fit(norms_paths: list[str], out_fit: str, out_table: str) -> None:
    records = [read_json(p) for p in norms_paths]
    result = fit_cells(records)
    table = pd.DataFrame([{k: v for k, v in r.items() if k not in ("layers", "provenance")} for r in records])
    Path(out_table).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_table, index=False, float_format="%.9g")
    _write_json(result, out_fit)


def figures(cells_table: str, histories: list[str], fit_json: str, out_dir: str, max_cells: int) -> list[str]:
    from nht.figures import make_figures  # matplotlib only where figures are drawn

    cells = pd.read_csv(cells_table)
    hist = {Path(p).parent.name: pd.read_csv(p) for p in histories}
    return make_figures(cells, hist, read_json(fit_json), out_dir, max_cells)


def science(norms_paths: list[str], histories: list[str], out: str, figure_dir: str,
            n_boot: int = 1000, seed: int = 0) -> None:
    """Issue 3's science layer over one modular experiment (nht.science.analyse_modular)."""
    from nht.science import analyse_modular  # matplotlib only where figures are drawn

    records = [read_json(p) for p in norms_paths]
    layers = {r["cell"]: r.get("layers") or {} for r in records}
    cells = pd.DataFrame([{k: v for k, v in r.items() if k not in ("layers", "provenance")}
                          for r in records])
    hist = {Path(p).parent.name: pd.read_csv(p) for p in histories}
    _write_json(analyse_modular(cells, hist, figure_dir, n_boot=n_boot, seed=seed, layers=layers), out)


def experiment_summary(experiment: str, settings: dict, fit_json: str, figure_paths: list[str],
                       job_metas: list[str], out: str, science_json: str | None = None) -> None:
    fitres = read_json(fit_json)
    metas = [read_json(p) for p in job_metas]
    wall = sum(m["wall_seconds"] for m in metas)
    steps = sum(m["cell_steps"] for m in metas)
    summary = {
        "kind": "modular",
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
    if science_json:
        from nht.scorecard import build_scorecard

        sci = read_json(science_json)
        summary["figures"] = sorted(set(summary["figures"]) | set(sci.pop("figures", [])))
        summary.update(sci)  # delay_law/baseline gain k_ci, b_ci, r2_ci (same point values)
        summary["scorecard"] = build_scorecard(summary, "modular")
    _write_json(summary, out)


def summary(experiment_summaries: dict[str, str], out: str) -> None:
    """Merge every experiment's summary into ``results/summary.json`` (under ``experiments.<name>``)."""
    merged = {"experiments": {name: read_json(path) for name, path in sorted(experiment_summaries.items())},
              "provenance": provenance.record()}
    from nht.scorecard import attach_scorecards, scorecard_html, scorecard_markdown

    attach_scorecards(merged)  # every modular/image experiment gets its P1-P6 scorecard
    _write_json(merged, out)
    Path(out).with_name("scorecard.md").write_text(scorecard_markdown(merged))
    Path(out).with_name("scorecard.html").write_text(scorecard_html(merged))
