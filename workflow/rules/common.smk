# Shared state of the workflow: the validated config, the cell grid and the training jobs.
# nht.config is the single source of truth for cells, cell ids and job grouping.
import json
import os
import re
import sys

from snakemake.exceptions import WorkflowError

from nht.config import ConfigError, cell_index, dataset_id, job_scheduling, train_job_spec, validate_config
from nht.costs import modular_job_work, priority
from nht.recompute.decide import Recompute

try:
    validate_config(config)
except ConfigError as err:
    raise WorkflowError(str(err))

envvars:
    "PATH",


PY = sys.executable
# Rules call `python -m nht ...`: the Python that runs snakemake (e.g. .venv) comes first on the
# jobs' PATH, unless a rule's conda environment is activated (--sdm conda).
os.environ["PATH"] = os.path.dirname(PY) + os.pathsep + os.environ.get("PATH", "")
R = config["results_dir"]
D = config["data_dir"]
CELLS, JOBS, JOB_OF = cell_index(config)
SUMMARY = f"{R}/summary.json"

# Content-based recompute (nht.recompute.decide; docs/dvc.md). A rule declares its input, output
# and params as usual; its inputs go through `unpack(RC.inputs("<rule>", name=...))`, which adds
# the job's decision (clean inputs ancient(), a stale job a force stamp), `params: nht=RC.tag`
# hands the job to its wrapper (`python -m nht.recompute {params.nht:q} {log:q} {input:q} --
# COMMAND`), which records what the job read, ran and wrote. The rest of a job's definition (its
# outputs, params and shell command) is read from the rule itself, through `rules.<name>`.
RC = Recompute(rules, records_dir=f"{R}/.records", data_records_dir=f"{D}/.records")

wildcard_constraints:
    experiment="[A-Za-z0-9][A-Za-z0-9_-]*",
    job="[^/]+",
    cell="[^/]+",
    dataset="[^/]+",


def experiments_of_kind(kind):
    """Names of the configured experiments of one kind ('modular', 'image')."""
    return [name for name, exp in config["experiments"].items() if exp["kind"] == kind]


def experiment_pattern(kind=None):
    """Wildcard regex matching exactly the experiments of one kind, or all experiments with no kind
    (never matches when none)."""
    names = experiments_of_kind(kind) if kind else list(config["experiments"])
    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


def cells_of(experiment):
    return [c for c in CELLS.values() if c.experiment == experiment]


def cell_files(experiment, name):
    """One file per cell of an experiment, e.g. cell_files(e, 'norms.json')."""
    return [f"{R}/{experiment}/cells/{c.id}/{name}" for c in cells_of(experiment)]


def jobs_of(experiment):
    return [j for j in JOBS.values() if j.experiment == experiment]


MODULAR_DATASETS = {
    c.dataset_id: {k: c[k] for k in ("op", "p", "train_frac", "split_seed")}
    for c in CELLS.values()
    if c.kind == "modular"
}


def job_spec(job_id):
    """The --job argument of a modular training job: its cells' result settings (its definition)."""
    return train_job_spec(JOBS[job_id])


def job_scheduling_arg(job_id):
    """The --scheduling argument of a training job (nht.config.SCHEDULING_KEYS), outside its definition."""
    return json.dumps(job_scheduling(JOBS[job_id].cells), sort_keys=True)


def job_setting(key):
    return lambda wildcards: JOBS[wildcards.job].cells[0][key]


def job_priority(wildcards):
    """Longest (estimated) training job first: packs the jobs onto few cores with a short tail."""
    return priority(modular_job_work(JOBS[wildcards.job].cells))


def recompute_finish(log=None):
    """End of a run (onsuccess/onerror): quarantine what is not current, snapshot into DVC."""
    from nht.recompute.publish import finish

    finish(config, RC.decisions, [RC.records_dir, RC.data_records_dir])
