"""The function-preserving norm intervention (nht/domains/modular/intervention.py, issue 17.2):
logits unchanged, V changed exactly as computed, factor 1 the identity, the optimizer moments
transformed as the gradient, and its hook in modular training (meta records, resume)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch.func import stack_module_state

from nht.config import ConfigError, expand_cells, validate_config
from nht.domains.modular import intervention as iv
from nht.domains.modular.data import make_modular_dataset
from nht.domains.modular.models import build_model, stacked_forward
from nht.domains.modular.train import Trainer, train_job

from conftest import tiny_modular

MODELS = {
    "mlp": {"name": "mlp", "embed_dim": 8, "hidden": 32},
    "transformer": {"name": "transformer", "d_model": 16, "n_heads": 4, "d_ff": 32, "norm_first": False},
    "transformer_pre_ln": {"name": "transformer", "d_model": 16, "n_heads": 4, "d_ff": 32, "norm_first": True},
}
P = 11
X = torch.cartesian_prod(torch.arange(P), torch.arange(P))           # every pair (a, b)


def random_params(model_cfg: dict, cells: int = 3, seed: int = 0, dtype=torch.float32) -> dict:
    """Stacked parameters of ``cells`` freshly built models, every entry perturbed (so zero-initialised
    biases and unit LayerNorm gains are generic too)."""
    torch.manual_seed(seed)
    params, _ = stack_module_state([build_model(model_cfg, P) for _ in range(cells)])
    gen = torch.Generator().manual_seed(seed + 1)
    return {k: (v.detach() + 0.2 * torch.randn(v.shape, generator=gen)).to(dtype) for k, v in params.items()}


def vnorm(params: dict) -> torch.Tensor:
    return sum(v.detach().double().pow(2).flatten(1).sum(dim=1) for v in params.values())


def groups_of(name: str) -> tuple:
    return iv.available_groups(MODELS[name])


# ----------------------------------------------------------------------------- the symmetry itself

@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("factor", [0.5, 3.0, 0.3])
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_logits_unchanged_and_v_changed_as_computed(name, factor, dtype, rtol):
    cfg = MODELS[name]
    params = random_params(cfg, dtype=dtype)
    f = stacked_forward(cfg)
    for groups in [None, groups_of(name)] + [(g,) for g in groups_of(name)]:
        after = iv.apply_to_params(params, cfg, factor, groups)
        before_out, after_out = f(params, X), f(after, X)
        scale = before_out.abs().max()
        assert (after_out - before_out).abs().max() <= rtol * scale, (groups, (after_out - before_out).abs().max() / scale)
        assert torch.equal(after_out.argmax(-1), before_out.argmax(-1)) or dtype == torch.float32
        # V: measured after == sum s^2 theta^2 from before, and the intervention really moved it
        v_after, v_pred = vnorm(after), iv.squared_norm_after(params, cfg, factor, groups)
        torch.testing.assert_close(v_after, v_pred, rtol=1e-6 if dtype == torch.float32 else 1e-13, atol=0)
        assert ((v_after - vnorm(params)).abs() > 1e-3 * vnorm(params)).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_v_change_per_group_is_c2_in_plus_inv_c2_out(name):
    """For a single group, V_after - V_before = (c^2 - 1) V_in + (1/c^2 - 1) V_out, with V_in/V_out
    read off the tensors the module docstring names (an independent statement of the groups)."""
    cfg, c = MODELS[name], 2.5
    params = random_params(cfg, dtype=torch.float64)
    d = cfg.get("d_model", 0)
    qkv_w, qkv_b = params.get("attn.qkv.weight"), params.get("attn.qkv.bias")
    sq = lambda *ts: sum(t.pow(2).flatten(1).sum(1) for t in ts)             # noqa: E731
    sides = {
        "embed": (lambda: sq(params["embed_a.weight"], params["embed_b.weight"]), lambda: sq(params["hidden.weight"])),
        "relu": (lambda: sq(params["hidden.weight"], params["hidden.bias"]), lambda: sq(params["out.weight"])),
        "qk": (lambda: sq(qkv_w[:, :d], qkv_b[:, :d]), lambda: sq(qkv_w[:, d:2 * d], qkv_b[:, d:2 * d])),
        "vo": (lambda: sq(qkv_w[:, 2 * d:], qkv_b[:, 2 * d:]), lambda: sq(params["attn.proj.weight"])),
        "head": (lambda: sq(params["ln_f.weight"], params["ln_f.bias"]), lambda: sq(params["head.weight"])),
        "ln1_qkv": (lambda: sq(params["ln1.weight"], params["ln1.bias"]), lambda: sq(qkv_w)),
        "ln2_ff": (lambda: sq(params["ln2.weight"], params["ln2.bias"]), lambda: sq(params["ff_in.weight"])),
    }
    for g in groups_of(name):
        v_in, v_out = sides[g][0](), sides[g][1]()
        expected = vnorm(params) + (c * c - 1) * v_in + (1 / (c * c) - 1) * v_out
        torch.testing.assert_close(vnorm(iv.apply_to_params(params, cfg, c, [g])), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_factor_one_is_the_identity(name):
    cfg = MODELS[name]
    params = random_params(cfg)
    after = iv.apply_to_params(params, cfg, 1.0, groups_of(name))
    assert all(torch.equal(after[k], params[k]) for k in params)
    mult = iv.multipliers(cfg, {k: tuple(v.shape[1:]) for k, v in params.items()}, 1.0, groups_of(name))
    assert all(bool((m == 1.0).all()) for m in mult.values())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_gradient_transforms_as_one_over_s(name):
    """grad L(s * theta) = grad L(theta) / s: why the moments are divided by s (and s^2)."""
    cfg, c = MODELS[name], 3.0
    params = random_params(cfg, cells=2, dtype=torch.float64)
    y = (X[:, 0] + X[:, 1]) % P
    f = stacked_forward(cfg)

    def grads(ps):
        leaves = {k: v.clone().requires_grad_(True) for k, v in ps.items()}
        logits = f(leaves, X)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, P), y.repeat(logits.shape[0]))
        return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))

    g0, g1 = grads(params), grads(iv.apply_to_params(params, cfg, c))
    mult = iv.multipliers(cfg, {k: tuple(v.shape[1:]) for k, v in params.items()}, c)
    for k in params:
        if k == "attn.qkv.bias":
            continue           # the key bias's gradient is zero up to rounding (softmax shift): compared below without it
        torch.testing.assert_close(g1[k], g0[k] / mult[k], rtol=1e-9, atol=1e-12)
    if "attn.qkv.bias" in params:
        d = cfg["d_model"]
        keep = torch.cat([torch.arange(d), torch.arange(2 * d, 3 * d)])
        torch.testing.assert_close(g1["attn.qkv.bias"][:, keep], (g0["attn.qkv.bias"] / mult["attn.qkv.bias"])[:, keep],
                                   rtol=1e-9, atol=1e-12)


def test_bad_inputs_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="not an exact symmetry of model 'mlp'"):
        iv.check_groups(MODELS["mlp"], ["qk"])
    with pytest.raises(ValueError, match="exact only with norm_first: true"):
        iv.check_groups(MODELS["transformer"], ["ln2_ff"])
    with pytest.raises(ValueError, match="factor must be a finite number > 0"):
        iv.multipliers(MODELS["mlp"], {}, -1.0)
    with pytest.raises(ValueError, match="intervention.at"):
        iv.Spec.from_settings({"model": MODELS["mlp"], "intervention": {"at": "end", "factor": 2}})
    assert iv.Spec.from_settings({"model": MODELS["mlp"], "intervention": None}) is None
    assert iv.predicted_shift_steps(100.0, 200.0, 0.01, 0.0) is None
    assert iv.predicted_shift_steps(100.0, 200.0, 0.01, 1.0) == pytest.approx(math.log(2) / 0.02)


# ----------------------------------------------------------------------------- config

def test_config_intervention_is_in_the_cell_id_only_when_set():
    ids = lambda **kw: [c.id for c in expand_cells(validate_config({"experiments": {"e": tiny_modular(**kw)}}))]  # noqa: E731
    plain = ids()
    assert ids(intervention=None) == plain
    with_fit = ids(intervention={"at": "fit", "factor": 2})
    assert not set(with_fit) & set(plain)
    assert not set(ids(intervention={"at": "fit", "factor": 0.5})) & set(with_fit)
    assert not set(ids(intervention={"at": 100, "factor": 2})) & set(with_fit)
    for bad, key in [({"at": "fit", "factor": 0}, "intervention.factor"), ({"at": "fit"}, "'factor' is a required"),
                     ({"at": "fit", "factor": 2, "groups": ["qk"]}, "intervention.groups"),
                     ({"at": -3, "factor": 2}, "intervention.at")]:
        with pytest.raises(ConfigError, match=key):
            validate_config({"experiments": {"e": tiny_modular(intervention=bad)}})


# ----------------------------------------------------------------------------- in training

def cells_for(model: str = "mlp", **overrides):
    exp = tiny_modular(model=MODELS[model], **overrides)
    return expand_cells(validate_config({"experiments": {"e": exp}}))


def data_for(cell):
    return make_modular_dataset(cell["op"], cell["p"], cell["train_frac"], cell["split_seed"])


def trained(model: str, steps: int, **overrides) -> Trainer:
    cells = cells_for(model, **overrides)
    trainer = Trainer(cells, data_for(cells[0]), torch.device("cpu"))
    for _ in range(steps):
        trainer.train_step()
    return trainer


@pytest.mark.parametrize("model", ["mlp", "transformer"])
def test_after_training_steps_the_hook_keeps_the_function_and_records_v(model):
    spec = {"at": 0, "factor": 0.5}
    trainer = trained(model, 25, intervention=spec, weight_decay=[0.5, 1.0], init_scale=[1, 2])
    hook = trainer.intervention                  # the trainer's own hook: applied by evaluate()
    x = trainer.x_test
    before = trainer.forward(trainer.params, x).detach().clone()
    v_before = vnorm(trainer.params)
    m_over_v = trainer.m / (trainer.v.sqrt() + 1e-30)
    rows = trainer.evaluate()
    after = trainer.forward(trainer.params, x).detach()
    # fp32, factor 0.5 and 2 (powers of two): rescaling is exact, the logits agree to rounding
    assert (after - before).abs().max() <= 1e-5 * before.abs().max()
    v_after = vnorm(trainer.params)
    for i, cell in enumerate(trainer.active):
        rec = hook.record(cell)["intervention"]
        assert rec["step"] == 25 and rec["factor"] == 0.5
        assert rec["V_before"] == pytest.approx(float(v_before[i]), rel=1e-12)
        assert rec["V_after"] == pytest.approx(float(v_after[i]), rel=1e-12)
        assert rec["V_after"] == pytest.approx(rec["V_after_expected"], rel=1e-6)
        assert rec["V_after"] != pytest.approx(rec["V_before"], rel=1e-3)
        assert rec["V_before"] == pytest.approx(rows[i]["V"], rel=1e-9)       # the row shows the state before
        hp = trainer.hp[cell]
        assert rec["predicted_shift_steps"] == pytest.approx(
            math.log(rec["V_after"] / rec["V_before"]) / (2 * hp["lr"] * hp["weight_decay"]))
    # Adam's normalised update m / sqrt(v) is kept per entry (m / s, v / s^2)
    torch.testing.assert_close(trainer.m / (trainer.v.sqrt() + 1e-30), m_over_v, rtol=1e-5, atol=1e-6)
    # once per cell: a second evaluation applies nothing
    flat = trainer.flat.clone()
    trainer.evaluate()
    assert torch.equal(trainer.flat, flat)


def test_a_step_after_a_factor_one_intervention_equals_no_intervention():
    plain = trained("mlp", 15, weight_decay=[0.5, 1.0], init_scale=[1, 2], batch_size=32)
    hooked = trained("mlp", 15, intervention={"at": 10, "factor": 1.0}, weight_decay=[0.5, 1.0], init_scale=[1, 2],
                     batch_size=32)
    plain.evaluate()
    hooked.evaluate()                               # applies it (at: 10 -> the evaluation at step 15)
    assert all(hooked.intervention.record(c)["intervention"]["step"] == 15 for c in hooked.active)
    assert plain.intervention.record(plain.active[0]) == {}
    for _ in range(5):
        plain.train_step()
        hooked.train_step()
    for a, b in ((plain.flat, hooked.flat), (plain.m, hooked.m), (plain.v, hooked.v)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("at", ["fit", 40])
def test_train_job_applies_it_once_per_cell_and_records_it_in_meta(tmp_path, at):
    cells = cells_for("mlp", intervention={"at": at, "factor": 2.0}, weight_decay=[0.5, 1.0], init_scale=1,
                      max_steps=200)
    meta = train_job(cells, data_for(cells[0]), tmp_path / "h.csv", tmp_path / "m.json", threads=1)
    hist = pd.read_csv(tmp_path / "h.csv")
    for cell in cells:
        rec = meta["cells"][cell.id]["intervention"]
        rows = hist[hist["cell"] == cell.id]
        if at == "fit":
            fitted = rows[rows["train_acc"] >= 0.99]
            assert len(fitted), "the tiny cell should fit within 200 steps"
            assert rec["step"] == int(fitted["step"].iloc[0])
        else:
            assert rec["step"] == 40
        row = rows[rows["step"] == rec["step"]].iloc[0]
        assert rec["V_before"] == pytest.approx(row["V"], rel=1e-6)
        assert rec["V_after"] > rec["V_before"] * 1.0001 or rec["V_after"] < rec["V_before"] * 0.9999
        nxt = rows[rows["step"] > rec["step"]]
        if len(nxt):          # training went on from the rescaled state (V jumped, then decays)
            assert abs(nxt["V"].iloc[0] - rec["V_after"]) < abs(nxt["V"].iloc[0] - rec["V_before"])
        lr, wd = cell["lr"], cell["weight_decay"]
        assert rec["predicted_shift_steps"] == pytest.approx(math.log(rec["V_after"] / rec["V_before"]) / (2 * lr * wd))


def test_train_job_without_intervention_has_no_record_and_resume_keeps_it(tmp_path):
    cells = cells_for("mlp", max_steps=120)
    meta = train_job(cells, data_for(cells[0]), tmp_path / "a.csv", tmp_path / "a.json", threads=1)
    assert all("intervention" not in m for m in meta["cells"].values())
    cells = cells_for("mlp", intervention={"at": 40, "factor": 3.0}, max_steps=120)
    data = data_for(cells[0])
    whole = train_job(cells, data, tmp_path / "w.csv", tmp_path / "w.json", threads=1)
    ckpt = tmp_path / "ckpt.pt"
    assert train_job(cells, data, tmp_path / "r.csv", tmp_path / "r.json", checkpoint_path=ckpt, threads=1,
                     stop_after_steps=60) == {"aborted_at": 60}
    resumed = train_job(cells, data, tmp_path / "r.csv", tmp_path / "r.json", checkpoint_path=ckpt, threads=1)
    assert resumed["resumed_from_step"] == 60
    for c in cells:
        assert resumed["cells"][c.id]["intervention"] == whole["cells"][c.id]["intervention"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "r.csv"), pd.read_csv(tmp_path / "w.csv"))


# ----------------------------------------------------------------------------- science readout

def _rec(cell, T_tr, stop=5000, experiment="x", **kw):
    return {"cell": cell, "experiment": experiment, "kind": "modular", "op": "add", "p": 31, "train_frac": 0.6,
            "split_seed": 0, "lr": 0.01, "weight_decay": 1.0, "init_scale": 1, "seed": kw.pop("seed", 0),
            "model": "mlp", "optimizer": "adamw", "T_transition": T_tr, "stop_step": stop, **kw}


def _iv(step, v0, v1, lr=0.01, wd=1.0):
    return {"step": step, "factor": 2.0, "at": "fit", "V_before": v0, "V_after": v1,
            "predicted_shift_steps": math.log(v1 / v0) / (2 * lr * wd)}


def test_readout_pairs_intervened_cells_with_their_controls():
    from nht.science.intervention import intervention_readout

    records = [_rec("c0", 1000), _rec("c1", 1200, seed=1), _rec("c2", None, seed=2), _rec("c3", 900, seed=3),
               _rec("i0", 1040, experiment="y", intervention=_iv(300, 100.0, 200.0)),
               _rec("i1", 1100, experiment="y", seed=1),
               _rec("i2", 1500, experiment="y", seed=2, intervention=_iv(300, 100.0, 150.0)),
               _rec("i3", None, stop=2000, experiment="y", seed=3, intervention=_iv(300, 100.0, 150.0)),
               _rec("i4", 700, experiment="y", seed=4, intervention=_iv(300, 100.0, 50.0)),
               _rec("i5", None, experiment="y", seed=5, intervention={"step": None, "factor": 2.0, "V_before": None,
                                                                     "V_after": None, "predicted_shift_steps": None})]
    metas = [{"cells": {"i1": {"status": "finished", "intervention": _iv(320, 100.0, 400.0)}}}]
    out = intervention_readout(records, metas=metas)
    rows = {r["cell"]: r for r in out["cells"]}
    assert set(rows) == {"i0", "i1", "i2", "i3", "i4", "i5"}
    assert rows["i0"]["control"] == "c0" and rows["i0"]["measured_shift_steps"] == 40
    assert rows["i0"]["predicted_shift_steps"] == pytest.approx(math.log(2) / 0.02)
    assert rows["i0"]["error_steps"] == pytest.approx(40 - math.log(2) / 0.02)
    assert rows["i1"]["control"] == "c1" and rows["i1"]["measured_shift_steps"] == -100    # from the job meta
    assert rows["i2"]["measured_shift_steps"] is None and rows["i2"]["measured_upper_bound"] == 1500 - 5000
    assert rows["i3"]["measured_lower_bound"] == 2000 - 900 and rows["i3"]["measured_shift_steps"] is None
    assert rows["i4"]["control"] is None and "no control" in rows["i4"]["why"]
    assert "never applied" in rows["i5"]["why"]
    assert out["n"] == 6 and out["n_measured"] == 2
    pred = [math.log(2) / 0.02, math.log(4) / 0.02]
    assert out["slope_through_origin"] == pytest.approx((40 * pred[0] - 100 * pred[1]) / (pred[0] ** 2 + pred[1] ** 2))
    assert out["sign_agreement"] == 0.5


def test_readout_with_settings_matches_on_every_setting_but_the_intervention():
    from nht.science.intervention import intervention_readout

    base = {"model": {"name": "mlp", "hidden": 128}, "lr": 0.01, "intervention": None, "description": "a"}
    settings = {"c0": base, "c1": base | {"model": {"name": "mlp", "hidden": 64}},
                "i0": base | {"intervention": {"at": "fit", "factor": 2}, "description": "b"},
                "i1": base | {"model": {"name": "mlp", "hidden": 64}, "intervention": {"at": "fit", "factor": 2}}}
    records = [_rec("c0", 1000), _rec("c1", 1300), _rec("i0", 1100, intervention=_iv(200, 10.0, 20.0)),
               _rec("i1", 1250, intervention=_iv(200, 10.0, 20.0))]
    rows = {r["cell"]: r for r in intervention_readout(records, settings)["cells"]}
    assert rows["i0"]["control"] == "c0" and rows["i0"]["measured_shift_steps"] == 100
    assert rows["i1"]["control"] == "c1" and rows["i1"]["measured_shift_steps"] == -50


@pytest.mark.parametrize("name,n_cells", [("norm-intervention", 36), ("norm-intervention-cpu", 24)])
def test_presets_validate_and_every_intervened_cell_has_a_control(name, n_cells):
    from pathlib import Path

    from nht.config import load_config
    from nht.science.intervention import match_key

    cfg = load_config(Path(__file__).resolve().parent.parent / "workflow" / "presets" / f"{name}.yaml")
    cells = expand_cells(cfg)
    assert len(cells) == n_cells
    controls = {match_key(c.result_settings) for c in cells if c["intervention"] is None}
    intervened = [c for c in cells if c["intervention"] is not None]
    assert intervened and len(controls) == n_cells - len(intervened)
    assert all(match_key(c.result_settings) in controls for c in intervened)
    assert {c["intervention"]["at"] for c in intervened} == {"fit"}


def test_the_summary_stage_reads_the_intervention_out_of_the_cell_records(tmp_path):
    """`python -m nht summary --cell-records ...` (what rule summary passes when the config has an
    intervention) puts the readout into summary.json; without records there is no such block."""
    from nht.core.io import read_json, write_json
    from nht.stages.summary import main as summary_main

    exp = tmp_path / "experiment_summary.json"
    write_json({"experiment": "x", "kind": "other"}, exp)
    paths = []
    for rec in (_rec("c0", 1000), _rec("i0", 1040, experiment="y", intervention=_iv(300, 100.0, 200.0))):
        paths.append(str(tmp_path / f"{rec['cell']}.json"))
        write_json(rec, paths[-1])
    outs = [str(tmp_path / n) for n in ("summary.json", "scorecard.md", "scorecard.html")]
    args = ["--experiment-summaries", str(exp), "--out", outs[0], "--out-markdown", outs[1], "--out-html", outs[2]]
    summary_main(args + ["--cell-records", *paths])
    readout = read_json(outs[0])["intervention"]
    assert readout["n"] == 1 and readout["cells"][0]["control"] == "c0"
    assert readout["cells"][0]["measured_shift_steps"] == 40
    summary_main(args + ["--cell-records"])
    assert "intervention" not in read_json(outs[0])
