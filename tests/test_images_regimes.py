"""Issue 13: the regime rule (a V that only shrinks from initialisation is not 'weak'), and the
extensions used by the transition search (init scale, MLP, pixel noise, time limit, weak cue, classes)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from nht.config import ConfigError, expand_cells, validate_config
from nht.domains.images import data, shortcuts
from nht.domains.images.models import build_model, n_params
from nht.domains.images.norms import REGIME_LABELS, classify_regime, summarize_history
from nht.domains.images.summary import REGIMES
from nht.domains.images.train import train_cell

TH = (1.0, 40.0)


def _hist(V, clean=None, reliance=None):
    """History table with epochs 0..len(V)-1 (epoch 0 = initialisation)."""
    n = len(V)
    clean = clean if clean is not None else [0.5] * n
    reliance = reliance if reliance is not None else [0.5] * n
    return pd.DataFrame({"epoch": range(n), "V": V, "V_no_norm": V, "train_acc": [np.nan] + [1.0] * (n - 1),
                         "clean_acc": clean, "reliance": reliance})


def test_collapse_in_epoch_one_is_init_decay_not_weak():
    # V collapses from its initial value in epoch 1 and then creeps up: the decay from the peak is
    # 0 %, which the peak rule alone reads as "weak"
    s = summarize_history(_hist([1000.0, 100.0, 110.0, 120.0]), {}, "ok")
    assert s["norm_grew"] is False
    assert s["regime_from_peak"] == "weak"
    assert s["regime"] == "init_decay"


def test_monotone_shrinkage_from_init_is_init_decay_even_when_large():
    s = summarize_history(_hist([1000.0, 900.0, 500.0, 100.0]), {}, "ok")
    assert s["decay_pct"] == pytest.approx(100 * (900 - 100) / 900)
    assert s["regime_from_peak"] == "strong" and s["regime"] == "init_decay"


def test_grown_norm_keeps_the_peak_rule():
    grew_then_decayed = summarize_history(_hist([100.0, 300.0, 400.0, 150.0]), {}, "ok")
    assert grew_then_decayed["norm_grew"] is True
    assert grew_then_decayed["regime"] == grew_then_decayed["regime_from_peak"] == "strong"   # 62.5 %
    still_rising = summarize_history(_hist([100.0, 200.0, 300.0, 400.0]), {}, "ok")
    assert still_rising["regime"] == "weak"
    middle = summarize_history(_hist([100.0, 400.0, 300.0]), {}, "ok")
    assert middle["regime"] == "intermediate"                                                  # 25 %
    # a single epoch above V_init is enough to count as grown
    dipped = summarize_history(_hist([100.0, 90.0, 101.0, 50.0]), {}, "ok")
    assert dipped["norm_grew"] is True and dipped["regime"] == "strong"


def test_norm_grew_flag_and_peak_label_without_the_summary_change():
    # these hold before and after summary.REGIMES lists init_decay
    s = summarize_history(_hist([1000.0, 100.0, 110.0, 120.0]), {}, "ok")
    assert s["norm_grew"] is False and s["regime_from_peak"] == "weak"
    assert s["regime"] in ("init_decay", "weak") and s["regime"] in REGIMES


def test_classify_regime_rule_order():
    assert classify_regime(0.0, "ok", TH, norm_grew=False) == "init_decay"
    assert classify_regime(0.0, "ok", TH, norm_grew=None) == "weak"            # unknown: peak rule
    assert classify_regime(0.0, "ok", TH, norm_grew=True) == "weak"
    assert classify_regime(None, "diverged", TH, norm_grew=False) == "diverged"  # divergence first
    assert classify_regime(float("nan"), "ok", TH, norm_grew=False) == "diverged"
    assert set(REGIME_LABELS) >= set(REGIMES)                                  # summary's labels exist


def test_diverged_history_is_diverged():
    s = summarize_history(_hist([100.0, float("nan")]), {}, "diverged")
    assert s["regime"] == "diverged"


def _cell(tmp_path, classes=None, alpha=1.0, **over):
    exp = {"kind": "image", "dataset": {"name": "digits", "source": "sklearn", "pad": 2}, "rho": 0.9,
           "weight_decay": 0.1, "epochs": 3, "batch_size": 64, "checkpoint_seconds": 0,
           "model": {"name": "mlp", "hidden": [32]}}
    exp.update(over)
    cell = expand_cells(validate_config({"experiments": {"t": exp}}))[0]
    d = shortcuts.inject(data.load_digits(2), cell["rho"], cell["border"], cell["seed"], n_train=200,
                         n_test=100, alpha=alpha, classes=classes)
    path = tmp_path / "data.npz"
    data.save_npz(d, path)
    return cell, path


def test_mlp_and_init_scale():
    m1 = build_model({"name": "mlp", "hidden": [16, 8]}, 10, (3, 12, 12))
    assert n_params(m1) == (432 * 16 + 16) + (16 * 8 + 8) + (8 * 10 + 10)
    assert m1(torch.zeros(2, 3, 12, 12)).shape == (2, 10)
    torch.manual_seed(0)
    a = build_model({"name": "simple_cnn", "width_mult": 0.25}, 10)
    torch.manual_seed(0)
    b = build_model({"name": "simple_cnn", "width_mult": 0.25, "init_scale": 3.0}, 10)
    va = sum(float(p.detach().pow(2).sum()) for p in a.parameters())
    vb = sum(float(p.detach().pow(2).sum()) for p in b.parameters())
    assert vb == pytest.approx(9.0 * va, rel=1e-5)
    with pytest.raises(ValueError, match="input shape"):
        build_model({"name": "mlp"}, 10)
    with pytest.raises(ConfigError):
        validate_config({"experiments": {"x": {"kind": "image", "model": {"name": "mlp", "init_scale": 0},
                                               "dataset": {"name": "digits", "source": "sklearn"}}}})


def test_new_keys_leave_existing_cell_ids_unchanged():
    # the new schema keys carry no defaults, so configs that do not use them hash as before
    exp = {"kind": "image", "dataset": {"name": "digits", "source": "sklearn"}}
    s = expand_cells(validate_config({"experiments": {"t": exp}}))[0].settings
    assert not {"input_noise", "time_limit_s"} & set(s) and "init_scale" not in s["model"]


def test_init_scale_and_noise_in_training(tmp_path):
    cell, path = _cell(tmp_path, model={"name": "mlp", "hidden": [32], "init_scale": 4.0}, input_noise=0.5,
                       lr_schedule="constant")
    res = train_cell(cell.settings, path, tmp_path / "a", threads=1, cell_id=cell.id)
    hist = pd.read_csv(tmp_path / "a" / "history.csv")
    cell1, _ = _cell(tmp_path / "b", model={"name": "mlp", "hidden": [32]})
    res1 = train_cell(cell1.settings, tmp_path / "b" / "data.npz", tmp_path / "b", threads=1, cell_id=cell1.id)
    assert res["V_init"] == pytest.approx(16.0 * res1["V_init"], rel=0.05)   # different draws, same law
    # cumulative decay budget Lambda = lambda * sum(lr): constant lr 1e-3, 4 steps per epoch
    assert hist["decay_budget"].iloc[0] == 0.0
    assert hist["decay_budget"].iloc[-1] == pytest.approx(0.1 * 1e-3 * 4 * 3)
    assert res["decay_budget"] == pytest.approx(hist["decay_budget"].iloc[-1])
    # the noise is seeded: a rerun gives the same history; without noise it differs
    train_cell(cell.settings, path, tmp_path / "a2", threads=1, cell_id=cell.id)
    again = pd.read_csv(tmp_path / "a2" / "history.csv")
    assert np.allclose(hist["V"], again["V"]) and np.allclose(hist["loss"].iloc[1:], again["loss"].iloc[1:])
    quiet = dict(cell.settings, input_noise=0.0)
    train_cell(quiet, path, tmp_path / "q", threads=1, cell_id=cell.id)
    assert not np.allclose(hist["loss"].iloc[1:], pd.read_csv(tmp_path / "q" / "history.csv")["loss"].iloc[1:])


def test_time_limit_stops_at_an_epoch_end(tmp_path):
    cell, path = _cell(tmp_path, epochs=10_000, time_limit_s=0.5)
    res = train_cell(cell.settings, path, tmp_path / "t", threads=1, cell_id=cell.id)
    assert res["status"] == "time_limit" and 1 <= res["epochs_done"] < 10_000
    saved = json.loads((tmp_path / "t" / "norms.json").read_text())
    assert saved["epochs_done"] == len(pd.read_csv(tmp_path / "t" / "history.csv")) - 1


def test_weak_cue_and_class_restriction():
    raw = data.load_digits(2)
    strong = shortcuts.inject(raw, 1.0, 2, 0, n_train=50, n_test=20)
    weak = shortcuts.inject(raw, 1.0, 2, 0, n_train=50, n_test=20, alpha=0.25)
    mask = shortcuts.border_mask(12, 12, 2)
    colours = shortcuts.palette(10)[strong["y_train"]].astype(float)            # (N, 3)
    # background under the border is 0, so the blended frame is alpha * colour
    assert np.allclose(weak["x_train"][:, :, mask], np.rint(0.25 * colours)[:, :, None], atol=0.51)
    assert np.array_equal(strong["x_train"][:, :, ~mask], weak["x_train"][:, :, ~mask])
    two = shortcuts.inject(raw, 0.9, 2, 0, classes=(3, 8))
    assert set(np.unique(two["y_train"])) == {0, 1} and list(two["classes"]) == ["3", "8"]
    assert len(two["y_train"]) == int(np.isin(raw["y_train"], [3, 8]).sum())
    assert set(np.unique(two["c_train"])) <= {0, 1}


def _search_module():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "image_transition_search.py"
    spec = importlib.util.spec_from_file_location("image_transition_search", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_search_transition_rule_on_constructed_histories():
    m = _search_module()
    n = 101                                            # epochs 0..100 -> K = max(5, 5) = 5
    ep = np.arange(n)
    train = np.where(ep >= 10, 0.95, 0.5)
    clean = np.where(ep >= 60, 0.7, 0.2)               # rises 50 points at epoch 60
    rel = np.where(ep >= 10, 0.9, 0.3)
    rel = np.where(ep >= 60, 0.4, rel)                 # falls 0.5 at epoch 60
    V = 1000.0 * np.exp(-0.01 * ep)
    lam = 0.01 * ep
    h = pd.DataFrame({"epoch": ep, "train_acc": train, "clean_acc": clean, "reliance": rel, "V": V,
                      "decay_budget": lam})
    oc = m.classify(h)
    assert oc["transition"] and oc["t_fit"] == 10 and oc["t_switch"] == 60 and oc["score"] == 1.0
    assert oc["phase_regime"] == "delayed" and oc["sustain_epochs"] == 50 and oc["V_fit"] == pytest.approx(V[10])
    assert oc["Lambda_switch"] - oc["Lambda_fit"] == pytest.approx(0.5)
    # reliance falls during fitting (not sustained for K epochs): no transition, however large the rise
    early = h.assign(reliance=np.where((ep >= 10) & (ep < 12), 0.9, np.where(ep < 10, 0.3, 0.2)))
    oc = m.classify(early)
    assert oc["t_fit"] == 10 and not oc["sustained"] and not oc["transition"]
    assert oc["phase_regime"] == "immediate" and oc["sustain_epochs"] == 2
    # clean rises but reliance stays: a late rise, no transition, score 0
    stays = h.assign(reliance=np.where(ep >= 10, 0.9, 0.3))
    oc = m.classify(stays)
    assert not oc["transition"] and oc["late_rise"] and oc["score"] == 0.0
    assert oc["phase_regime"] == "shortcut_persists"
    # never fits (strong regime) / fits without the cue
    assert m.classify(h.assign(train_acc=0.5))["phase_regime"] == "no_fit"
    assert m.classify(h.assign(reliance=0.1))["phase_regime"] == "no_shortcut"
    # the same rule is in every cell summary, next to the V-based regime
    s = summarize_history(h.assign(V_no_norm=V), {}, "ok")
    assert s["phase_regime"] == "delayed" and (s["t_fit"], s["t_switch"]) == (10, 60)
