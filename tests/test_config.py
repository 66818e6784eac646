import copy
import re

import pytest

from nht.config import ConfigError, expand_cells, group_jobs, load_config, validate_config

from conftest import REPO, tiny_modular


def cfg(**overrides):
    return {"experiments": {"e": tiny_modular(**overrides)}}


def error_for(config) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    return str(info.value)


def test_default_config_is_valid_and_expands():
    config = load_config(REPO / "config.yaml")
    cells = expand_cells(config)
    assert len(cells) >= 24 + 8
    assert len({c.id for c in cells}) == len(cells)


@pytest.mark.parametrize("overrides, key", [
    ({"weight_decay": [0.5, -1]}, "experiments.e.weight_decay"),
    ({"op": "pow"}, "experiments.e.op"),
    ({"lr": 0}, "experiments.e.lr"),
    ({"model": {"name": "cnn"}}, "experiments.e.model.name"),
    ({"batch_size": "half"}, "experiments.e.batch_size"),
    ({"max_steps": 0}, "experiments.e.max_steps"),
    ({"unknown_knob": 1}, "experiments.e"),
    ({"op": "div", "p": 12}, "experiments.e.p"),
    ({"batch_over": ["p"]}, "experiments.e.batch_over"),
])
def test_invalid_values_name_the_key(overrides, key):
    message = error_for(cfg(**overrides))
    assert key in message, message


def test_top_level_errors_name_the_key():
    assert "device" in error_for({"device": "tpu", "experiments": {"e": tiny_modular()}})
    assert "experiments" in error_for({"experiments": {}})


def test_defaults_are_filled():
    config = validate_config(cfg())
    exp = config["experiments"]["e"]
    assert exp["train_threshold"] == 0.99 and exp["secondary_threshold"] == 0.9
    assert exp["optimizer"]["name"] == "adamw" and exp["batch_size"] == "full"
    assert config["device"] == "auto"


def test_grid_is_cartesian_and_ids_are_readable():
    cells = expand_cells(validate_config(cfg()))
    assert len(cells) == 4
    assert {(c["weight_decay"], c["init_scale"]) for c in cells} == {(0.5, 1), (0.5, 3), (1.0, 1), (1.0, 3)}
    assert any(c.id.startswith("add_p11_f0.7_ss0_lr0.01_wd0.5_a3_s0-") for c in cells)


def test_cell_id_depends_only_on_its_own_values():
    before = {c.id for c in expand_cells(validate_config(cfg()))}
    after_cells = expand_cells(validate_config(cfg(weight_decay=[0.5, 2.0])))
    after = {c.id for c in after_cells}
    kept = before & after
    assert len(kept) == 2 and all("_wd0.5_" in i for i in kept)
    # a setting shared by every cell changes every id
    assert not before & {c.id for c in expand_cells(validate_config(cfg(max_steps=301)))}
    # settings that cannot change results (threads, batching) leave ids alone
    assert before == {c.id for c in expand_cells(validate_config(cfg(threads=2, batch_over=["seed"])))}


def test_jobs_group_by_non_batched_axes():
    config = validate_config(cfg(batch_over=["init_scale"]))
    jobs = group_jobs(expand_cells(config))
    assert len(jobs) == 2
    assert all(len({c["weight_decay"] for c in j.cells}) == 1 for j in jobs)
    # changing one lambda value changes only the job holding it
    jobs2 = group_jobs(expand_cells(validate_config(cfg(batch_over=["init_scale"], weight_decay=[0.5, 2.0]))))
    assert len({j.id for j in jobs} & {j.id for j in jobs2}) == 1


def test_max_cells_per_job_splits_groups():
    config = validate_config(cfg(batch_over=["init_scale", "weight_decay"], max_cells_per_job=3))
    sizes = sorted(len(j.cells) for j in group_jobs(expand_cells(config)))
    assert sizes == [1, 3]


def test_experiments_do_not_share_cell_ids():
    config = validate_config({"experiments": {"a": tiny_modular(), "b": copy.deepcopy(tiny_modular())}})
    ids = [c.id for c in expand_cells(config)]
    assert len(set(ids)) == len(ids) == 8


COMPANION = {"p": 97, "train_frac": 0.5, "lr": 0.001, "batch_size": 512, "sampling": "with_replacement",
             "eval_every": 500, "stop_margin": 2000, "test_threshold": 0.99, "train_threshold": 0.99}
COMPANION_MODEL = {"name": "transformer", "d_model": 128, "n_heads": 4, "d_ff": 512, "norm_first": False,
                   "init": "companion", "pos_init_std": None}


@pytest.mark.parametrize("preset, seeds", [("companion-sweep", list(range(42, 52))),
                                           ("paper-transformer", list(range(10)))])
def test_transformer_presets_are_the_companion_protocol_and_plan(preset, seeds):
    """The companion's lambda sweep (scripts/s2_lambda_sweep_v2.py): 8 lambdas x 10 seeds, its settings."""
    from nht.costs import modular_job_work, priority

    config = load_config(REPO / "workflow" / "presets" / f"{preset}.yaml")
    cells = expand_cells(config)
    assert len(cells) == 80
    assert sorted({c["weight_decay"] for c in cells}) == [0.001, 0.01, 0.1, 0.3, 0.5, 1, 2, 5]
    assert sorted({c["seed"] for c in cells}) == seeds
    for c in cells:
        assert {k: c[k] for k in COMPANION} == COMPANION
        assert {k: c["model"][k] for k in COMPANION_MODEL} == COMPANION_MODEL
        assert c["optimizer"]["betas"] == [0.9, 0.999] and c["optimizer"]["eps"] == 1e-8
        if preset == "companion-sweep":      # the companion caps lambda <= 0.01 at 15k steps
            assert c["max_steps"] == (15000 if c["weight_decay"] <= 0.01 else 80000)
    jobs = group_jobs(cells)
    assert sum(len(j.cells) for j in jobs) == 80 and len(jobs) == len(config["experiments"])
    assert all(priority(modular_job_work(list(j.cells))) > 0 for j in jobs)


def test_default_transformer_experiment_is_the_companion_model_within_the_laptop_budget():
    config = load_config(REPO / "config.yaml")
    cells = expand_cells(config, "transformer_protocol")
    for c in cells:
        assert {k: c["model"][k] for k in COMPANION_MODEL} == COMPANION_MODEL
        assert c["optimizer"]["betas"] == [0.9, 0.999] and c["sampling"] == "with_replacement"
        assert c["stop_margin"] == 2000 and c["batch_size"] == 512
    # the budget of the default run: at most 8 cells x 8k steps (about 4 jobs x 2 cells on 2 cores)
    assert sum(c["max_steps"] for c in cells) <= 64000


def test_new_model_and_sampling_keys_are_validated():
    assert "experiments.e.sampling" in error_for(cfg(sampling="random"))
    assert "experiments.e.model.norm_first" in error_for(cfg(model={"name": "transformer", "norm_first": "yes"}))
    assert "experiments.e.model.init" in error_for(cfg(model={"name": "transformer", "init": "xavier"}))
    assert "experiments.e.model" in error_for(cfg(model={"name": "transformer", "pos_init_std": 0}))
    assert "experiments.e.model.embed_init" in error_for(cfg(model={"name": "mlp", "embed_init": "tiny"}))
    filled = validate_config(cfg(model={"name": "transformer"}))["experiments"]["e"]
    assert filled["sampling"] == "with_replacement"
    assert {k: filled["model"][k] for k in ("norm_first", "init", "pos_init_std")} == {
        "norm_first": False, "init": "companion", "pos_init_std": None}


# ----------------------------------------------------------------------------- bad input (issue 18.4)

def tiny_image(**overrides):
    exp = {"kind": "image", "dataset": {"name": "digits", "source": "sklearn", "n_train": 300, "n_test": 100},
           "rho": [0.1, 1.0], "weight_decay": 0.1, "epochs": 2, "batch_size": 100}
    exp.update(overrides)
    return exp


@pytest.mark.parametrize("yaml_text, key", [
    ("lr: .nan", "experiments.e.lr"),
    ("weight_decay: [0.5, .inf]", "experiments.e.weight_decay[1]"),
    ("init_scale: -.inf", "experiments.e.init_scale"),
    ("optimizer: {name: adamw, eps: .nan}", "experiments.e.optimizer.eps"),
    ("checkpoint_seconds: .inf", "experiments.e.checkpoint_seconds"),
    ("train_threshold: .nan", "experiments.e.train_threshold"),
])
def test_nan_and_inf_are_refused_naming_the_key(tmp_path, yaml_text, key):
    import yaml

    exp = tiny_modular()
    exp.update(yaml.safe_load(yaml_text))           # YAML's .nan/.inf load as floats
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"experiments": {"e": exp}}))
    with pytest.raises(ConfigError, match=rf"'{re.escape(key)}' = (nan|inf|-inf): not a finite number"):
        load_config(path)


def test_nan_in_an_image_dataset_block_is_refused():
    exp = tiny_image()
    exp["dataset"]["border_alpha"] = float("nan")
    assert "'experiments.e.dataset.border_alpha' = nan" in error_for({"experiments": {"e": exp}})


def test_p_has_a_maximum():
    assert "experiments.e.p" in error_for(cfg(p=2003))
    assert "experiments.e.p" in error_for(cfg(p=[11, 5000]))
    validate_config(cfg(p=1999, train_frac=0.5))


def test_batch_size_larger_than_the_training_set_is_refused():
    # p = 11, train_frac 0.7: round(0.7 * 121) = 85 training pairs
    message = error_for(cfg(batch_size=86))
    assert "'experiments.e.batch_size' = 86" in message and "85 pairs" in message, message
    validate_config(cfg(batch_size=85))
    assert "'experiments.e.batch_size' = 86" in error_for(cfg(batch_size=86, train_frac=[0.9, 0.7]))
    assert "'experiments.e.batch_size' = 301" in error_for({"experiments": {"e": tiny_image(batch_size=301)}})
    validate_config({"experiments": {"e": tiny_image(batch_size=300)}})
    whole = tiny_image(batch_size=1438)
    whole["dataset"] = {"name": "digits", "source": "sklearn"}          # all 1437 training digits
    assert "'experiments.e.batch_size' = 1438" in error_for({"experiments": {"e": whole}})


@pytest.mark.parametrize("kind, axis, values, shown", [
    ("modular", "seed", [0, 1, 0], "0"),
    ("modular", "weight_decay", [0.5, 1.0, 0.5], "0.5"),
    ("modular", "op", ["add", "add"], '"add"'),
    ("image", "rho", [0.9, 0.9], "0.9"),
])
def test_a_repeated_grid_value_is_refused_naming_the_key(kind, axis, values, shown):
    exp = tiny_modular() if kind == "modular" else tiny_image()
    exp[axis] = values
    assert error_for({"experiments": {"mlp": exp}}) == (
        f"invalid config key 'experiments.mlp.{axis}': value {shown} is listed twice")
