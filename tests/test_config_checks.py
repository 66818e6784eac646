"""Configs that cannot produce a measurement are refused before any job, naming the key
(checks across keys as well as per key), and config paths are safe in every shell command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from nht.config import ConfigError, validate_config

from conftest import rule_sources

REPO = Path(__file__).resolve().parent.parent


def default() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


@pytest.mark.parametrize("change, key", [
    (lambda c: c["experiments"]["mlp_regimes"].update(train_frac=0.0001), "experiments.mlp_regimes.train_frac"),
    (lambda c: c["experiments"]["mlp_regimes"].update(train_frac=0.9999), "experiments.mlp_regimes.train_frac"),
    (lambda c: c["experiments"]["mlp_regimes"].update(eval_every=20000), "experiments.mlp_regimes.eval_every"),
    (lambda c: c["experiments"]["digits_borders"]["dataset"].update(n_train=5000),
     "experiments.digits_borders.dataset.n_train"),
    (lambda c: c["experiments"]["digits_borders"]["dataset"].update(n_test=361),
     "experiments.digits_borders.dataset.n_test"),
    (lambda c: c["experiments"]["digits_borders"].update(border=[2, 8]), "experiments.digits_borders.border"),
    (lambda c: c.update(results_dir="my results"), "results_dir"),
    (lambda c: c.update(data_dir="data; touch pwned"), "data_dir"),
    (lambda c: c.update(results_dir="-rf"), "results_dir"),
    (lambda c: c.update(results_dir="../elsewhere"), "results_dir"),
])
def test_unmeasurable_or_unsafe_config_is_refused_naming_the_key(change, key):
    c = default()
    change(c)
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
        validate_config(c)


@pytest.mark.parametrize("path", ["results", "runs/2026-11-30_a.v2", "/scratch/nht/results"])
def test_ordinary_paths_are_accepted(path):
    c = default()
    c["results_dir"] = path
    validate_config(c)


def test_every_path_in_every_shell_command_is_quoted():
    files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    sources = rule_sources(files)
    assert {"train_modular", "summary", "image_train", "nht_force"} <= set(sources)
    for name, src in sources.items():
        if "shell:" not in src:
            continue                                     # rule all
        shell = src.split("shell:", 1)[1]
        for field in re.findall(r"\{(input|output|log|params)(?:\.(\w+))?(:q)?\}", shell):
            kind, attr, quoted = field
            constant_flags = kind == "params" and attr in ("det", "tf32", "deterministic", "max_cells")
            assert quoted or constant_flags, f"rule {name}: {{{kind}{'.' + attr if attr else ''}}} is not quoted"


@pytest.mark.parametrize("path, normal", [("results/", "results"), ("./results", "results"),
                                          ("runs//a/./b/", "runs/a/b"), ("/scratch/nht/results/", "/scratch/nht/results")])
def test_paths_are_normalised_relative_stay_relative(path, normal):
    c = default()
    c["results_dir"] = c["data_dir"] = path
    validate_config(c)
    assert c["results_dir"] == c["data_dir"] == normal
