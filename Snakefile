# nht: the Norm-Hierarchy Transition pipeline.
#   fetch/generate data -> train (modular: one job = a batch of cells; images: one cell)
#   -> one history per cell (nht.core.history) -> events and norms per cell (nht.core.events)
#   -> science per experiment (any domain) -> figures, experiment summary -> results/summary.json
# All logic lives in the nht package; rules only call `python -m nht <stage>`.
from snakemake.utils import min_version, validate

min_version("9.0")

# The default config.yaml is used unless another full config is given with --configfile
# (presets under workflow/presets/ are complete configs, not additions to the default).
if "experiments" not in config:

    configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/recompute.smk"
include: "workflow/rules/modular.smk"
include: "workflow/rules/images.smk"
include: "workflow/rules/science.smk"
include: "workflow/rules/summary.smk"


rule all:
    default_target: True
    input:
        SUMMARY,
        # stale or restorable recorded jobs (nht.recompute): their force stamps are built first
        lambda w: RC.force_targets([SUMMARY]),
