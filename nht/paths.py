"""The path templates that Python code shares with the rules (the rest of the layout is written
out in the rules themselves, workflow/rules/*.smk, where a reader of a rule sees it).

Templates use Snakemake-style ``{wildcards}``; ``{results}`` is the ``results_dir`` config value
(and ``{data}`` the ``data_dir``, for :func:`fill`).
"""

JOB_META = "{results}/{experiment}/jobs/{job}/meta.json"       # training meta (rule train_modular)
JOB_CHECKPOINT = "{results}/{experiment}/jobs/{job}/checkpoint.pt"  # resumable state (deleted on success)
CELL_NORMS = "{results}/{experiment}/cells/{cell}/norms.json"       # event record (rule extract_norms)
SUMMARY = "{results}/summary.json"                                  # every experiment (rule summary)


def fill(template: str, config: dict, **wildcards) -> str:
    """Fill ``{results}``/``{data}`` from the config and any other wildcard given."""
    return template.format(results=config.get("results_dir", "results"),
                           data=config.get("data_dir", "data"), **wildcards)
