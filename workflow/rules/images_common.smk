# Helpers of the image rules (workflow/rules/images.smk): ids, lookup tables and wildcard patterns.
# Kept apart from the rules, as the Snakemake style guide asks.

import json as _img_json
import re as _img_re

from nht.config import stable_hash as _img_hash


IMAGE_EXPERIMENTS = list(experiments_of_kind("image"))
# fields of the dataset block that change the decoded raw file
_IMG_RAW_KEYS = ("name", "source", "archive", "root", "md5", "pad", "image_size", "target_attr",
                 "spurious_attr", "max_train", "max_test", "subset_seed")


def _img_raw_spec(exp):
    ds = config["experiments"][exp]["dataset"]
    return {k: ds[k] for k in _IMG_RAW_KEYS if k in ds}


def _img_fetch_id(exp):
    spec = _img_raw_spec(exp)
    return f"{spec['name']}_{spec['source']}-{_img_hash(spec)}"


IMAGE_FETCH = {_img_fetch_id(e): _img_raw_spec(e) for e in IMAGE_EXPERIMENTS}
IMAGE_CELLS = {e: sorted((c for c in CELLS.values() if c.experiment == e), key=lambda c: c.id)
               for e in IMAGE_EXPERIMENTS}


def _img_shortcut_id(cell):
    ds = config["experiments"][cell.experiment]["dataset"]
    return f"{cell.dataset_id}-{_img_hash(ds)}"


IMAGE_SHORTCUTS = {}   # (experiment, shortcut id) -> (rho, border, seed)
for _e, _cells in IMAGE_CELLS.items():
    for _c in _cells:
        IMAGE_SHORTCUTS[(_e, _img_shortcut_id(_c))] = (_c["rho"], _c["border"], _c["seed"])


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
    """A cell's settings for its training job (no event rule) or for its norms job (all)."""
    base = cell.train_settings if stage == "train" else cell.run_settings
    return dict(base, experiment=cell.experiment)


def _img_exp_threads(exp):
    return config["experiments"][exp]["threads"]
