"""The one event and norm extraction (nht.core.events) on constructed histories of both domains."""

import math

import numpy as np
import pandas as pd
import pytest

from nht.core.events import REGIMES, EventRule, classify_regime, delay_prediction, extract_events
from nht.core.history import HistoryError
from nht.science.delay_law import fit_delay_laws, fit_inputs

SETTINGS = {"train_threshold": 0.99, "test_threshold": 0.99, "secondary_threshold": 0.9,
            "immediate_delay": 100, "lr": 0.01, "weight_decay": 0.5, "max_steps": 1700}


def synthetic_history(t_mem=200, t_gen=1200, v_peak=400.0, v_st=40.0, stop=1700, every=20):
    steps = np.arange(0, stop + 1, every)
    train = np.clip(steps / t_mem, 0, 1)
    test = np.where(steps >= t_gen, 1.0, 0.1)
    V = np.where(steps <= t_mem, 100 + (v_peak - 100) * steps / t_mem,
                 v_st + (v_peak - v_st) * np.exp(-(steps - t_mem) / 300))
    return pd.DataFrame({"step": steps, "Lambda": 0.01 * 0.5 * steps, "train_acc": train, "test_acc": test,
                         "phi": 1 - test, "loss": 1.0, "V": V, "V:out.weight": V / 2, "V:hidden.weight": V / 2})


def test_extracts_times_and_squared_norms():
    h = synthetic_history()
    rec = extract_events(h, SETTINGS)
    assert rec["T_fit"] == 200 and rec["T_transition"] == 1200 and rec["delay"] == 1000
    assert rec["T_fit_90"] == 180  # first step with train acc >= 0.9
    assert rec["V_peak"] == pytest.approx(400.0) and rec["V_peak_step"] == 200
    assert rec["V_fit"] == pytest.approx(400.0)
    assert rec["V_final"] == pytest.approx(h["V"].iloc[-1])
    assert rec["V_init"] == pytest.approx(100.0)
    assert rec["regime"] == "intermediate"
    assert rec["T_pred"] == pytest.approx(math.log(400.0 / rec["V_final"]) / (2 * 0.01 * 0.5))
    assert rec["layers"]["out.weight"]["V_fit"] == pytest.approx(200.0)


def test_regimes():
    # classify_regime(status, fitted, shortcut_fit, delay, immediate_delay)
    assert classify_regime("finished", False, False, None, 100) == "strong"
    assert classify_regime("finished", True, True, None, 100) == "weak"
    assert classify_regime("finished", True, True, 50, 100) == "immediate"
    assert classify_regime("finished", True, False, None, 100) == "immediate"
    assert classify_regime("finished", True, True, 800, 100) == "intermediate"
    assert classify_regime("diverged", True, True, 800, 100) == "diverged"
    assert set(REGIMES) == {"weak", "intermediate", "strong", "immediate", "diverged"}
    never = synthetic_history(t_gen=10 ** 6)
    assert extract_events(never, SETTINGS)["regime"] == "weak"


def test_delay_prediction_guards():
    assert delay_prediction(None, 1.0, 0.01) is None
    assert delay_prediction(2.0, 1.0, 0.0) is None
    assert delay_prediction(math.e, 1.0, 0.5) == pytest.approx(1.0)


def test_censoring_and_norm_growth_are_recorded():
    rec = extract_events(synthetic_history(), SETTINGS)
    assert rec["censored"] is False and rec["delay_lower_bound"] is None
    assert rec["norm_grew_after_fit"] is False and rec["test_acc_at_fit"] == pytest.approx(0.1)
    never = extract_events(synthetic_history(t_gen=10 ** 6), SETTINGS)
    assert never["censored"] is True
    assert never["delay_lower_bound"] == 1700 - 200          # delay > stop_step - T_fit
    grew = synthetic_history()
    grew.loc[grew.step > 200, "V"] = 500.0
    assert extract_events(grew, SETTINGS)["norm_grew_after_fit"] is True
    assert extract_events(synthetic_history(), SETTINGS, status="diverged")["censored"] is False


def test_the_one_delay_law_fit_excludes_by_reason_and_fit_json_names_the_same_cells():
    recs = [{"cell": f"c{i}", "regime": "intermediate", "status": "finished", "T_fit": 100.0,
             "T_transition": 100.0 + 2 * t + 10, "delay": 2 * t + 10, "T_pred": t, "V_fit": 10.0,
             "V_final": 1.0, "stop_step": 600.0 + 2 * t, "lr": 0.01, "weight_decay": 1.0 + i}
            for i, t in enumerate((100.0, 200.0, 300.0, 400.0))]
    recs += [{"cell": "n", "regime": "strong", "T_fit": None, "lr": 0.01, "weight_decay": 1.0},
             {"cell": "s", "regime": "weak", "T_fit": 50.0, "T_transition": None,
              "stop_step": 1000.0, "lr": 0.01, "weight_decay": 1.0},
             {"cell": "g", "regime": "intermediate", "T_fit": 50.0, "T_transition": 500.0, "delay": 450.0,
              "T_pred": -3.0, "V_fit": 1.0, "V_final": 2.0, "stop_step": 900.0, "lr": 0.01,
              "weight_decay": 1.0}]
    fits = fit_delay_laws(recs)
    assert fits["delay_law"]["k"] == pytest.approx(2.0) and fits["delay_law"]["b"] == pytest.approx(10.0)
    assert fits["fit_cells"] == 4
    assert fits["excluded"] == {"strong": 1, "censored": 1, "norm_grew": 1}
    assert fits["censoring"]["n_censored"] == 1 and fits["censoring"]["caps"] == [950.0]
    out = fit_inputs(recs)                       # fit.json: the same cells, no fitting
    assert {k: out[k] for k in ("fit_cells", "excluded", "censoring")} == \
        {k: fits[k] for k in ("fit_cells", "excluded", "censoring")}
    assert out["regimes"]["intermediate"] == 5 and out["regimes"]["diverged"] == 0


def image_history(fit=3, switch=12, epochs=20, steps_per_epoch=10, reliance_high=0.9, clean_after=0.8,
                  lr=1e-3, wd=8.0):
    """An image-like history: epochs, cosine-free constant lr, a border fit at ``fit`` and a switch."""
    e = np.arange(epochs + 1)
    train = np.where(e >= fit, 0.95, 0.3)
    train = np.where(e == 0, np.nan, train)
    phi = np.where((e >= fit) & (e < switch), reliance_high, 0.2)
    test = np.where(e >= switch, clean_after, 0.3)
    V = np.where(e <= fit, 50 + 10 * e, 80 * np.exp(-0.05 * (e - fit)))
    steps = e * steps_per_epoch
    return pd.DataFrame({"step": steps, "epoch": e, "Lambda": lr * wd * steps, "train_acc": train,
                         "test_acc": test, "phi": phi, "loss": np.nan, "V": V, "V:fc1.weight": 0.7 * V,
                         "V:fc2.weight": 0.3 * V})


IMAGE_RULE = {"train_threshold": 0.9, "fit_phi": 0.7, "transition_rise": 0.2, "transition_fall": 0.3,
              "immediate_epochs": 5}


def test_image_events_use_the_same_definitions_with_the_image_rule():
    rec = extract_events(image_history(), IMAGE_RULE)
    assert rec["T_fit"] == 30 and rec["epoch_fit"] == 3
    assert rec["T_transition"] == 120 and rec["epoch_transition"] == 12 and rec["delay"] == 90
    assert rec["regime"] == "intermediate"                       # 90 steps > 5 epochs x 10 steps
    assert rec["Lambda_fit"] == pytest.approx(8e-3 * 30)
    assert rec["T_pred"] == pytest.approx(math.log(rec["V_fit"] / rec["V_final"]) / (2 * 8e-3))
    assert set(rec["layers"]) == {"fc1.weight", "fc2.weight"}
    assert rec["V_peak_step"] == 30 and rec["norm_grew"] is True


def test_image_regimes_from_behaviour():
    assert extract_events(image_history(switch=6), IMAGE_RULE)["regime"] == "immediate"   # 3 epochs < 5
    assert extract_events(image_history(switch=10 ** 6), IMAGE_RULE)["regime"] == "weak"
    assert extract_events(image_history(reliance_high=0.5), IMAGE_RULE)["regime"] == "immediate"  # no cue fit
    never = image_history()
    never["train_acc"] = 0.5
    assert extract_events(never, IMAGE_RULE)["regime"] == "strong"
    assert extract_events(image_history(), IMAGE_RULE, status="diverged")["regime"] == "diverged"


def test_v_peak_has_one_definition_over_all_rows():
    h = image_history()
    h.loc[0, "V"] = 1000.0                 # the initialisation is the largest V
    rec = extract_events(h, IMAGE_RULE)
    assert rec["V_peak"] == 1000.0 and rec["V_peak_step"] == 0 and rec["norm_grew"] is False


def test_rule_from_settings_converts_image_epochs_to_steps():
    assert EventRule.from_settings(IMAGE_RULE, steps_per_epoch=10).immediate_delay == 50
    assert EventRule.from_settings({"train_threshold": 0.99, "immediate_delay": 100}).immediate_delay == 100


def test_a_table_outside_the_schema_is_refused_with_the_missing_columns():
    with pytest.raises(HistoryError, match="Lambda"):
        extract_events(synthetic_history().drop(columns="Lambda"), SETTINGS)
