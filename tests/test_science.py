"""Tests of nht.science on synthetic cells whose truth is known."""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from nht import science

EVAL = 10


def synth_cell(cid, lr=0.01, wd=1.0, T_mem=200, V_mem=400.0, V_st=50.0, rate_factor=1.0,
               stop_margin=300, max_steps=None, regime=None, seed=0, init_scale=1, op="add",
               noise=0.0):
    """A cell that memorises at T_mem, decays as V_mem*exp(-rate_factor*2*eta*lambda*(t-T_mem)),
    generalises when V reaches V_st, then keeps V flat. Returns (norms row, history)."""
    el = lr * wd
    gamma = rate_factor * 2 * el
    delay = math.log(V_mem / V_st) / gamma
    T_gen_true = T_mem + delay
    end = int(T_gen_true + stop_margin) if max_steps is None else max_steps
    steps = np.arange(0, end + 1, EVAL, dtype=float)
    rng = np.random.default_rng(seed)
    V = np.where(steps <= T_mem, V_mem * (0.5 + 0.5 * steps / T_mem),
                 np.maximum(V_mem * np.exp(-gamma * (steps - T_mem)), V_st))
    V = V * np.exp(noise * rng.normal(size=V.size))
    train_acc = np.clip(steps / T_mem, 0, 1)
    test_acc = np.where(steps >= T_gen_true, 1.0, 0.02)
    hist = pd.DataFrame({"step": steps, "train_loss": 1 - train_acc, "train_acc": train_acc,
                         "test_loss": 1 - test_acc, "test_acc": test_acc, "V": V,
                         "V:out.weight": V * 0.3, "V:hidden.weight": V * 0.7})
    i_mem = int(np.argmax(train_acc >= 0.99))
    gen_idx = np.flatnonzero(test_acc >= 0.99)
    T_gen = float(steps[gen_idx[0]]) if gen_idx.size and max_steps is None else None
    if regime is None:
        regime = "delayed" if T_gen is not None else "shortcut_persists"
    V_final = float(V[-1])
    row = {"cell": cid, "experiment": "synth", "status": "finished", "regime": regime,
           "stop_step": float(steps[-1]), "T_mem": float(steps[i_mem]), "T_gen": T_gen,
           "delay": (T_gen - steps[i_mem]) if T_gen is not None else None,
           "V_init": float(V[0]), "V_mem": float(V[i_mem]),
           "V_gen": float(V[gen_idx[0]]) if T_gen is not None else None,
           "V_peak": float(V.max()), "V_peak_step": float(steps[int(np.argmax(V))]),
           "V_final": V_final, "T_pred": math.log(V[i_mem] / V_final) / (2 * el),
           "lr": lr, "weight_decay": wd, "init_scale": init_scale, "seed": seed, "op": op,
           "p": 31, "optimizer": "adamw", "model": "mlp",
           "layers": {"out.weight": {"V_mem": V[i_mem] * 0.3, "V_final": V_final * 0.3 * 0.5},
                      "hidden.weight": {"V_mem": V[i_mem] * 0.7, "V_final": V_final * 0.7},
                      "hidden.bias": {"V_mem": 1.0, "V_final": 0.001}}}
    return row, hist


def synth_grid(**kw):
    rows, hists = [], {}
    i = 0
    for wd in (0.5, 1.0, 2.0):
        for lr in (0.005, 0.01):
            for a, V_mem in ((1, 300.0), (2, 900.0)):
                row, h = synth_cell(f"c{i}", lr=lr, wd=wd, V_mem=V_mem, init_scale=a, seed=i, **kw)
                rows.append(row)
                hists[row["cell"]] = h
                i += 1
    return pd.DataFrame(rows), hists


def test_delay_fit_recovers_known_k_and_b_and_counts_exclusions():
    rng = np.random.default_rng(0)
    t_pred = rng.uniform(100, 3000, 30)
    rows = [{"cell": f"c{i}", "regime": "delayed", "status": "finished", "delay": 1.6 * t + 250,
             "T_pred": t, "lr": 0.01, "weight_decay": 1.0 + i, "op": "add"}
            for i, t in enumerate(t_pred)]
    rows += [{"cell": "x1", "regime": "no_fit", "delay": None, "T_pred": None, "lr": 0.01,
              "weight_decay": 10, "op": "add"},
             {"cell": "x2", "regime": "shortcut_persists", "delay": None, "T_pred": None,
              "lr": 0.01, "weight_decay": 0.3, "op": "add"},
             {"cell": "x3", "regime": "delayed", "delay": 500, "T_pred": None, "lr": 0.01,
              "weight_decay": 0.3, "op": "add"},
             {"cell": "x4", "regime": "diverged", "status": "diverged", "delay": 100.0,
              "T_pred": 100.0, "lr": 0.01, "weight_decay": 0.3, "op": "add"}]
    out = science.fit_delay_laws(pd.DataFrame(rows), n_boot=300, seed=1)
    law = out["delay_law"]
    assert law["k"] == pytest.approx(1.6) and law["b"] == pytest.approx(250)
    assert law["n"] == 30 and law["r2"] == pytest.approx(1.0)
    assert law["excluded"] == {"no_fit": 1, "shortcut_persists": 1, "no_T_pred": 1, "diverged": 1}
    assert out["baseline_inverse_eta_lambda"]["n"] == 31
    assert out["delay_law_log"]["n"] == 30
    assert out["per_op"] == {}


def test_per_op_fits_when_several_ops():
    rows = []
    for op, k in (("add", 1.0), ("mul", 2.0)):
        for i in range(6):
            rows.append({"cell": f"{op}{i}", "regime": "delayed", "op": op, "delay": k * (100 + 50 * i),
                         "T_pred": 100 + 50 * i, "lr": 0.01, "weight_decay": 1 + i})
    out = science.fit_delay_laws(pd.DataFrame(rows), n_boot=100)
    assert set(out["per_op"]) == {"add", "mul"}
    assert out["per_op"]["mul"]["delay_law"]["k"] == pytest.approx(2.0)


@pytest.mark.parametrize("factor", [1.0, 1.7])
def test_decay_rate_recovers_known_gamma(factor):
    row, hist = synth_cell("c", lr=0.01, wd=0.5, rate_factor=factor)
    res = science.decay_rate(hist, row["T_mem"], row["T_gen"], row["lr"], row["weight_decay"])
    # the last row of the window may sit on the V_st floor; the fit stays within 3 %
    assert res["ratio"] == pytest.approx(factor, rel=0.03)
    assert res["n_points"] >= 3


def test_decay_rate_too_short_window_is_none():
    h = pd.DataFrame({"step": [0, 10, 20], "V": [3.0, 2.0, 1.0]})
    assert science.decay_rate(h, 10, 20, 0.01, 1)["ratio"] is None


def test_prediction_reads_nothing_after_T_mem():
    row, hist = synth_cell("c", noise=0.05, seed=3)
    full = science.predict_T_gen(hist, row["T_mem"], row["lr"], row["weight_decay"], V_st=50.0)
    truncated = science.predict_T_gen(hist[hist["step"] <= row["T_mem"]], row["T_mem"], row["lr"],
                                      row["weight_decay"], V_st=50.0)
    garbage = hist.copy()
    after = garbage["step"] > row["T_mem"]
    garbage.loc[after, [c for c in garbage.columns if c != "step"]] = np.nan
    garbage.loc[after, "V"] = 1e9
    scrambled = science.predict_T_gen(garbage, row["T_mem"], row["lr"], row["weight_decay"],
                                      V_st=50.0)
    assert full == truncated == scrambled
    assert full["T_gen_pred"] is not None


def test_prospective_prediction_ignores_the_cells_own_future():
    cells, hists = synth_grid()
    base = science.prospective_prediction(cells, hists, n_boot=50)
    target = "c3"
    t_mem = cells.loc[cells.cell == target, "T_mem"].item()
    cells2 = cells.copy()
    idx = cells2.index[cells2.cell == target]
    cells2.loc[idx, ["T_gen", "V_gen", "V_final", "delay", "T_pred", "V_peak"]] = [
        99999.0, 1e-6, 1e-6, 1.0, 1.0, 1e9]
    h = hists[target].copy()
    h.loc[h.step > t_mem, "V"] = 1e9
    h = h[h.step <= t_mem + 5 * EVAL]          # also truncated
    hists2 = dict(hists, **{target: h})
    new = science.prospective_prediction(cells2, hists2, n_boot=50)
    assert new["per_cell"][target]["T_gen_pred"] == base["per_cell"][target]["T_gen_pred"]
    assert new["per_cell"][target]["V_st"] == base["per_cell"][target]["V_st"]


def test_prospective_prediction_is_accurate_when_the_law_holds_exactly():
    cells, hists = synth_grid()
    out = science.prospective_prediction(cells, hists, n_boot=100)
    assert out["n"] == len(cells)
    assert out["median_abs_rel_error"] < 0.02       # eval-grid rounding only
    assert out["per_regime"]["delayed"]["n"] == len(cells)
    assert all(c["peer_level"] == 1 for c in out["per_cell"].values())


def test_prospective_prediction_without_peers_is_counted():
    row, hist = synth_cell("solo")
    out = science.prospective_prediction(pd.DataFrame([row]), {"solo": hist}, n_boot=10)
    assert out["n"] == 0 and out["not_predicted"] == {"no_peer": 1}


def _transition(sharp):
    steps = np.arange(0, 3000, 10.0)
    V = np.where(steps < 500, 100 + steps, 600 * np.exp(-0.002 * (steps - 500)))
    if sharp:       # grokking-like: accuracy jumps from chance to 1 when ln V crosses a level
        acc = np.where(np.log(V) < np.log(600) - 1.5, 1.0, 1 / 31)
    else:           # gradual: accuracy rises smoothly as ln V falls
        acc = 1 / (1 + np.exp(-(np.log(600) - np.log(V) - 1.5) * 4))
    return pd.DataFrame({"step": steps, "V": V, "test_acc": acc})


@pytest.mark.parametrize("sharp", [True, False])
def test_S_is_one_on_clean_transition_and_near_zero_when_shuffled(sharp):
    clean = _transition(sharp)
    res = science.clean_norm_separation_cell(clean)
    assert res["S"] == pytest.approx(1.0)
    assert res["peak_step"] == 500
    if sharp:       # the Spearman form cannot reach 1 on a step: why it is not the primary S
        assert res["S_spearman"] < 0.87
    else:
        assert res["S_spearman"] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    shuffled_S = []
    for _ in range(20):
        sh = clean.copy()
        # keep the norm curve; only the pairing of accuracy with V is destroyed
        sh["test_acc"] = rng.permutation(sh["test_acc"].to_numpy())
        shuffled_S.append(science.clean_norm_separation_cell(sh)["S"])
    assert abs(np.mean(shuffled_S)) < 0.05
    assert max(abs(s) for s in shuffled_S) < 0.25
    reversed_ = clean.assign(test_acc=1 - clean["test_acc"] + 1 / 31)
    assert science.clean_norm_separation_cell(reversed_)["S"] == pytest.approx(-1.0)


def test_S_undefined_on_short_window_and_experiment_verdicts():
    short = pd.DataFrame({"step": [0, 10, 20], "V": [1.0, 2.0, 3.0], "test_acc": [0, 0, 1.0]})
    assert science.clean_norm_separation_cell(short)["S"] is None
    never = _transition(True).assign(test_acc=0.03)
    res = science.clean_norm_separation_cell(never)
    assert res["S"] is None and "no structured phase" in res["reason"]
    # a norm that keeps rising through the transition: after its peak only structured rows
    # remain (undefined), but from T_mem on it scores against the claim
    steps = np.arange(0, 2000, 10.0)
    rising = pd.DataFrame({"step": steps, "V": 100 + steps,
                           "test_acc": np.where(steps >= 1000, 1.0, 0.03)})
    assert science.clean_norm_separation_cell(rising)["S"] is None
    res = science.clean_norm_separation_cell(rising, T_mem=200)
    assert res["S"] == pytest.approx(-1.0) and res["window_start"] == 200
    cells, hists = synth_grid(noise=0.0)
    sep = science.clean_norm_separation(cells, hists, n_boot=100)
    assert sep["n"] == len(cells) and sep["verdict"] == "holds" and sep["S"] >= 0.8
    # destroy the relation in every cell -> fails, and all cells are untrusted
    rng = np.random.default_rng(1)
    bad = {k: h.assign(test_acc=rng.permutation(h["test_acc"].to_numpy())) for k, h in hists.items()}
    sep2 = science.clean_norm_separation(cells, bad, n_boot=100)
    assert sep2["verdict"] == "fails"
    assert len(sep2["untrusted_cells"]) >= len(cells) - 1
    sep3 = science.clean_norm_separation(cells.iloc[:2], hists, n_boot=100)
    assert sep3["verdict"] == "not_enough_data"


def test_norm_regime_and_layer_orderings():
    cells, hists = synth_grid()
    no = science.norm_ordering(cells)
    assert no["share"] == 1.0 and no["n"] == len(cells)
    lh = science.layer_hierarchy(cells)
    assert lh["share_readout_max"] == 1.0 and lh["n"] == len(cells)
    assert "hidden.bias" not in lh["median_contraction"]
    # layers passed separately win over the column
    flipped = {c: {"out.weight": {"V_mem": 1.0, "V_final": 0.9},
                   "hidden.weight": {"V_mem": 1.0, "V_final": 0.1}} for c in cells.cell}
    assert science.layer_hierarchy(cells, flipped)["share_readout_max"] == 0.0
    rows = []
    for s in range(2):
        for wd, reg in ((0.1, "shortcut_persists"), (1, "delayed"), (3, "immediate"), (10, "no_fit")):
            rows.append({"cell": f"{wd}-{s}", "weight_decay": wd, "regime": reg, "lr": 0.01, "seed": s})
    rows.append({"cell": "d", "weight_decay": 5, "regime": "diverged", "lr": 0.01, "seed": 0})
    ro = science.regime_ordering(pd.DataFrame(rows))
    assert ro["all_present"] and ro["concordance"] == 1.0 and ro["n_pairs"] == 12
    rows[0]["regime"] = "no_fit"      # lambda=0.1, seed 0 suppressed: discordant with 1 and 3 (not with 10)
    ro = science.regime_ordering(pd.DataFrame(rows))
    assert ro["n_discordant"] == 2 and ro["concordance"] == pytest.approx(1 - 2 / 12)


def test_analyse_modular_end_to_end(tmp_path):
    cells, hists = synth_grid(noise=0.01)
    extra = [synth_cell("persist", wd=0.5, max_steps=600)[0]]
    extra_h = {"persist": synth_cell("persist", wd=0.5, max_steps=600)[1]}
    extra.append({"cell": "nofit", "regime": "no_fit", "status": "finished", "T_mem": None,
                  "T_gen": None, "delay": None, "T_pred": None, "lr": 0.01, "weight_decay": 10,
                  "op": "add"})
    extra.append({"cell": "nan", "regime": "diverged", "status": "diverged", "T_mem": None,
                  "T_gen": None, "delay": None, "T_pred": None, "lr": 0.01, "weight_decay": 10,
                  "op": "add"})
    all_cells = pd.concat([cells, pd.DataFrame(extra)], ignore_index=True)
    out = science.analyse_modular(all_cells, {**hists, **extra_h}, str(tmp_path / "fig"), n_boot=200)
    json.dumps(out, allow_nan=False)
    for key in ("delay_law", "baseline_inverse_eta_lambda", "delay_law_log", "per_op",
                "decay_rate", "prospective_prediction", "clean_norm_separation", "figures",
                "norm_ordering", "regime_ordering", "layer_hierarchy"):
        assert key in out, key
    for key in ("k", "b", "r2", "n", "k_ci", "b_ci", "r2_ci"):
        assert key in out["delay_law"] and key in out["baseline_inverse_eta_lambda"]
    assert out["delay_law"]["n"] == len(cells)
    assert out["delay_law"]["excluded"] == {"shortcut_persists": 1, "no_fit": 1, "diverged": 1}
    assert out["decay_rate"]["median"] == pytest.approx(1.0, abs=0.05)
    assert out["prospective_prediction"]["per_regime"]["shortcut_persists"]["n"] == 1
    assert out["clean_norm_separation"]["threshold"] == 0.8
    names = {os.path.basename(p) for p in out["figures"]}
    for stem in ("delay_law_bootstrap", "prospective", "norm_fits", "decay_rate",
                 "clean_separation"):
        assert f"{stem}.png" in names and f"{stem}.pdf" in names
    assert all(os.path.getsize(p) > 1000 for p in out["figures"])


def test_analyse_modular_with_no_transition_still_returns(tmp_path):
    row, h = synth_cell("p", max_steps=500)
    out = science.analyse_modular(pd.DataFrame([row]), {"p": h}, str(tmp_path), n_boot=50)
    json.dumps(out, allow_nan=False)
    assert out["delay_law"]["k"] is None and out["delay_law"]["n"] == 0
    assert out["clean_norm_separation"]["verdict"] == "not_enough_data"


def test_S_accepts_an_image_style_history():
    clean = _transition(True)
    img = pd.DataFrame({"epoch": clean["step"] / 10, "V": clean["V"],
                        "reliance": 1 - clean["test_acc"]})
    assert science.clean_norm_separation_cell(img, phi_column="reliance")["S"] == pytest.approx(1.0)


def test_image_clean_norm_separation():
    clean = _transition(True)
    epochs = clean["step"] / 10
    good = pd.DataFrame({"epoch": epochs, "V": clean["V"], "reliance": 1 - clean["test_acc"]})
    hists, rows = {}, []
    rng = np.random.default_rng(0)
    for i in range(4):
        hists[f"t{i}"] = good
        rows.append({"cell": f"t{i}", "regime": "intermediate", "status": "ok",
                     "transition_epoch": 150.0})
    hists["weak"] = good.assign(reliance=0.99)                     # never left the shortcut
    rows.append({"cell": "weak", "regime": "weak", "status": "ok", "transition_epoch": None})
    hists["noisy"] = good.assign(reliance=rng.permutation(good["reliance"].to_numpy()))
    rows.append({"cell": "noisy", "regime": "strong", "status": "ok", "transition_epoch": None})
    hists["never"] = good.assign(reliance=0.1)                     # never fitted the shortcut
    rows.append({"cell": "never", "regime": "weak", "status": "ok", "transition_epoch": None})
    out = science.image_clean_norm_separation(pd.DataFrame(rows), hists, n_boot=100)
    assert out["n"] == 4 and out["S"] == pytest.approx(1.0) and out["verdict"] == "holds"
    assert set(out["per_cell"]) == {"t0", "t1", "t2", "t3", "weak", "noisy"}
    assert {u["cell"] for u in out["untrusted_cells"]} == {"weak", "noisy"}
    json.dumps(science.clean_json(out), allow_nan=False)
