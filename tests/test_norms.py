import math

import numpy as np
import pandas as pd
import pytest

from nht.norms import classify_regime, delay_prediction, extract_norms
from nht.scaling import fit_cells, linear_fit

SETTINGS = {"train_threshold": 0.99, "test_threshold": 0.99, "secondary_threshold": 0.9,
            "immediate_delay": 100, "lr": 0.01, "weight_decay": 0.5}


def synthetic_history(t_mem=200, t_gen=1200, v_peak=400.0, v_st=40.0, stop=1700, every=20):
    steps = np.arange(0, stop + 1, every)
    train = np.clip(steps / t_mem, 0, 1)
    test = np.where(steps >= t_gen, 1.0, 0.1)
    V = np.where(steps <= t_mem, 100 + (v_peak - 100) * steps / t_mem,
                 v_st + (v_peak - v_st) * np.exp(-(steps - t_mem) / 300))
    return pd.DataFrame({"step": steps, "train_acc": train, "test_acc": test, "V": V,
                         "V:out.weight": V / 2, "V:hidden.weight": V / 2})


def test_extracts_times_and_squared_norms():
    h = synthetic_history()
    rec = extract_norms(h, SETTINGS)
    assert rec["T_mem"] == 200 and rec["T_gen"] == 1200 and rec["delay"] == 1000
    assert rec["T_mem_90"] == 180  # first step with train acc >= 0.9
    assert rec["V_peak"] == pytest.approx(400.0) and rec["V_peak_step"] == 200
    assert rec["V_mem"] == pytest.approx(400.0)
    assert rec["V_final"] == pytest.approx(h["V"].iloc[-1])
    assert rec["V_init"] == pytest.approx(100.0)
    assert rec["regime"] == "delayed"
    assert rec["T_pred"] == pytest.approx(math.log(400.0 / rec["V_final"]) / (2 * 0.01 * 0.5))
    assert rec["layers"]["out.weight"]["V_mem"] == pytest.approx(200.0)


def test_regimes():
    assert classify_regime("finished", None, None, 100) == "no_fit"
    assert classify_regime("finished", 100, None, 100) == "shortcut_persists"
    assert classify_regime("finished", 100, 150, 100) == "immediate"
    assert classify_regime("finished", 100, 900, 100) == "delayed"
    assert classify_regime("diverged", 100, 900, 100) == "diverged"
    never = synthetic_history(t_gen=10 ** 6)
    assert extract_norms(never, SETTINGS)["regime"] == "shortcut_persists"


def test_delay_prediction_guards():
    assert delay_prediction(None, 1.0, 0.1, 0.1) is None
    assert delay_prediction(2.0, 1.0, 0.1, 0.0) is None
    assert delay_prediction(math.e, 1.0, 0.5, 1.0) == pytest.approx(1.0)


def test_linear_fit_recovers_known_slope_and_intercept():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 100, 200)
    y = 1.6 * x + 25 + rng.normal(0, 1, 200)
    fit = linear_fit(x, y)
    assert fit["k"] == pytest.approx(1.6, abs=0.02)
    assert fit["b"] == pytest.approx(25, abs=0.6)
    assert fit["r2"] > 0.99 and fit["n"] == 200
    assert math.isnan(linear_fit([1, 2], [1, 2])["k"])


def test_fit_cells_excludes_cells_without_delay_by_reason():
    recs = [{"regime": "delayed", "delay": 2 * t + 10, "T_pred": t, "lr": 0.01, "weight_decay": 1.0}
            for t in (100.0, 200.0, 300.0, 400.0)]
    recs += [{"regime": "no_fit", "delay": None, "T_pred": None, "lr": 0.01, "weight_decay": 1.0},
             {"regime": "shortcut_persists", "delay": None, "T_pred": None, "lr": 0.01, "weight_decay": 1.0}]
    out = fit_cells(recs)
    assert out["delay_law"]["k"] == pytest.approx(2.0) and out["delay_law"]["b"] == pytest.approx(10.0)
    assert out["fit_cells"] == 4
    assert out["excluded"] == {"regime:no_fit": 1, "regime:shortcut_persists": 1}
    assert out["regimes"]["delayed"] == 4 and out["regimes"]["diverged"] == 0
