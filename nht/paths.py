"""Where every artifact lives. Snakemake rules and Python code both build paths from here.

Templates use Snakemake-style ``{wildcards}``; ``{results}`` and ``{data}`` are the
``results_dir`` and ``data_dir`` config values.
"""

DATASET = "{data}/{kind}/{dataset}.npz"                       # generated / decoded dataset
JOB_HISTORY = "{results}/{experiment}/jobs/{job}/history.csv"  # long table, one row per (cell, eval step)
JOB_META = "{results}/{experiment}/jobs/{job}/meta.json"       # provenance, per-cell status, speed
JOB_CHECKPOINT = "{results}/{experiment}/jobs/{job}/checkpoint.pt"  # resumable state (deleted on success)
CELL_HISTORY = "{results}/{experiment}/cells/{cell}/history.csv"    # one cell's curves
CELL_NORMS = "{results}/{experiment}/cells/{cell}/norms.json"       # T_fit, T_transition, V_* , regime
CELL_TABLE = "{results}/{experiment}/cells.csv"                     # all cells' norms.json as a table
FIT = "{results}/{experiment}/fit.json"                             # delay law, baseline, regimes
FIGURE_DIR = "{results}/{experiment}/figures"
SUMMARY = "{results}/summary.json"
LOG = "logs/{rule}/{name}.log"
BENCHMARK = "benchmarks/rules/{rule}/{name}.tsv"


def fill(template: str, config: dict, **wildcards) -> str:
    """Fill ``{results}``/``{data}`` from the config and any other wildcard given."""
    return template.format(results=config.get("results_dir", "results"),
                           data=config.get("data_dir", "data"), **wildcards)
