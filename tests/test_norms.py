import math

import numpy as np
import pandas as pd
import pytest

from nht.core.events import classify_regime, delay_prediction, extract_norms
from nht.science.scaling import fit_cells

SETTINGS = {"train_threshold": 0.99, "test_threshold": 0.99, "secondary_threshold": 0.9,
            "immediate_delay": 100, "lr": 0.01, "weight_decay": 0.5, "max_steps": 1700}


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


def test_censoring_and_norm_growth_are_recorded():
    rec = extract_norms(synthetic_history(), SETTINGS)
    assert rec["censored"] is False and rec["delay_lower_bound"] is None
    assert rec["norm_grew_after_fit"] is False and rec["test_acc_at_T_mem"] == pytest.approx(0.1)
    never = extract_norms(synthetic_history(t_gen=10 ** 6), SETTINGS)
    assert never["censored"] is True and never["max_steps"] == 1700
    assert never["delay_lower_bound"] == 1700 - 200          # delay > stop_step - T_mem
    grew = synthetic_history()
    grew.loc[grew.step > 200, "V"] = 500.0
    assert extract_norms(grew, SETTINGS)["norm_grew_after_fit"] is True
    assert extract_norms(synthetic_history(), SETTINGS, status="diverged")["censored"] is False


def test_fit_cells_is_the_one_delay_law_fit_and_excludes_by_reason():
    recs = [{"cell": f"c{i}", "regime": "delayed", "status": "finished", "T_mem": 100.0,
             "T_gen": 100.0 + 2 * t + 10, "delay": 2 * t + 10, "T_pred": t, "V_mem": 10.0,
             "V_final": 1.0, "stop_step": 600.0 + 2 * t, "lr": 0.01, "weight_decay": 1.0 + i}
            for i, t in enumerate((100.0, 200.0, 300.0, 400.0))]
    recs += [{"cell": "n", "regime": "no_fit", "T_mem": None, "lr": 0.01, "weight_decay": 1.0},
             {"cell": "s", "regime": "shortcut_persists", "T_mem": 50.0, "T_gen": None,
              "stop_step": 1000.0, "lr": 0.01, "weight_decay": 1.0},
             {"cell": "g", "regime": "delayed", "T_mem": 50.0, "T_gen": 500.0, "delay": 450.0,
              "T_pred": -3.0, "V_mem": 1.0, "V_final": 2.0, "stop_step": 900.0, "lr": 0.01,
              "weight_decay": 1.0}]
    out = fit_cells(recs)
    assert out["delay_law"]["k"] == pytest.approx(2.0) and out["delay_law"]["b"] == pytest.approx(10.0)
    assert out["fit_cells"] == 4
    assert out["excluded"] == {"no_fit": 1, "censored": 1, "norm_grew": 1}
    assert out["censoring"]["n_censored"] == 1 and out["censoring"]["caps"] == [950.0]
    assert out["regimes"]["delayed"] == 5 and out["regimes"]["diverged"] == 0
    from nht.science.delay_law import fit_delay_laws
    assert fit_delay_laws(recs)["delay_law"] == out["delay_law"]
