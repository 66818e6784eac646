# Helpers of the image rules (workflow/rules/images.smk): ids, lookup tables and wildcard patterns.
# Kept apart from the rules, as the Snakemake style guide asks.

import json as _img_json
import re as _img_re

from nht.config import SCHEDULING_KEYS, image_fetch_id, image_shortcut_id, image_tables


IMAGE_EXPERIMENTS = list(experiments_of_kind("image"))
IMAGE_FETCH, IMAGE_CELLS, IMAGE_SHORTCUTS = image_tables(config, CELLS)


def _img_fetch_id(exp):
    return image_fetch_id(config["experiments"][exp])


def _img_shortcut_id(cell):
    return image_shortcut_id(cell, config["experiments"][cell.experiment])


_IMG_EXP_RE = "|".join(_img_re.escape(e) for e in IMAGE_EXPERIMENTS) or "NO_IMAGE_EXPERIMENT"
_IMG_CELL_RE = "|".join(_img_re.escape(c.id) for cs in IMAGE_CELLS.values() for c in cs) or "NO_IMAGE_CELL"


# Image cells are trained by image_train, never extracted from a modular training job; the generic
# per-cell rules of other kinds match the same paths, so image rules win (they are constrained to
# image experiments, so other kinds' files are unaffected).
def _img_has_rule(name):
    try:
        getattr(rules, name)
        return True
    except Exception:
        return False


if _img_has_rule("extract_norms"):

    ruleorder: image_train > extract_norms
    ruleorder: image_norms > extract_norms


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
