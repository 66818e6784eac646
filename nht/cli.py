"""Command line of the pipeline stages: ``python -m nht <stage> [options]``.

Each Snakemake rule runs exactly one of these commands. ``python -m nht cells`` lists the cell
grid of a config (useful to pick one cell to run).
"""

from __future__ import annotations

import argparse
import json
import sys

from nht import pipeline


def _json_arg(text: str):
    return json.loads(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nht", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="stage", required=True)

    s = sub.add_parser("make-data", help="generate one modular dataset (.npz)")
    s.add_argument("--op", required=True)
    s.add_argument("--p", type=int, required=True)
    s.add_argument("--train-frac", type=float, required=True)
    s.add_argument("--split-seed", type=int, required=True)
    s.add_argument("--out", required=True)

    s = sub.add_parser("train", help="train one job (a batch of cells) and write its history")
    s.add_argument("--job", type=_json_arg, required=True, help="JSON: {experiment, job, cells: [{id, settings}]}")
    s.add_argument("--dataset", required=True)
    s.add_argument("--history", required=True)
    s.add_argument("--meta", required=True)
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--nondeterministic", action="store_true")
    s.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32")

    s = sub.add_parser("norms", help="extract one cell's curves and norm record")
    s.add_argument("--job-history", required=True)
    s.add_argument("--job-meta", required=True)
    s.add_argument("--cell", required=True)
    s.add_argument("--settings", type=_json_arg, required=True)
    s.add_argument("--out-history", required=True)
    s.add_argument("--out-norms", required=True)

    s = sub.add_parser("fit", help="fit the delay law over an experiment's cells")
    s.add_argument("--norms", nargs="+", required=True)
    s.add_argument("--out-fit", required=True)
    s.add_argument("--out-table", required=True)

    s = sub.add_parser("figures", help="render an experiment's figures")
    s.add_argument("--cells-table", required=True)
    s.add_argument("--histories", nargs="+", required=True)
    s.add_argument("--fit", required=True)
    s.add_argument("--out-dir", required=True)
    s.add_argument("--max-cells", type=int, default=48)

    s = sub.add_parser("science", help="statistics, prospective prediction, S, science figures")
    s.add_argument("--norms", nargs="+", required=True)
    s.add_argument("--histories", nargs="+", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--figure-dir", required=True)
    s.add_argument("--n-boot", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("experiment-summary", help="one experiment's summary")
    s.add_argument("--experiment", required=True)
    s.add_argument("--settings", type=_json_arg, required=True)
    s.add_argument("--fit", required=True)
    s.add_argument("--figures", nargs="+", required=True)
    s.add_argument("--job-metas", nargs="+", required=True)
    s.add_argument("--science", default=None)
    s.add_argument("--out", required=True)

    s = sub.add_parser("summary", help="merge experiment summaries into results/summary.json")
    s.add_argument("--experiment-summaries", type=_json_arg, required=True, help="JSON {name: path}")
    s.add_argument("--out", required=True)

    s = sub.add_parser("cells", help="list the cells and jobs of a config")
    s.add_argument("--configfile", default="config.yaml")

    a = ap.parse_args(argv)
    if a.stage == "make-data":
        pipeline.make_data(a.op, a.p, a.train_frac, a.split_seed, a.out)
    elif a.stage == "train":
        pipeline.train(a.job, a.dataset, a.history, a.meta, a.checkpoint, a.device, a.threads,
                       not a.nondeterministic, a.precision)
    elif a.stage == "norms":
        pipeline.norms(a.job_history, a.job_meta, a.cell, a.settings, a.out_history, a.out_norms)
    elif a.stage == "fit":
        pipeline.fit(a.norms, a.out_fit, a.out_table)
    elif a.stage == "figures":
        pipeline.figures(a.cells_table, a.histories, a.fit, a.out_dir, a.max_cells)
    elif a.stage == "experiment-summary":
        pipeline.experiment_summary(a.experiment, a.settings, a.fit, a.figures, a.job_metas, a.out,
                                    science_json=a.science)
    elif a.stage == "science":
        pipeline.science(a.norms, a.histories, a.out, a.figure_dir, a.n_boot, a.seed)
    elif a.stage == "summary":
        pipeline.summary(a.experiment_summaries, a.out)
    elif a.stage == "cells":
        from nht.config import cell_index, load_config

        cells, jobs, job_of = cell_index(load_config(a.configfile))
        for cid, cell in cells.items():
            print(f"{cell.experiment}\t{job_of[cid]}\t{cid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
