"""Stage ``summary``: merge every experiment's summary into results/summary.json, with the
scorecard as Markdown and HTML beside it, and, given cell records, the norm intervention's
predicted vs measured delay shifts (``summary["intervention"]``, :mod:`nht.science.intervention`)."""

from __future__ import annotations

import argparse
import sys

from nht.core import provenance
from nht.core.io import read_json, write_atomic, write_json
from nht.science.intervention import intervention_readout
from nht.science.scorecard import attach_scorecards
from nht.science.scorecard_render import scorecard_html, scorecard_markdown


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht summary", description=__doc__)
    ap.add_argument("--experiment-summaries", nargs="+", required=True,
                    help="every experiment's experiment_summary.json (each names its experiment)")
    ap.add_argument("--out", required=True, help="summary.json")
    ap.add_argument("--out-markdown", required=True, help="the scorecard as Markdown (scorecard.md)")
    ap.add_argument("--out-html", required=True, help="the scorecard as HTML (scorecard.html)")
    ap.add_argument("--cell-records", nargs="*", default=[],
                    help="norms.json of the modular cells, when the config has a norm intervention")
    a = ap.parse_args(argv)
    experiments = {}
    for path in a.experiment_summaries:
        summary = read_json(path)
        name = summary.get("experiment") if isinstance(summary, dict) else None
        if not isinstance(name, str) or name in experiments:
            sys.exit(f"nht summary: {path}: " + ("no 'experiment' name" if not isinstance(name, str)
                                                 else f"a second summary of experiment {name}"))
        experiments[name] = summary
    merged = {"experiments": dict(sorted(experiments.items())), "provenance": provenance.record()}
    attach_scorecards(merged)  # every modular/image experiment gets its P1-P6 scorecard
    if a.cell_records:
        merged["intervention"] = intervention_readout([read_json(p) for p in a.cell_records])
    write_json(merged, a.out)
    write_atomic(a.out_markdown, scorecard_markdown(merged))
    write_atomic(a.out_html, scorecard_html(merged))
