"""Tests of the science layer on synthetic cells whose truth is known: every verdict is shown
holding on data built to hold and failing on data built to fail."""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from nht.science import analyse as science
from nht.science.prediction import predictive_verdict
from nht.science.delay_law import fit_inputs


def synth_cell(cid, lr=0.01, wd=1.0, T_fit=200, V_fit=400.0, V_st=50.0, rate_factor=1.0,
               stop_margin=300, max_steps=None, regime=None, seed=0, init_scale=1, op="add",
               noise=0.0, every=10, floor=True):
    """A cell that memorises at T_fit, decays as V_fit*exp(-rate_factor*2*eta*lambda*(t-T_fit))
    (V squared norm, t steps), generalises when V reaches V_st, then keeps V flat (``floor``)
    or decaying.
    Returns (norms row, history)."""
    el = lr * wd
    gamma = rate_factor * 2 * el
    T_transition_true = T_fit + math.log(V_fit / V_st) / gamma
    end = int(T_transition_true + stop_margin) if max_steps is None else max_steps
    steps = np.arange(0, end + 1, every, dtype=float)
    rng = np.random.default_rng(seed)
    V = np.where(steps <= T_fit, V_fit * (0.5 + 0.5 * steps / T_fit),
                 np.maximum(V_fit * np.exp(-gamma * (steps - T_fit)), V_st if floor else 0))
    V = V * np.exp(noise * rng.normal(size=V.size))
    train_acc = np.clip(steps / T_fit, 0, 1)
    test_acc = np.where(steps >= T_transition_true, 1.0, 0.02)
    hist = pd.DataFrame({"step": steps, "Lambda": el * steps, "train_acc": train_acc, "test_acc": test_acc,
                         "V": V})
    i_mem = int(np.argmax(train_acc >= 0.99))
    gen_idx = np.flatnonzero(test_acc >= 0.99)
    T_transition = float(steps[gen_idx[0]]) if gen_idx.size else None
    regime = regime or ("intermediate" if T_transition is not None else "weak")
    V_final = float(V[-1])
    row = {"cell": cid, "status": "finished", "regime": regime, "stop_step": float(steps[-1]),
           "T_fit": float(steps[i_mem]), "T_transition": T_transition,
           "delay": (T_transition - steps[i_mem]) if T_transition is not None else None,
           "V_fit": float(V[i_mem]), "V_transition": float(V[gen_idx[0]]) if T_transition is not None else None,
           "V_final": V_final, "T_pred": math.log(V[i_mem] / V_final) / (2 * el),
           "lr": lr, "weight_decay": wd, "init_scale": init_scale, "seed": seed, "op": op,
           "p": 31, "optimizer": "adamw", "model": "mlp",
           "layers": {"out.weight": {"V_fit": V[i_mem] * 0.3, "V_final": V_final * 0.15},
                      "hidden.weight": {"V_fit": V[i_mem] * 0.7, "V_final": V_final * 0.7},
                      "hidden.bias": {"V_fit": 1.0, "V_final": 0.001}}}
    return row, hist


def grid(lams=(0.5, 1.0, 2.0, 4.0), lrs=(0.001, 0.002), alphas=(1, 2, 3), law=True, **kw):
    """Cells over (lambda, eta, alpha); V_fit = 200 alpha^2. ``law``: V_st = 50 for all (the
    delay follows ln(V_fit/V_st)/(2 eta lambda)); else V_st scales with V_fit so that the delay
    is 1/(eta lambda) whatever the norm (the norm carries no information)."""
    rows, hists = [], {}
    for wd in lams:
        for lr in lrs:
            for a in alphas:
                v_mem = 200.0 * a * a
                v_st = 50.0 if law else v_mem * math.exp(-2.0)
                cid = f"l{wd}_e{lr}_a{a}"
                row, h = synth_cell(cid, lr=lr, wd=wd, V_fit=v_mem, V_st=v_st, init_scale=a,
                                    every=20, seed=len(rows), **kw)
                rows.append(row)
                hists[cid] = h
    return pd.DataFrame(rows), hists


# ----------------------------------------------------------------------------- delay law


def test_one_delay_law_fit_with_reasons_and_tautology():
    cells, _ = grid(alphas=(1, 2), floor=False)
    extra = [{"cell": "nf", "regime": "strong", "status": "finished", "T_fit": None,
              "lr": 0.01, "weight_decay": 10},
             {"cell": "dv", "regime": "diverged", "status": "diverged", "T_fit": 10.0,
              "T_transition": 50.0, "delay": 40.0, "T_pred": 10.0, "lr": 0.01, "weight_decay": 1}]
    grew = synth_cell("grew", V_fit=40.0, V_st=50.0 * 0.99)[0]
    grew.update({"V_final": 60.0, "T_pred": math.log(40 / 60) / 0.02})
    cens = synth_cell("cens", max_steps=600, V_st=1e-4)[0]
    allc = pd.concat([cells, pd.DataFrame(extra + [grew, cens])], ignore_index=True)
    fits = science.fit_delay_laws(allc, n_boot=200)
    law = fits["delay_law"]
    assert law["n"] == len(cells) and law["r2"] > 0.99
    assert law["excluded"] == {"strong": 1, "diverged": 1, "norm_grew": 1, "censored": 1}
    assert fits["censoring"]["n_censored"] == 1 and fits["censoring"]["caps"] == [400.0]
    # V_final is read a fixed margin after T_transition and V decays exactly: T_pred = r (delay + margin)
    assert law["tautology_r2"] > 0.99
    assert law["tautology"]["decay_fraction_median"] == pytest.approx(1.0, abs=0.05)
    # fit.json names the same cells and exclusions, without fitting again
    inputs = fit_inputs(allc.to_dict("records"))
    assert inputs["fit_cells"] == law["n"] and inputs["excluded"] == law["excluded"]
    assert inputs["censoring"] == fits["censoring"] and sum(inputs["regimes"].values()) == len(allc)


def test_per_op_fits_when_several_ops():
    rows = []
    for op, k in (("add", 1.0), ("mul", 2.0)):
        for i in range(6):
            rows.append({"cell": f"{op}{i}", "regime": "intermediate", "op": op, "T_fit": 100.0,
                         "T_transition": 100 + k * (100 + 50 * i), "delay": k * (100 + 50 * i),
                         "T_pred": 100 + 50 * i, "stop_step": 2000.0, "lr": 0.01,
                         "weight_decay": 1 + i})
    out = science.fit_delay_laws(pd.DataFrame(rows), n_boot=100)
    assert set(out["per_op"]) == {"add", "mul"}
    assert out["per_op"]["mul"]["delay_law"]["k"] == pytest.approx(2.0)


def test_censored_delays_enter_the_kaplan_meier_median():
    rows = [{"cell": f"o{i}", "T_fit": 0.0, "T_transition": float(d), "stop_step": d + 50.0}
            for i, d in enumerate((100, 200, 300))]
    rows += [{"cell": f"c{i}", "T_fit": 0.0, "T_transition": None, "stop_step": 1000.0}
             for i in range(4)]
    c = science.fit_delay_laws(pd.DataFrame(rows), n_boot=0)["censoring"]
    assert c["n_censored"] == 4 and c["fitted_median_delay"] is None
    assert c["km_median_delay"] is None and c["km_median_bound"] == "> 1000"
    rows = rows[:3] + rows[3:4]
    # survival 3/4 after 100, 2/4 after 200: the Kaplan-Meier median is 200
    assert science.fit_delay_laws(pd.DataFrame(rows), n_boot=0)["censoring"]["km_median_delay"] == 200


# ----------------------------------------------------------------------------- decay rate


@pytest.mark.parametrize("factor,verdict", [(1.0, "consistent"), (0.5, "slower")])
def test_decay_rate_ratio_to_theory_with_interval(factor, verdict):
    cells, hists = grid(rate_factor=factor, noise=0.02, floor=False)
    rates = science.decay_rates(cells, hists, n_boot=300)
    rt = rates["ratio_to_theory"]
    assert rt["median"] == pytest.approx(factor, rel=0.05) and rt["n"] == len(cells)
    assert rates["verdict"] == verdict
    assert rates["gamma_over_eta_lambda"]["median"] == pytest.approx(2 * rt["median"])
    few = science.decay_rates(cells.iloc[:5], hists, n_boot=300)
    assert few["ratio_to_theory"]["ci"] is None and few["verdict"] == "uncertain"


def test_decay_rate_too_short_window_is_none():
    h = pd.DataFrame({"step": [0, 10, 20], "V": [3.0, 2.0, 1.0]})
    assert science.decay_rate(h.assign(Lambda=0.01 * h["step"]), 10, 20)["ratio"] is None


# ----------------------------------------------------------------------------- P6 prediction


def test_nht_beats_baseline_when_the_norm_sets_the_delay_and_not_otherwise():
    cells, hists = grid(law=True)
    good = predictive_verdict(cells, hists, n_boot=300)
    assert good["nht_beats_baseline"] is True and good["discriminating"]
    assert good["loo_error"]["nht"]["median"] < 0.05
    assert good["loo_error"]["baseline_inverse_eta_lambda"]["median"] > 0.1
    assert good["paired_difference"]["ci"][0] > 0
    assert good["n_groups"] == len(cells)
    cells, hists = grid(law=False)
    bad = predictive_verdict(cells, hists, n_boot=300)
    assert bad["nht_beats_baseline"] is False
    assert bad["loo_error"]["baseline_inverse_eta_lambda"]["median"] < 0.05
    small = predictive_verdict(*grid(lams=(0.5, 1.0), lrs=(0.001,), alphas=(1, 2, 3)), n_boot=300)
    assert small["paired_difference"]["n"] < 8 and small["nht_beats_baseline"] == "uncertain"
    for name in ("nht", "nht_theory", "baseline_inverse_eta_lambda", "same_eta_lambda_mean",
                 "per_lambda_mean"):
        assert {"median", "ci", "n"} <= set(good["loo_error"][name])


def test_paired_comparison_is_uncertain_when_the_interval_straddles_zero():
    from nht.science.prediction import paired_comparison
    rng = np.random.default_rng(0)
    # errors 0.3 + u for a, and that +- 0.05 (symmetric) for b: no predictor is better
    cells = {f"c{i}": {"kind": "observed", "delay_or_cap": 100.0, "a": 130.0 + 100 * u,
                       "b": 130.0 + 100 * u + (5.0 if i % 2 else -5.0) + rng.normal(0, 0.5)}
             for i, u in enumerate(rng.uniform(0, 0.2, 30))}
    out = paired_comparison(cells, "a", "b", n_boot=300, seed=0)
    assert out["ci"][0] < 0 < out["ci"][1] and out["a_better"] == "uncertain"
    shifted = {k: dict(c, b=c["b"] + 40.0) for k, c in cells.items()}
    assert paired_comparison(shifted, "a", "b", n_boot=300, seed=0)["a_better"] is True
    assert paired_comparison(shifted, "b", "a", n_boot=300, seed=0)["a_better"] is False


def test_norm_shift_at_fixed_eta_lambda_holds_and_fails():
    good = predictive_verdict(*grid(law=True), n_boot=300)["norm_shift"]
    assert good["n_strata"] == 8 and good["slope"] == pytest.approx(1.0, abs=0.05)
    assert good["verdict"] == "holds" and good["consistent_with_theory"]
    bad = predictive_verdict(*grid(law=False), n_boot=300)["norm_shift"]
    assert bad["verdict"] == "fails" and abs(bad["slope"]) < 0.05
    cells, hists = grid(law=True)
    double = predictive_verdict(cells.assign(delay=2 * cells["delay"]), hists, n_boot=300)["norm_shift"]
    assert double["slope"] == pytest.approx(2.0, abs=0.1) and double["verdict"] == "holds"
    assert not double["consistent_with_theory"] and "not 1" in double["reading"]
    # two strata of three init scales suffice: the permutation p (36 arrangements) can reach 0.05
    few = predictive_verdict(*grid(lams=(0.5, 1.0), lrs=(0.001,)), n_boot=300)["norm_shift"]
    assert few["n_strata"] == 2 and few["verdict"] == "holds" and few["p"] < 0.05
    one = predictive_verdict(*grid(lams=(0.5,), lrs=(0.001,)), n_boot=300)["norm_shift"]
    assert one["verdict"] == "not_enough_data" and "need >= 2" in one["reason"]
    only_lambda = predictive_verdict(*grid(alphas=(1,), lrs=(0.001,)), n_boot=300)
    assert only_lambda["discriminating"] is False
    assert only_lambda["norm_shift"]["verdict"] == "not_enough_data"


def test_prediction_reads_nothing_of_the_held_out_group():
    cells, hists = grid(alphas=(1, 2))
    base = predictive_verdict(cells, hists, n_boot=0)["per_cell"]
    target = cells.cell.iloc[3]
    t_mem = cells.loc[cells.cell == target, "T_fit"].item()
    cells2 = cells.copy()
    idx = cells2.index[cells2.cell == target]
    cells2.loc[idx, ["T_transition", "V_transition", "V_final", "delay", "T_pred"]] = [9e4, 1e-6, 1e-6, 9e4, 1.0]
    h = hists[target].copy()
    h.loc[h.step > t_mem, "V"] = 1e9
    new = predictive_verdict(cells2, dict(hists, **{target: h}), n_boot=0)["per_cell"]
    for name in ("nht", "nht_theory", "baseline_inverse_eta_lambda", "same_eta_lambda_mean",
                 "per_lambda_mean", "V_st_hat"):
        assert new[target][name] == base[target][name], name


def test_censored_cells_are_scored_as_bounds_not_dropped():
    from nht.science.prediction import _error
    cells, hists = grid(alphas=(1, 2))
    row, h = synth_cell("cens", lr=0.001, wd=0.5, V_fit=800.0, V_st=1.0, max_steps=3000,
                        init_scale=9, every=20)
    out = predictive_verdict(pd.concat([cells, pd.DataFrame([row])]), dict(hists, cens=h),
                             n_boot=0)
    c = out["per_cell"]["cens"]
    assert c["kind"] == "censored" and c["delay_or_cap"] == 2800
    nht = out["loo_error"]["nht"]
    assert nht["n_censored"] == 1 and nht["n_observed"] == len(cells)
    assert nht["n"] == len(cells) + 1                   # in the verdict's median, as a bound
    # a prediction beyond the cap is consistent with the bound (error 0), a shorter one is short
    assert _error(3000.0, "censored", 2800.0) == 0.0
    assert _error(1400.0, "censored", 2800.0) == pytest.approx(0.5)
    assert _error(1400.0, "observed", 2800.0) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- P5 S and nulls


def _oscillating(i, level=5.0):
    """V decays with a wobble; reliance = [ln V > level] exactly (the norm sets the state)."""
    steps = np.arange(0, 3000, 10.0)
    t0 = 300 + 60 * i
    lv = np.where(steps < t0, 4 + steps / t0 * 2.5,
                  6.5 - 0.0008 * (steps - t0) + 0.6 * np.sin(steps / (90 + 17 * i) + i))
    acc = np.where(lv > level, 1 / 31, 1.0)
    return pd.DataFrame({"step": steps, "V": np.exp(lv), "test_acc": acc}), t0


def _sep_cells(n=6, shuffle=False):
    rows, hists = [], {}
    for i in range(n):
        h, t0 = _oscillating(i)
        rows.append({"cell": f"c{i}", "regime": "intermediate", "T_fit": float(t0)})
        hists[f"c{i}"] = h
    if shuffle:           # each cell's V paired with another cell's reliance
        accs = [hists[f"c{(i + 1) % n}"]["test_acc"].to_numpy() for i in range(n)]
        hists = {f"c{i}": hists[f"c{i}"].assign(test_acc=accs[i]) for i in range(n)}
    return pd.DataFrame(rows), hists


def test_S_holds_above_its_nulls_and_fails_on_a_shuffled_pairing():
    cells, hists = _sep_cells()
    sep = science.clean_norm_separation(cells, hists, n_boot=200, n_null=300)
    assert sep["S"] == pytest.approx(1.0)
    assert sep["null_pairing"]["q95"] < 0.95 and sep["null_circular"]["q95"] < 0.95
    assert sep["verdict"] == "holds"
    cells, hists = _sep_cells(shuffle=True)
    shuffled = science.clean_norm_separation(cells, hists, n_boot=200, n_null=300)
    assert shuffled["S"] <= shuffled["null_pairing"]["q95"] and shuffled["verdict"] == "fails"


def test_steady_fall_plus_one_rise_gives_S_1_and_is_descriptive_only():
    cells, hists = grid(alphas=(1, 2))
    sep = science.clean_norm_separation(cells, hists, n_boot=200, n_null=200)
    assert sep["S"] == pytest.approx(1.0)          # S alone would "hold" by construction
    # ... and so would every null: no S can beat them, so P5 is reported, not scored
    assert sep["null_pairing"]["q95"] == pytest.approx(1.0) and sep["verdict"] == "descriptive"
    assert sep["scored"] is False and "no S can beat it" in sep["reason"]
    assert science.clean_norm_separation(cells.iloc[:2], hists, n_null=50)["verdict"] == \
        "not_enough_data"


def test_S_cell_definitions():
    h, t0 = _oscillating(0)
    assert science.clean_norm_separation_cell(h, T_fit=t0)["S"] == pytest.approx(1.0)
    rev = h.assign(test_acc=1 - h["test_acc"] + 1 / 31)
    assert science.clean_norm_separation_cell(rev, T_fit=t0)["S"] == pytest.approx(-1.0)
    short = pd.DataFrame({"step": [0, 10, 20], "V": [1.0, 2.0, 3.0], "test_acc": [0, 0, 1.0]})
    assert science.clean_norm_separation_cell(short)["S"] is None
    never = h.assign(test_acc=0.03)
    assert "no structured phase" in science.clean_norm_separation_cell(never)["reason"]
    steps = np.arange(0, 2000, 10.0)
    rising = pd.DataFrame({"step": steps, "V": 100 + steps,
                           "test_acc": np.where(steps >= 1000, 1.0, 0.03)})
    assert science.clean_norm_separation_cell(rising)["S"] is None
    assert science.clean_norm_separation_cell(rising, T_fit=200)["S"] == pytest.approx(-1.0)


def test_clean_norm_separation_reads_phi_of_an_image_history():
    """One S for every domain: an image-like history (epochs, phi = border reliance) goes through
    the same function as a modular one."""
    hists, rows = {}, []
    for i in range(4):
        h, t0 = _oscillating(i)
        hists[f"t{i}"] = pd.DataFrame({"step": h["step"], "epoch": h["step"] / 10, "V": h["V"],
                                       "test_acc": 0.5, "phi": 1 - h["test_acc"]})
        rows.append({"cell": f"t{i}", "regime": "intermediate", "status": "finished", "T_fit": float(t0)})
    hists["weak"] = hists["t0"].assign(phi=0.99)                      # never left the shortcut
    rows.append({"cell": "weak", "regime": "weak", "status": "finished", "T_fit": 100.0})
    hists["never"] = hists["t0"].assign(phi=0.1)                      # never fitted the shortcut
    rows.append({"cell": "never", "regime": "immediate", "status": "finished", "T_fit": None})
    out = science.clean_norm_separation(pd.DataFrame(rows), hists, n_boot=100, n_null=200)
    assert out["n"] == 4 and out["S"] == pytest.approx(1.0) and out["verdict"] == "holds"
    assert set(out["per_cell"]) == {"t0", "t1", "t2", "t3", "weak"}
    assert {u["cell"] for u in out["untrusted_cells"]} == {"weak"}
    json.dumps(science.clean_json(out), allow_nan=False)


# ----------------------------------------------------------------------------- P1, P2, P4


def test_P1_compares_different_solutions_and_can_fail():
    cells, hists = grid(law=True)
    no = science.norm_ordering(cells, hists, n_boot=200)
    assert no["share"] == 1.0 and no["n"] == len(cells) and no["same_cell_share"] == 1.0
    # structured solutions of other cells with a larger norm than the shortcut: fails, although
    # every cell's own V still fell after its fit (the same-cell statistic stays 1)
    big = cells.assign(V_transition=cells["V_fit"].max() * 2)
    bad = science.norm_ordering(big, hists, n_boot=200)
    assert bad["share"] == 0.0 and bad["ci"] == [0.0, 0.0] and bad["same_cell_share"] == 1.0
    generalised_at_fit = {k: h.assign(test_acc=1.0) for k, h in hists.items()}
    assert science.norm_ordering(cells, generalised_at_fit)["skipped"] == \
        {"not_reliant_at_fit": len(cells)}


def test_P2_kendall_tau_b_does_not_count_ties_as_agreement():
    def slices(regs, n=2):
        return pd.DataFrame([{"cell": f"{wd}-{s}", "weight_decay": wd, "regime": reg,
                              "lr": 0.01, "seed": s}
                             for s in range(n) for wd, reg in zip((0.1, 1, 3, 10), regs)])
    full = science.regime_ordering(slices(("weak", "intermediate", "immediate", "strong")))
    assert full["all_present"] and full["tau_b"] == pytest.approx(5 / math.sqrt(30))
    assert full["ci"] is None                     # 2 slices: no interval
    flat = science.regime_ordering(slices(("intermediate",) * 4))
    assert flat["tau_b"] == 0.0                   # ties used to count as full agreement
    rev = science.regime_ordering(slices(("strong", "intermediate", "intermediate", "weak"), 9))
    assert rev["tau_b"] < -0.8 and rev["ci"][1] < 0 and rev["n_slices"] == 9


def test_P4_layer_hierarchy():
    cells, _ = grid(alphas=(1,))
    lh = science.layer_hierarchy(cells)
    assert lh["share_readout_max"] == 1.0 and "hidden.bias" not in lh["median_contraction"]
    flipped = {c: {"out.weight": {"V_fit": 1.0, "V_final": 0.9},
                   "hidden.weight": {"V_fit": 1.0, "V_final": 0.1}} for c in cells.cell}
    assert science.layer_hierarchy(cells, flipped)["share_readout_max"] == 0.0
    # a normalisation layer's weight (marked by the trainer, whatever its name) is not a weight tensor
    with_norm = {c: {"out.weight": {"V_fit": 1.0, "V_final": 0.5},
                     "hidden.weight": {"V_fit": 1.0, "V_final": 0.8},
                     "block.scale_weight": {"V_fit": 1.0, "V_final": 0.01, "norm_layer": True}}
                 for c in cells.cell}
    lh = science.layer_hierarchy(cells, with_norm)
    assert lh["share_readout_max"] == 1.0 and "block.scale_weight" not in lh["median_contraction"]


# ----------------------------------------------------------------------------- end to end


def test_analyse_experiment_end_to_end(tmp_path):
    cells, hists = grid(alphas=(1, 2), noise=0.002)
    persist, ph = synth_cell("persist", wd=0.5, max_steps=600, V_st=1e-4)
    nofit = {"cell": "nofit", "regime": "strong", "status": "finished", "T_fit": None,
             "T_transition": None, "lr": 0.01, "weight_decay": 10, "op": "add"}
    allc = pd.concat([cells, pd.DataFrame([persist, nofit])], ignore_index=True)
    out = science.analyse_experiment(allc, {**hists, "persist": ph}, str(tmp_path / "fig"),
                                  n_boot=200, n_null=100)
    json.dumps(out, allow_nan=False)
    for key in ("nht", "baseline_inverse_eta_lambda", "per_lambda_mean"):
        assert out["prediction"]["loo_error"][key]["median"] is not None
    assert out["prediction"]["nht_beats_baseline"] in (True, False, "uncertain")
    assert out["delay_law"]["tautology_r2"] is not None
    assert out["decay_rate"]["ratio_to_theory"]["ci"] is not None
    assert out["delay_law"]["excluded"] == {"censored": 1, "strong": 1}
    for key in ("clean_norm_separation", "norm_ordering", "regime_ordering", "layer_hierarchy",
                "censoring", "baseline_inverse_eta_lambda", "scaling_exponent", "per_op"):
        assert key in out, key
    names = {os.path.basename(p) for p in out["figures"]}
    for stem in ("delay_law_bootstrap", "prospective", "norm_fits", "decay_rate",
                 "clean_separation"):
        assert f"{stem}.png" in names and f"{stem}.pdf" in names
    assert all(os.path.getsize(p) > 1000 for p in out["figures"])


def test_analyse_experiment_with_no_transition_still_returns(tmp_path):
    row, h = synth_cell("p", max_steps=500, V_st=1e-4)
    out = science.analyse_experiment(pd.DataFrame([row]), {"p": h}, str(tmp_path), n_boot=50,
                                  n_null=20)
    json.dumps(out, allow_nan=False)
    assert out["delay_law"]["k"] is None and out["delay_law"]["n"] == 0
    assert out["clean_norm_separation"]["verdict"] == "not_enough_data"
    assert out["prediction"]["nht_beats_baseline"] == "uncertain"
