"""Command line of the pipeline stages: ``python -m nht <stage> [options]``.

Each Snakemake rule runs exactly one stage. Only the module of the stage that runs is imported
(:data:`STAGES`), so editing one stage's code never touches another's (see :mod:`nht.stages`).
``python -m nht cells [--configfile F]`` lists the cell grid of a config.
"""

from __future__ import annotations

import importlib
import sys

STAGES = {
    "make-data": "nht.stages.make_data",
    "train": "nht.stages.train",
    "norms": "nht.stages.norms",
    "fit": "nht.stages.fit",
    "figures": "nht.stages.figures",
    "science": "nht.stages.science",
    "experiment-summary": "nht.stages.experiment_summary",
    "summary": "nht.stages.summary",
    "image-fetch": "nht.stages.image_fetch",
    "image-shortcut": "nht.stages.image_shortcut",
    "image-train": "nht.stages.image_train",
    "image-figures": "nht.stages.image_figures",
    "cells": "nht.stages.cells",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        names = ", ".join(STAGES)
        print(f"usage: python -m nht <stage> [options]\nstages: {names}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    importlib.import_module(STAGES[argv[0]]).main(argv[1:])
    return 0
