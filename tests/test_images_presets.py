"""Presets are complete, valid configs; the CPU preset's decay budget matches the paper's."""

import math
from pathlib import Path

import pytest
import yaml

from nht.config import expand_cells, load_config

REPO = Path(__file__).resolve().parent.parent
PRESETS = sorted((REPO / "workflow" / "presets").glob("*.yaml"))
IMAGE_PRESETS = ["cifar10-cpu", "cifar10-cpu-short", "paper-cifar10", "paper-resnet18", "paper-celeba", "paper-waterbirds",
                 "digits-mlp-nht-cpu"]


def sum_lr(n_train, batch, epochs, lr=1e-3):
    """sum over optimizer steps of the per-step cosine learning rate."""
    total = math.ceil(n_train / batch) * epochs
    return sum(lr * 0.5 * (1 + math.cos(math.pi * t / total)) for t in range(total))


@pytest.mark.parametrize("name", IMAGE_PRESETS)
def test_preset_is_a_valid_full_config(name):
    path = REPO / "workflow" / "presets" / f"{name}.yaml"
    cfg = load_config(path)
    assert all(e["kind"] == "image" for e in cfg["experiments"].values())
    assert len(expand_cells(cfg)) >= 1


def test_cpu_preset_decay_budget_matches_paper():
    cfg = yaml.safe_load((REPO / "workflow" / "presets" / "cifar10-cpu.yaml").read_text())
    rho_exp = cfg["experiments"]["cifar10_cpu_rho"]
    lam_exp = cfg["experiments"]["cifar10_cpu_lambda"]
    assert 0.1 in rho_exp["rho"] and {0.5, 0.9, 1.0} <= set(rho_exp["rho"])      # incl. 1/classes
    n = rho_exp["dataset"]["n_train"]
    ours = rho_exp["weight_decay"] * sum_lr(n, rho_exp["batch_size"], rho_exp["epochs"])
    paper = 0.1 * sum_lr(50_000, 128, 200)
    assert ours == pytest.approx(paper, rel=0.05)
    budgets = sorted(lam * sum_lr(n, 128, lam_exp["epochs"]) for lam in lam_exp["weight_decay"])
    paper_sweep = [lam * sum_lr(50_000, 128, 200) for lam in (0.001, 0.01, 0.1, 1.0)]
    assert budgets == pytest.approx(paper_sweep, rel=0.05)
    assert rho_exp["dataset"]["source"] == "local_archive"     # never a silent substitute


def test_default_config_has_offline_digits_experiment():
    cfg = load_config(REPO / "config.yaml")
    exp = cfg["experiments"]["digits_borders"]
    assert exp["kind"] == "image" and exp["dataset"] == {**exp["dataset"], "name": "digits", "source": "sklearn"}
    assert exp["border"] <= exp["dataset"]["pad"]


def test_digits_nht_preset_is_the_searched_protocol():
    """The issue-13 preset runs the search's no-noise protocol (benchmarks/image_transition_search.py)
    over >= 4 lambdas x >= 3 seeds, plus a rho sweep including the no-information 1/10."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("search", REPO / "benchmarks" / "image_transition_search.py")
    search = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(search)
    proto = next(p for p in search.PROTOCOLS if p["name"] == "nonoise_long")
    assert proto["classes"] is None and proto["alpha"] == 1.0          # nothing the pipeline cannot express
    cfg = load_config(REPO / "workflow" / "presets" / "digits-mlp-nht-cpu.yaml")
    lam = cfg["experiments"]["digits_mlp_nht_lambda"]
    from nht.config import validate_config
    searched = validate_config({"experiments": {"s": {**search.COMMON, **proto["exp"]}}})["experiments"]["s"]
    for key in ("dataset", "rho", "border", "lr", "model", "optimizer", "lr_schedule", "batch_size"):
        assert lam[key] == searched[key], key
    assert not lam.get("input_noise") and not proto["exp"]["input_noise"]
    assert len(lam["weight_decay"]) >= 4 and len(lam["seed"]) >= 3
    rho = cfg["experiments"]["digits_mlp_nht_rho"]
    assert 0.1 in rho["rho"] and 1.0 in rho["rho"]
