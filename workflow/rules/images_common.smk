# Helpers of the image rules (workflow/rules/images.smk): ids, lookup tables and wildcard patterns.
# Kept apart from the rules, as the Snakemake style guide asks.

import json as _img_json
import re as _img_re

from nht.config import SCHEDULING_KEYS, image_fetch_id, image_job_spec, image_shortcut_id, image_tables, job_scheduling


IMAGE_EXPERIMENTS = list(experiments_of_kind("image"))
IMAGE_FETCH, IMAGE_CELLS, IMAGE_SHORTCUTS = image_tables(config, CELLS)
IMAGE_JOBS = sorted(j.id for j in JOBS.values() if j.experiment in IMAGE_EXPERIMENTS)


def _img_jobs_of(exp):
    return [j for j in IMAGE_JOBS if JOBS[j].experiment == exp]


def _img_job_spec(job):
    """The --job argument of an image training job (its definition): each cell's settings and dataset."""
    return image_job_spec(JOBS[job], config["experiments"][JOBS[job].experiment])


def _img_job_data(job):
    """The shortcut datasets of a job's cells, each once, in cell order."""
    return list(dict.fromkeys(f"{D}/image/{JOBS[job].experiment}/{c['data']}.npz" for c in _img_job_spec(job)["cells"]))


def _img_fetch_id(exp):
    return image_fetch_id(config["experiments"][exp])


def _img_shortcut_id(cell):
    return image_shortcut_id(cell, config["experiments"][cell.experiment])


_IMG_EXP_RE = "|".join(_img_re.escape(e) for e in IMAGE_EXPERIMENTS) or "NO_IMAGE_EXPERIMENT"
_IMG_CELL_RE = "|".join(_img_re.escape(c.id) for cs in IMAGE_CELLS.values() for c in cs) or "NO_IMAGE_CELL"
_IMG_JOB_RE = "|".join(_img_re.escape(j) for j in IMAGE_JOBS) or "NO_IMAGE_JOB"


# Image jobs have a training rule of their own; the modular one matches the same paths, so the image
# rule wins (it is constrained to image experiments, so other kinds' files are unaffected).
def _img_has_rule(name):
    try:
        getattr(rules, name)
        return True
    except Exception:
        return False


if _img_has_rule("train_modular"):

    ruleorder: image_train > train_modular


if _img_has_rule("fit_modular"):

    ruleorder: image_experiment_summary > fit_modular



def image_experiment_summary_files():
    """The per-experiment summaries the lead's `summary` rule consumes."""
    return [f"{R}/{e}/experiment_summary.json" for e in IMAGE_EXPERIMENTS]


def _img_settings(cell, stage="train"):
    """A cell's settings for its training job (its result settings: no event rule, no scheduling keys,
    which travel apart) or for its norms job (with the event rule)."""
    base = cell.result_settings if stage == "train" else cell.run_settings
    return dict(base, experiment=cell.experiment)


def _img_without_scheduling(exp):
    """An experiment's config without its scheduling keys (figures never read them)."""
    return {k: v for k, v in config["experiments"][exp].items() if k not in SCHEDULING_KEYS}


def _img_exp_threads(exp):
    return config["experiments"][exp]["threads"]
