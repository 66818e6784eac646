"""Config loading, validation, the cell grid, cell ids and training-job grouping.

This module is the single source of truth for *which cells exist* and *what they are called*.
The Snakefile, the DVC stage generator, the benchmarks and the tests all call
:func:`expand_cells` / :func:`group_jobs`; nothing else enumerates the grid.

A *cell* is one training run: one value for every grid axis of an experiment. Its id is
human-readable and depends only on the cell's own resolved settings::

    add_p31_f0.6_ss0_lr0.003_wd0.3_a1_s0-1a2b3c4d

The readable part names the grid-axis values; the 8-hex-digit suffix is a hash of the
experiment name and of *every* setting that can change the cell's result (model sizes,
max_steps, test_threshold, ...), so any change to a cell gives it a new id and leaves all other
cells' ids (and cached results) alone. Ids are unique across experiments.

Every key of an experiment is a *result* setting (in the cell hash and in the training job's
definition) unless it is listed in one of four categories, the same for every kind
(:data:`NOT_IN_CELL_HASH`): :data:`WORKFLOW_ONLY_KEYS` (descriptions, job grouping, cluster
resources), :data:`ANALYSIS_KEYS` (read by figures and summaries only), :data:`EVENT_RULE_KEYS`
(read when a history is analysed: re-extract events, retrain nothing) and
:data:`SCHEDULING_KEYS` (reach the trainer, but only as speed/memory/resumption knobs: they are
passed to the job outside its definition, so editing one reruns nothing). A new key is a result
setting until it is listed in a category.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from nht.core.io import stable_hash

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "workflow" / "schemas"


class ConfigError(ValueError):
    """An invalid config value; the message names the offending key."""


@dataclass(frozen=True)
class KindSpec:
    """What the grid machinery needs to know about an experiment kind."""

    axes: tuple[str, ...]          # grid axes, in id order
    abbrev: dict[str, str]         # axis -> id prefix ("" = value only)
    batchable: tuple[str, ...] = ()  # axes that may be trained together in one process


KINDS: dict[str, KindSpec] = {
    "modular": KindSpec(
        axes=("op", "p", "train_frac", "split_seed", "lr", "weight_decay", "init_scale", "seed"),
        abbrev={"op": "", "p": "p", "train_frac": "f", "split_seed": "ss", "lr": "lr",
                "weight_decay": "wd", "init_scale": "a", "seed": "s"},
        batchable=("lr", "weight_decay", "init_scale", "seed"),
    ),
    "image": KindSpec(
        axes=("rho", "border", "lr", "weight_decay", "seed"),
        abbrev={"rho": "r", "border": "b", "lr": "lr", "weight_decay": "wd", "seed": "s"},
        # every axis: cells of one job may read different shortcut datasets (stacked on the device)
        batchable=("rho", "border", "lr", "weight_decay", "seed"),
    ),
}

# Key categories (the same for every kind; a key absent from a kind's schema is simply never set).
# A key in none of them is a result setting: it enters the cell hash and the training job.

# Settings that only steer the workflow around a cell (descriptions, job grouping, cluster
# resources), never what its jobs compute.
WORKFLOW_ONLY_KEYS = ("description", "batch_over", "max_cells_per_job", "mem_mb", "runtime_min", "gpus")

# Settings read only by figures and summaries of a whole experiment, never by a cell's jobs.
ANALYSIS_KEYS = ("figure_cells_max", "reference_rho", "reference_weight_decay")

# Settings of the event rule (nht.core.events): read when a history is analysed, never by training.
EVENT_RULE_KEYS = ("train_threshold", "secondary_threshold", "immediate_delay", "immediate_epochs", "fit_phi",
                   "transition_rise", "transition_fall")

# Settings the trainer reads that change only its speed, memory or resumption, never what it
# computes (CPU threads, evaluation chunk size, checkpoint interval in SECONDS): passed to the
# training job outside its definition (``scheduling`` of nht.recompute's Recompute.rule), so
# editing one reruns nothing.
SCHEDULING_KEYS = ("threads", "checkpoint_seconds", "eval_batch_size")

# Settings that cannot change a cell's result: left out of its id hash.
NOT_IN_CELL_HASH = WORKFLOW_ONLY_KEYS + ANALYSIS_KEYS + EVENT_RULE_KEYS + SCHEDULING_KEYS

# Result settings added after results existed whose null means "off": left out of the cell hash and
# of the job's definition while null, so ids and cached results made before them stay valid.
NULL_IS_ABSENT = ("intervention",)


def _hashed_value(key: str, value: Any) -> bool:
    return key not in NOT_IN_CELL_HASH and not (key in NULL_IS_ABSENT and value is None)

# Axes of a dataset: cells with equal values share one generated dataset file.
DATASET_AXES = {"modular": ("op", "p", "train_frac", "split_seed"), "image": ("rho", "border", "seed")}


# ----------------------------------------------------------------------------- validation

def _default_setting_validator():
    base = jsonschema.Draft202012Validator

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})


_VALIDATOR = _default_setting_validator()


def _load_schema(name: str) -> dict:
    with open(SCHEMA_DIR / name) as fh:
        return yaml.safe_load(fh)


def _key_path(prefix: str, error: jsonschema.ValidationError) -> str:
    parts = [prefix] if prefix else []
    for p in error.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else str(p))
    return ".".join(parts).replace(".[", "[")


def _validate(instance: dict, schema: dict, prefix: str) -> None:
    errors = sorted(_VALIDATOR(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        err = min(errors, key=lambda e: -len(list(e.absolute_path)))
        # oneOf errors are unhelpful at the top; report the deepest concrete context
        detail = err
        if err.context:
            detail = max(err.context, key=lambda e: len(list(e.absolute_path)))
        key = _key_path(prefix, detail if detail.absolute_path else err)
        raise ConfigError(f"invalid config key '{key}' = {json.dumps(detail.instance)}: {detail.message}")


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n ** 0.5) + 1))


def _check_finite(value: Any, key: str) -> None:
    """Refuse NaN and +-inf anywhere in the config (YAML's ``.nan``/``.inf`` load as floats, and
    JSON schema bounds do not reject NaN), naming the key."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"invalid config key '{key}' = {value}: not a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, f"{key}[{i}]")


def _check_no_repeats(prefix: str, exp: dict) -> None:
    """A grid axis may list a value once (twice would make two cells with one id)."""
    for axis in KINDS[exp["kind"]].axes:
        values = exp.get(axis)
        if not isinstance(values, list):
            continue
        for i, v in enumerate(values):
            if v in values[:i]:
                raise ConfigError(f"invalid config key '{prefix}.{axis}': value {json.dumps(v)} is listed twice")


PATH_KEYS = ("results_dir", "data_dir")


def validate_config(config: dict) -> dict:
    """Validate a config dict in place (filling defaults) and return it.

    Raises :class:`ConfigError` naming the first invalid key, e.g.
    ``invalid config key 'experiments.mlp.weight_decay[1]' = -1: -1 is less than the minimum of 0``.
    Every number must be finite (no NaN or inf). ``results_dir`` and ``data_dir`` are normalised
    (``os.path.normpath``: ``results/``, ``./results`` and ``results`` are one directory, with
    one set of paths, records and job definitions); relative paths stay relative.
    """
    if isinstance(config, dict):
        _check_finite(config, "")
    _validate(config, _load_schema("config.schema.yaml"), "")
    for key in PATH_KEYS:
        config[key] = os.path.normpath(config[key])
    for name, exp in config["experiments"].items():
        prefix = f"experiments.{name}"
        kind = exp["kind"]
        _validate(exp, _load_schema(f"{kind}_experiment.schema.yaml"), prefix)
        _check_no_repeats(prefix, exp)
        spec = KINDS[kind]
        for axis in exp.get("batch_over", []):
            if axis not in spec.batchable:
                raise ConfigError(f"invalid config key '{prefix}.batch_over': axis '{axis}' cannot be batched")
        if kind == "modular":
            ops = _as_list(exp["op"])
            for p in _as_list(exp["p"]):
                if "div" in ops and not _is_prime(p):
                    raise ConfigError(f"invalid config key '{prefix}.p' = {p}: op 'div' needs a prime p")
            if exp.get("intervention") is not None:
                _check_intervention(prefix, exp)
        check_measurable(prefix, exp)
    return config


# The exact symmetry groups an ``intervention`` of a modular model may rescale, per model layout
# (what each group does: nht/domains/modular/intervention.py, which reads this table).
INTERVENTION_GROUPS = {"mlp": ("embed", "relu"), "transformer": ("qk", "vo", "head"),
                       "transformer_pre_ln": ("qk", "vo", "head", "ln1_qkv", "ln2_ff")}


def intervention_layout(model: dict) -> str:
    """The key of :data:`INTERVENTION_GROUPS` for a model config."""
    return "transformer_pre_ln" if model["name"] == "transformer" and model.get("norm_first") else model["name"]


def _check_intervention(prefix: str, exp: dict) -> None:
    """The intervention's symmetry groups must be exact for the experiment's model."""
    have = INTERVENTION_GROUPS[intervention_layout(exp["model"])]
    for g in exp["intervention"].get("groups") or ():
        if g not in have:
            why = " (exact only with norm_first: true)" if g in INTERVENTION_GROUPS["transformer_pre_ln"] else ""
            raise ConfigError(f"invalid config key '{prefix}.intervention.groups': group '{g}' is not an exact "
                              f"symmetry of model '{exp['model']['name']}'{why}; available: {', '.join(have)}")


# Image models whose cells train stacked, several per job (nht.domains.images.train.STACKED_MODELS).
STACKED_IMAGE_MODELS = ("simple_cnn", "mlp")

# Sizes (train, test) of the datasets whose size is known without loading them, for the checks below.
KNOWN_IMAGE_SIZES = {"digits": (1437, 360), "cifar10": (50000, 10000)}


def check_measurable(prefix: str, exp: dict) -> None:
    """Checks across keys: refuse a config that cannot produce a measurement, naming the key.

    Modular: every (op, p, train_frac) leaves a non-empty train and test set, at least
    ``batch_size`` training pairs; eval_every <= max_steps (otherwise only step 0 is evaluated).
    Image: n_train / n_test within the dataset and batch_size <= the training set (when its size
    is known from the config or the dataset), borders thinner than half the image.
    """
    batch = exp.get("batch_size")
    batch = batch if isinstance(batch, int) else None          # 'full' never exceeds the set
    if exp["kind"] == "modular":
        for op in _as_list(exp["op"]):
            for p in _as_list(exp["p"]):
                n = p * (p - 1) if op == "div" else p * p
                for frac in _as_list(exp["train_frac"]):
                    n_train = int(round(frac * n))
                    if not 0 < n_train < n:
                        raise ConfigError(f"invalid config key '{prefix}.train_frac' = {frac}: with p = {p} "
                                          f"({n} pairs) it leaves {n_train} training and {n - n_train} test pairs")
                    if batch is not None and batch > n_train:
                        raise ConfigError(f"invalid config key '{prefix}.batch_size' = {batch}: larger than the "
                                          f"training set ({n_train} pairs of op {op}, p = {p}, train_frac = {frac})")
        for steps in _as_list(exp["max_steps"]):
            for every in _as_list(exp.get("eval_every", 1)):
                if every > steps:
                    raise ConfigError(f"invalid config key '{prefix}.eval_every' = {every}: larger than "
                                      f"max_steps = {steps}, so nothing after step 0 would be measured")
        return
    ds = exp["dataset"]
    sizes = KNOWN_IMAGE_SIZES.get(ds.get("name"))
    for key, i in (("n_train", 0), ("n_test", 1)):
        cap = ds.get("max_train" if i == 0 else "max_test") or (sizes[i] if sizes else None)
        want = ds.get(key)
        if want is not None and cap is not None and want > cap:
            raise ConfigError(f"invalid config key '{prefix}.dataset.{key}' = {want}: the "
                              f"{ds.get('name')} {'training' if i == 0 else 'test'} set has only {cap} images")
    # an upper bound of the training set (n_train, else the decoded or known size; classes only shrink it)
    most = ds.get("n_train") or ds.get("max_train") or (sizes[0] if sizes else None)
    if batch is not None and most is not None and batch > most:
        raise ConfigError(f"invalid config key '{prefix}.batch_size' = {batch}: larger than the training set "
                          f"(at most {most} {ds.get('name')} images)")
    if exp["model"]["name"] not in STACKED_IMAGE_MODELS and exp["max_cells_per_job"] > 1:
        raise ConfigError(f"invalid config key '{prefix}.max_cells_per_job' = {exp['max_cells_per_job']}: model "
                          f"'{exp['model']['name']}' trains one cell per job (BatchNorm buffers); only "
                          f"{', '.join(STACKED_IMAGE_MODELS)} stack")
    side = (8 + 2 * ds.get("pad", 4)) if ds.get("name") == "digits" else (ds.get("image_size") or 32)
    for width in _as_list(exp.get("border", 0)):
        if 2 * width >= side:
            raise ConfigError(f"invalid config key '{prefix}.border' = {width}: a {side}x{side} image "
                              "would be all border")


def load_config(path: str | Path) -> dict:
    """Read a YAML config file and validate it (see :func:`validate_config`)."""
    with open(path) as fh:
        config = yaml.safe_load(fh)
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a config must be a mapping with an 'experiments' key")
    return validate_config(config)


# ----------------------------------------------------------------------------- cells

def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, list) else [value]


def format_value(value: Any) -> str:
    """Compact, filename-safe rendering of an axis value (0.001 -> '0.001', 1.0 -> '1')."""
    if isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return text.replace("/", "-").replace(" ", "")


@dataclass(frozen=True)
class Cell:
    """One training run. ``settings`` holds every resolved value (axes as scalars)."""

    experiment: str
    kind: str
    id: str
    settings: dict = field(hash=False, compare=False)

    def __getitem__(self, key: str) -> Any:
        return self.settings[key]

    @property
    def dataset_id(self) -> str:
        return dataset_id(self.kind, self.settings)

    @property
    def run_settings(self) -> dict:
        """The settings a job of this cell defines itself by: all but the workflow-only, analysis
        and scheduling keys, so editing those reruns no training or extraction."""
        skip = WORKFLOW_ONLY_KEYS + ANALYSIS_KEYS + SCHEDULING_KEYS
        return {k: v for k, v in self.settings.items()
                if k not in skip and not (k in NULL_IS_ABSENT and v is None)}

    @property
    def result_settings(self) -> dict:
        """What defines its training job (in the job's definition): :attr:`run_settings` without
        the event rule, so editing an event threshold re-extracts events but retrains nothing."""
        return {k: v for k, v in self.run_settings.items() if k not in EVENT_RULE_KEYS}

    @property
    def scheduling(self) -> dict:
        """Its :data:`SCHEDULING_KEYS` (threads, eval_batch_size, checkpoint_seconds), passed to its
        training job outside the job's definition."""
        return {k: self.settings[k] for k in SCHEDULING_KEYS if k in self.settings}

    @property
    def train_settings(self) -> dict:
        """Everything its trainer reads: :attr:`result_settings` plus :attr:`scheduling`."""
        return dict(self.result_settings, **self.scheduling)


def train_job_spec(job: "Job") -> dict:
    """The ``--job`` argument of a modular training job, part of its definition:
    ``{experiment, job, cells: [{id, settings}]}`` with each cell's :attr:`Cell.result_settings`."""
    return {"experiment": job.experiment, "job": job.id,
            "cells": [{"id": c.id, "settings": c.result_settings} for c in job.cells]}


def job_scheduling(cells) -> dict:
    """The scheduling settings of a training job (:data:`SCHEDULING_KEYS`; equal for all its
    cells, as they are not grid axes), passed to it outside its definition."""
    values = {json.dumps(c.scheduling, sort_keys=True) for c in cells}
    if len(values) != 1:
        raise ValueError(f"cells of one job disagree on scheduling settings: {sorted(values)}")
    return json.loads(values.pop())


# Fields of an image experiment's dataset block that change the decoded raw file.
IMAGE_RAW_KEYS = ("name", "source", "archive", "root", "md5", "pad", "image_size", "target_attr",
                  "spurious_attr", "max_train", "max_test", "subset_seed")


def image_raw_spec(experiment_config: dict) -> dict:
    """The part of an image experiment's dataset block that defines its decoded raw file."""
    ds = experiment_config["dataset"]
    return {k: ds[k] for k in IMAGE_RAW_KEYS if k in ds}


def image_fetch_id(experiment_config: dict) -> str:
    """Id of the decoded raw file (``{data_dir}/image/raw/<id>.npz``), shared by experiments whose
    raw spec is equal."""
    spec = image_raw_spec(experiment_config)
    return f"{spec['name']}_{spec['source']}-{stable_hash(spec)}"


def image_shortcut_id(cell: "Cell", experiment_config: dict) -> str:
    """Id of a cell's shortcut dataset (``{data_dir}/image/<experiment>/<id>.npz``): its
    (rho, border, seed) and the whole dataset block."""
    return f"{cell.dataset_id}-{stable_hash(experiment_config['dataset'])}"


def image_tables(config: dict, cells: dict) -> tuple[dict, dict, dict]:
    """Lookup tables of the image rules: ``{fetch id: raw spec}``, ``{experiment: its cells sorted
    by id}`` and ``{(experiment, shortcut id): (rho, border, seed)}``."""
    exps = {n: e for n, e in config["experiments"].items() if e["kind"] == "image"}
    fetch = {image_fetch_id(e): image_raw_spec(e) for e in exps.values()}
    by_exp = {n: sorted((c for c in cells.values() if c.experiment == n), key=lambda c: c.id) for n in exps}
    shortcuts = {(n, image_shortcut_id(c, exps[n])): (c["rho"], c["border"], c["seed"])
                 for n, cs in by_exp.items() for c in cs}
    return fetch, by_exp, shortcuts


def image_job_spec(job: "Job", experiment_config: dict) -> dict:
    """The ``--job`` argument of an image training job, part of its definition: ``{experiment, job,
    cells: [{id, settings, data}]}``, each cell's :attr:`Cell.result_settings` (with ``experiment``)
    and the id of its shortcut dataset (:func:`image_shortcut_id`)."""
    return {"experiment": job.experiment, "job": job.id,
            "cells": [{"id": c.id, "settings": dict(c.result_settings, experiment=c.experiment),
                       "data": image_shortcut_id(c, experiment_config)} for c in job.cells]}


def dataset_id(kind: str, settings: dict) -> str:
    """Id of the dataset a cell trains on; shared by all cells with equal dataset axes."""
    spec = KINDS[kind]
    return "_".join(f"{spec.abbrev[a]}{format_value(settings[a])}" for a in DATASET_AXES[kind])


def cell_id(experiment: str, kind: str, settings: dict) -> str:
    """Readable axis values + hash of the experiment name and every result-relevant setting."""
    spec = KINDS[kind]
    readable = "_".join(f"{spec.abbrev[a]}{format_value(settings[a])}" for a in spec.axes)
    hashed = {k: v for k, v in settings.items() if _hashed_value(k, v)}
    return f"{readable}-{stable_hash([experiment, hashed])}"


def expand_cells(config: dict, experiment: str | None = None) -> list[Cell]:
    """All cells of the (validated) config, or of one experiment, in a stable order."""
    cells = []
    for name, exp in config["experiments"].items():
        if experiment is not None and name != experiment:
            continue
        spec = KINDS[exp["kind"]]
        values = [_as_list(exp[a]) for a in spec.axes]
        for combo in itertools.product(*values):
            settings = copy.deepcopy(exp)
            settings.update(dict(zip(spec.axes, combo)))
            cells.append(Cell(name, exp["kind"], cell_id(name, exp["kind"], settings), settings))
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[0]
        raise ConfigError(f"duplicate cell '{dup}': a grid axis lists the same value twice")
    return cells


@dataclass(frozen=True)
class Job:
    """A set of cells trained together in one process (same dataset and model shape)."""

    experiment: str
    id: str
    cells: tuple[Cell, ...]


def group_jobs(cells: list[Cell]) -> list[Job]:
    """Group cells into training jobs.

    Rule: cells of one experiment that agree on every grid axis *not* listed in the
    experiment's ``batch_over`` form a group; a group larger than ``max_cells_per_job`` is split,
    in cell-id order, into consecutive chunks. A job's id is the readable values of the shared
    axes plus a hash of its member cell ids, so a job's cached outputs stay valid exactly as long
    as its set of cells is unchanged.
    """
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        spec = KINDS[cell.kind]
        batch_over = set(cell["batch_over"])
        key = (cell.experiment,) + tuple(
            (a, format_value(cell[a])) for a in spec.axes if a not in batch_over)
        groups.setdefault(key, []).append(cell)
    jobs = []
    for key, members in groups.items():
        members = sorted(members, key=lambda c: c.id)
        size = members[0]["max_cells_per_job"]
        spec = KINDS[members[0].kind]
        readable = "_".join(f"{spec.abbrev[a]}{v}" for a, v in key[1:]) or "all"
        for start in range(0, len(members), size):
            chunk = tuple(members[start:start + size])
            jid = f"{readable}-{stable_hash([c.id for c in chunk])}"
            jobs.append(Job(key[0], jid, chunk))
    return jobs


def cell_index(config: dict) -> tuple[dict[str, Cell], dict[str, Job], dict[str, str]]:
    """Lookup tables: cell id -> Cell, job id -> Job, cell id -> job id."""
    cells = expand_cells(config)
    jobs = group_jobs(cells)
    by_cell = {c.id: c for c in cells}
    by_job = {j.id: j for j in jobs}
    job_of = {c.id: j.id for j in jobs for c in j.cells}
    return by_cell, by_job, job_of
