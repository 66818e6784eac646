"""Every headline verdict (P1-P6 and norm_shift) on synthetic experiments whose truth is known, through
the same code path as a real run: per-cell records and histories -> :func:`nht.science.analyse.
analyse_experiment` (what the ``science`` stage calls) -> the experiment summary -> :func:`nht.science.
scorecard.build_scorecard` (what ``experiment-summary`` calls). For each verdict one experiment where
it must hold and one where it must not (issue 17).

The worlds (V = squared norm, time in steps, ``eta lambda`` per step):

* ``law``: the delay is what the law says, ``ln(V_fit / V_st) / (2 eta lambda)``; V decays at
  ``2 eta lambda`` from the fit and the cell leaves the shortcut when V reaches its structured norm
  ``V_st`` (15 % seed scatter), then V stays there.
* ``independent``: the delay is drawn independently of V (``c / (eta lambda)`` times 15 % scatter),
  V decays the same way to an unrelated floor: the norm is irrelevant to the transition.
* ``inverse``: the delay is exactly ``c / (eta lambda)``, V irrelevant (the ``1/(eta lambda)`` account).

Grids vary ``init_scale`` (V_fit ~ alpha^2) at fixed ``eta lambda``: the only design in which the
law and ``1/(eta lambda)`` make different predictions.
"""

import math

import numpy as np
import pandas as pd
import pytest

from nht.science.analyse import analyse_experiment
from nht.science.prediction import predictive_verdict
from nht.science.scorecard import HEADLINES, VERDICTS, build_scorecard

N_BOOT, N_NULL = 200, 200


def cell(cid, lr, wd, alpha, seed, world, rng, every=25, regime=None, readout_first=True):
    """One cell's norms record and history (module docstring)."""
    el = lr * wd
    T_fit = 200.0
    V_fit = 400.0 * alpha ** 2 * math.exp(0.15 * rng.normal())
    if world == "law":
        V_floor = 60.0 * math.exp(0.15 * rng.normal())
        delay = math.log(V_fit / V_floor) / (2 * el)
    elif world == "independent":
        delay = 1.5 / el * math.exp(0.15 * rng.normal())
        V_floor = V_fit * math.exp(-2.0 * rng.uniform(1.0, 4.0))
    elif world == "inverse":
        delay = 1.5 / el
        V_floor = V_fit * math.exp(-2.0 * rng.uniform(1.0, 4.0))
    else:
        raise ValueError(world)
    # a weak cell stopped before its transition (censored: delay > cap)
    end = T_fit + delay + 1500 if regime != "weak" else T_fit + 0.5 * delay
    steps = np.arange(0.0, end + every, every)
    V = np.where(steps <= T_fit, V_fit * (0.3 + 0.7 * steps / T_fit),
                 np.maximum(V_fit * np.exp(-2 * el * (steps - T_fit)), V_floor))
    V = V * np.exp(0.003 * rng.normal(size=V.size))
    T_tr = float(steps[min(np.searchsorted(steps, T_fit + delay), steps.size - 1)])
    never = regime in ("weak", "strong")
    test_acc = np.where((steps >= T_tr) & (not never), 1.0, 0.02)
    train_acc = np.clip(steps / T_fit, 0, 1) if regime != "strong" else np.full(steps.size, 0.05)
    hist = pd.DataFrame({"step": steps, "train_acc": train_acc, "test_acc": test_acc, "V": V})
    i_fit = int(np.argmax(train_acc >= 0.99))
    V_final = float(V[-1])
    out_c, hid_c = (3.0, 1.0) if readout_first else (1.0, 3.0)
    rec = {"cell": cid, "status": "finished", "regime": regime or "intermediate",
           "stop_step": float(steps[-1]), "lr": lr, "weight_decay": wd, "init_scale": alpha,
           "seed": seed, "op": "add", "p": 97, "optimizer": "adamw", "model": "mlp",
           "T_fit": None, "T_transition": None, "delay": None, "V_fit": None,
           "V_transition": None, "V_final": V_final, "T_pred": None,
           "layers": {"out.weight": {"V_fit": V_fit * 0.3, "V_final": V_fit * 0.3 * math.exp(-out_c)},
                      "hidden.weight": {"V_fit": V_fit * 0.7,
                                        "V_final": V_fit * 0.7 * math.exp(-hid_c)}}}
    if regime != "strong":
        rec.update(T_fit=float(steps[i_fit]), V_fit=float(V[i_fit]),
                   T_pred=math.log(V[i_fit] / V_final) / (2 * el))
    if not never:
        j = int(np.searchsorted(steps, T_tr))
        rec.update(T_transition=T_tr, delay=T_tr - rec["T_fit"], V_transition=float(V[j]))
    return rec, hist


def experiment(world="law", lrs=(0.001, 0.002), lams=(0.5, 1.0, 2.0, 4.0), alphas=(0.5, 1.0, 2.0),
               seeds=(0, 1), seed=0, regimes=None, readout_first=True):
    """Records (DataFrame) and histories of a grid; ``regimes``: ``"ordered"`` adds per slice two weak
    cells below the smallest lambda and two strong ones above the largest, ``"reversed"`` the other
    way round."""
    rng = np.random.default_rng(seed)
    rows, hists = [], {}
    for lr in lrs:
        for a in alphas:
            for s in seeds:
                extra = []
                if regimes:
                    lo, hi = ("weak", "strong") if regimes == "ordered" else ("strong", "weak")
                    extra = [(min(lams) / 8, lo), (min(lams) / 4, lo), (max(lams) * 4, hi),
                             (max(lams) * 8, hi)]
                for wd, reg in [(wd, None) for wd in lams] + extra:
                    cid = f"e{lr}_l{wd}_a{a}_s{s}"
                    rec, h = cell(cid, lr, wd, a, s, world, rng, regime=reg,
                                  readout_first=readout_first)
                    rows.append(rec)
                    hists[cid] = h
    return pd.DataFrame(rows), hists


def scorecard(cells, hists):
    out = analyse_experiment(cells, hists, None, n_boot=N_BOOT, n_null=N_NULL)
    summary = {"kind": "modular", **out}
    card = build_scorecard(summary)
    assert list(card) == list(HEADLINES) and all(e["verdict"] in VERDICTS for e in card.values())
    return summary, card


@pytest.fixture(scope="module")
def law():
    return scorecard(*experiment("law"))


@pytest.fixture(scope="module")
def law_regimes():
    # weak cells are censored (stopped before their transition): scored as bounds in P6, where
    # every predictor beyond the cap scores 0, so they dilute P6's paired median (kept apart)
    return scorecard(*experiment("law", regimes="ordered"))


@pytest.fixture(scope="module")
def independent():
    # seed 1: one draw of this world (P1's and norm_shift's false-positive rates over many draws
    # are measured below; seed 0 happens to be a 5 % event for P1, p = 0.045)
    return scorecard(*experiment("independent", regimes="reversed", readout_first=False, seed=1))


@pytest.fixture(scope="module")
def inverse():
    return scorecard(*experiment("inverse"))


# ----------------------------------------------------------------------------- must hold


def test_law_world_every_scored_verdict_holds(law):
    summary, card = law
    for key in ("P1_norm_ordering", "P4_layer_hierarchy", "P6_delay_scaling", "norm_shift"):
        assert card[key]["verdict"] == "holds", (key, card[key])
    assert card["P2_three_regimes"]["verdict"] == "fails"     # weak and strong classes missing
    assert card["P3_group_accuracy"]["verdict"] == "not_applicable"
    pred = summary["prediction"]
    assert pred["nht_beats_baseline"] is True and pred["nht_beats_same_eta_lambda_mean"] is True
    assert pred["norm_shift"]["slope"] == pytest.approx(1.0, abs=0.15)
    assert pred["norm_shift"]["consistent_with_theory"] and pred["norm_shift"]["p"] <= 0.05
    assert pred["norm_shift"]["reading"] == "supports the law (slope consistent with 1)"
    assert summary["norm_ordering"]["p"] <= 0.05
    # V falls monotonically and stays: every switch time gives S = 1, so P5 is not scored
    assert card["P5_clean_separation"]["verdict"] == "not_enough_data"
    assert card["P5_clean_separation"]["scored"] is False


def test_law_world_with_weak_and_strong_cells_P2_holds(law_regimes):
    summary, card = law_regimes
    assert card["P2_three_regimes"]["verdict"] == "holds", card["P2_three_regimes"]
    assert summary["prediction"]["loo_error"]["nht"]["n_censored"] == 24     # weak: bounds
    assert card["P6_delay_scaling"]["verdict"] != "fails"
    assert card["norm_shift"]["verdict"] == "holds"


# ----------------------------------------------------------------------------- must fail


def test_independent_world_no_norm_verdict_holds(independent):
    summary, card = independent
    # V irrelevant: the shortcut norm still exceeds the structured one (V fell), but no more than
    # at unrelated times, so P1 fails against its null
    no = summary["norm_ordering"]
    assert no["share"] > 0.5 and no["p"] > 0.05
    assert card["P1_norm_ordering"]["verdict"] == "fails"
    assert card["P2_three_regimes"]["verdict"] == "fails"            # regimes reversed in lambda
    assert card["P4_layer_hierarchy"]["verdict"] == "fails"          # hidden layer contracts most
    assert card["P6_delay_scaling"]["verdict"] != "holds"
    assert summary["prediction"]["nht_beats_same_eta_lambda_mean"] is not True
    assert card["norm_shift"]["verdict"] != "holds"
    assert abs(summary["prediction"]["norm_shift"]["slope"]) < 0.5


def test_inverse_world_p6_and_norm_shift_fail(inverse):
    summary, card = inverse
    assert card["P6_delay_scaling"]["verdict"] == "fails"
    assert card["norm_shift"]["verdict"] == "fails"
    ns = summary["prediction"]["norm_shift"]
    assert ns["ci"][1] < 1 and ns["ci"][0] <= 0 and ns["reading"] == "contradicts the law"
    assert card["P1_norm_ordering"]["verdict"] == "fails"


# ----------------------------------------------------------------------------- P5


def _wobbling(i, shift=False, n=6):
    """V decays with a wobble and reliance is exactly ``ln V > level`` (the norm sets the state);
    ``shift``: the reliance of another cell (the link broken)."""
    def one(k):
        steps = np.arange(0, 3000, 10.0)
        t0 = 300 + 60 * k
        lv = np.where(steps < t0, 4 + steps / t0 * 2.5,
                      6.5 - 0.0008 * (steps - t0) + 0.6 * np.sin(steps / (90 + 17 * k) + k))
        return steps, lv, t0
    steps, lv, t0 = one(i)
    _, lv_phi, _ = one((i + 1) % n) if shift else (None, lv, None)
    acc = np.where(lv_phi > 5.0, 0.02, 1.0)
    hist = pd.DataFrame({"step": steps, "train_acc": np.clip(steps / t0, 0, 1), "test_acc": acc,
                         "V": np.exp(lv)})
    rec = {"cell": f"w{i}", "status": "finished", "regime": "intermediate", "T_fit": float(t0),
           "T_transition": float(steps[np.argmax((acc > 0.5) & (steps > t0))]), "lr": 0.001,
           "weight_decay": 1.0, "init_scale": 1.0, "seed": i, "op": "add", "p": 97,
           "stop_step": 2990.0, "V_fit": float(np.exp(lv[steps == t0][0]))}
    return rec, hist


@pytest.mark.parametrize("shift,verdict", [(False, "holds"), (True, "fails")])
def test_P5_holds_when_the_norm_sets_the_state_and_fails_when_the_link_is_broken(shift, verdict):
    pairs = [_wobbling(i, shift) for i in range(6)]
    cells = pd.DataFrame([r for r, _ in pairs])
    _, card = scorecard(cells, {r["cell"]: h for r, h in pairs})
    assert card["P5_clean_separation"]["verdict"] == verdict
    assert card["P5_clean_separation"]["scored"] is True


# ----------------------------------------------------------------------------- P3 (images)


def _image_cells(acc_by_rho: dict, noise: float, seeds=3, seed=0):
    from nht.domains.images.summary import summarize
    rng = np.random.default_rng(seed)
    rows = []
    for rho, acc in acc_by_rho.items():
        for s in range(seeds):
            rows.append({"cell": f"r{rho}_s{s}", "status": "finished", "weight_decay": 0.1,
                         "rho": rho, "seed": s, "V_final": 10.0, "V_peak_step": 5.0,
                         "final_test_acc": acc + noise * rng.normal(), "final_phi": 0.5,
                         "regime": "weak", "decay_pct": 10.0, "Lambda_final": 1.0, "wall_s": 1.0,
                         "code_version": "x", "torch": "x", "device": "cpu"})
    return summarize(pd.DataFrame(rows), "synthetic", {}, [])


@pytest.mark.parametrize("accs,noise,verdict", [
    ((0.9, 0.8, 0.7, 0.6, 0.5), 0.01, "holds"),          # accuracy falls with rho
    ((0.5, 0.6, 0.7, 0.8, 0.9), 0.01, "fails"),          # rises
    ((0.7, 0.7, 0.7, 0.7, 0.7), 0.05, None),             # no order: never holds
    ((0.9, 0.7, 0.5), 0.01, "not_enough_data"),          # 3 rho values: descriptive only
])
def test_P3_needs_five_rho_values_an_interval_and_the_order_test(accs, noise, verdict):
    rhos = (0.1, 0.3, 0.5, 0.7, 0.9)[:len(accs)]
    summary = _image_cells(dict(zip(rhos, accs)), noise)
    e = build_scorecard(summary, "image")["P3_group_accuracy"]
    if verdict is None:
        assert e["verdict"] != "holds"
    else:
        assert e["verdict"] == verdict, e
    assert e["scored"] is (len(accs) >= 5)


# ----------------------------------------------------------------------------- norm_shift


def test_norm_shift_false_positive_rate_when_the_delay_ignores_the_norm():
    """50 independent experiments of the ``independent`` world (the design of the preset at a
    smaller scale: 8 strata x 3 init scales x 2 seeds): the share where norm_shift says "supports
    the law" is near the nominal 5 % (the permutation p controls it)."""
    supports, slopes = 0, []
    for k in range(50):
        cells, hists = experiment("independent", seed=100 + k)
        ns = predictive_verdict(cells, hists, n_boot=N_BOOT, seed=k)["norm_shift"]
        supports += ns["verdict"] == "holds"
        slopes.append(ns["slope"])
    assert supports / 50 <= 0.12, supports
    assert abs(float(np.median(slopes))) < 0.2


def test_P1_false_positive_rate_when_the_delay_ignores_the_norm():
    from nht.science.verdict_inputs import norm_ordering
    ps = [norm_ordering(*experiment("independent", seed=300 + k), n_boot=0, n_null=200)["p"]
          for k in range(30)]
    assert np.mean(np.asarray(ps) <= 0.05) <= 0.15, ps


def test_norm_shift_power_with_two_strata():
    """The small CPU design (2 strata x 3 init scales x 2 seeds) under the law: supports."""
    hits = 0
    for k in range(10):
        cells, hists = experiment("law", lrs=(0.002,), lams=(1.0, 2.0), seed=200 + k)
        hits += predictive_verdict(cells, hists, n_boot=N_BOOT, seed=k)["norm_shift"]["verdict"] == "holds"
    assert hits >= 8, hits


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name,n_cells,n_strata", [("norm-at-fixed-eta-lambda", 72, 8),
                                                   ("norm-at-fixed-eta-lambda-cpu", 36, 4)])
def test_norm_shift_presets_have_strata_of_three_init_scales(name, n_cells, n_strata):
    from pathlib import Path

    from nht.config import expand_cells, load_config
    from nht.science.prediction import SHIFT_AXES, _el_key
    from nht.science.cellrecords import key_of
    cfg = load_config(Path(__file__).resolve().parent.parent / "workflow" / "presets" / f"{name}.yaml")
    cells = [c.settings for c in expand_cells(cfg)]
    assert len(cells) == n_cells
    strata = {}
    for s in cells:
        strata.setdefault(key_of(s, SHIFT_AXES), set()).add(s["init_scale"])
    assert len(strata) == n_strata and all(len(a) == 3 for a in strata.values())
    # some eta*lambda is reached by two strata: the fair null of P6 exists
    els = [_el_key(s["lr"] * s["weight_decay"]) for s in cells]
    assert any(len({(s["lr"], s["weight_decay"]) for s in cells if _el_key(s["lr"] * s["weight_decay"]) == e}) > 1
               for e in set(els))
