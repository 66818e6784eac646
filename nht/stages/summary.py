"""Stage ``summary``: merge every experiment's summary into results/summary.json, with the
scorecard as Markdown and HTML beside it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nht.core import provenance
from nht.core.io import read_json, write_atomic, write_json
from nht.science.scorecard import attach_scorecards, scorecard_html, scorecard_markdown


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht summary", description=__doc__)
    ap.add_argument("--experiment-summaries", type=json.loads, required=True, help="JSON {name: path}")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    merged = {"experiments": {name: read_json(path) for name, path in sorted(a.experiment_summaries.items())},
              "provenance": provenance.record()}
    attach_scorecards(merged)  # every modular/image experiment gets its P1-P6 scorecard
    write_json(merged, a.out)
    write_atomic(Path(a.out).with_name("scorecard.md"), scorecard_markdown(merged))
    write_atomic(Path(a.out).with_name("scorecard.html"), scorecard_html(merged))
