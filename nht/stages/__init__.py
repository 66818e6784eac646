"""Stage entry points: one module per pipeline stage, each with ``main(argv)``.

``python -m nht <stage> ...`` (see :mod:`nht.cli`) imports only the module of that stage, so a
stage's code set (what reruns it when edited, see :mod:`nht.core.fingerprint`) is exactly what it runs:
training never imports fitting, statistics, figures or the scorecard.
"""


def add_cell_files(ap) -> None:
    """The per-cell inputs of an aggregate stage: ``--norms`` (the cells' norms.json) and
    ``--histories`` (their history.csv, in the same order: the rule passes both, so no stage finds
    a history by its path)."""
    ap.add_argument("--norms", nargs="+", required=True, help="the cells' norms.json")
    ap.add_argument("--histories", nargs="+", required=True, help="the cells' history.csv, in the order of --norms")


def check_cell_files(ap, args) -> None:
    """Stop with a usage error unless ``--histories`` has one file per ``--norms`` record."""
    if len(args.norms) != len(args.histories):
        ap.error(f"{len(args.norms)} --norms but {len(args.histories)} --histories (one history per record, in order)")
