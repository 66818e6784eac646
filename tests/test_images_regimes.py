"""Issue 13: the extensions used by the image transition search (MLP, init scale, weak cue, classes),
image cell ids under the event-rule settings, and the search's own transition rule
(``shortcut_phases`` in benchmarks/image_transition_search.py) next to the one event rule
(:func:`nht.core.events.extract_events`) on constructed histories. Training with init scale, pixel
noise and a time limit is tested in tests/test_images_train.py."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nht.config import ConfigError, expand_cells, validate_config
from nht.core.events import extract_events
from nht.domains.images import data, shortcuts
from nht.domains.images.models import build_model, n_params

EVENT_KEYS = {"train_threshold": 0.8, "fit_phi": 0.5, "transition_rise": 0.1, "transition_fall": 0.1,
              "immediate_epochs": 50}


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
    # the search's schema keys carry no defaults, so configs that do not use them hash as before
    exp = {"kind": "image", "dataset": {"name": "digits", "source": "sklearn"}}
    cell = expand_cells(validate_config({"experiments": {"t": exp}}))[0]
    s = cell.settings
    assert not {"input_noise", "time_limit_s"} & set(s) and "init_scale" not in s["model"]
    # the event rule has schema defaults, but analysis-only settings: editing them changes neither the
    # cell id nor what its training job receives
    assert {k: s[k] for k in EVENT_KEYS} == {"train_threshold": 0.9, "fit_phi": 0.7, "transition_rise": 0.2,
                                              "transition_fall": 0.3, "immediate_epochs": 5}
    assert not set(EVENT_KEYS) & set(cell.train_settings)
    for key, value in EVENT_KEYS.items():
        edited = expand_cells(validate_config({"experiments": {"t": {**exp, key: value}}}))[0]
        assert edited.settings[key] == value, key
        assert edited.id == cell.id, key
        assert edited.train_settings == cell.train_settings, key
    every = expand_cells(validate_config({"experiments": {"t": {**exp, **EVENT_KEYS}}}))[0]
    assert every.id == cell.id and every.train_settings == cell.train_settings
    # a training setting still changes the id
    assert expand_cells(validate_config({"experiments": {"t": {**exp, "epochs": 7}}}))[0].id != cell.id


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
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "image_transition_search.py"
    spec = importlib.util.spec_from_file_location("image_transition_search", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


IMAGE_RULE = {"train_threshold": 0.9, "fit_phi": 0.7, "transition_rise": 0.2, "transition_fall": 0.3,
              "immediate_epochs": 5}                   # the image schema's defaults


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
    h = pd.DataFrame({"step": 4 * ep, "epoch": ep, "Lambda": lam, "train_acc": train, "test_acc": clean,
                      "phi": rel, "loss": 0.1, "V": V, "conflicting_acc": clean})
    oc = m.classify(h)
    assert oc["transition"] and oc["t_fit"] == 10 and oc["t_switch"] == 60 and oc["score"] == 1.0
    assert oc["sustained"] and oc["sustain_epochs"] == 50 and oc["V_fit"] == pytest.approx(V[10])
    assert oc["Lambda_switch"] - oc["Lambda_fit"] == pytest.approx(0.5)
    assert m.classify(h, "conflicting_acc")["t_switch"] == 60
    higher_bar = m.shortcut_phases(ep, train, clean, rel, rule={"rise": 0.6})
    assert higher_bar["sustained"] and not higher_bar["transition"]
    # reliance falls during fitting (not sustained for K epochs): no transition, however large the rise
    early = h.assign(phi=np.where((ep >= 10) & (ep < 12), 0.9, np.where(ep < 10, 0.3, 0.2)))
    oc = m.classify(early)
    assert oc["t_fit"] == 10 and not oc["sustained"] and not oc["transition"]
    assert oc["sustain_epochs"] == 2
    # clean rises but reliance stays: a late rise, no transition, score 0
    stays = h.assign(phi=np.where(ep >= 10, 0.9, 0.3))
    oc = m.classify(stays)
    assert not oc["transition"] and oc["late_rise"] and oc["score"] == 0.0
    assert oc["sustained"]
    # never fits / fits without the cue: no fit on the cue, nothing sustained
    for never in (h.assign(train_acc=0.5), h.assign(phi=0.1)):
        oc = m.classify(never)
        assert oc["t_fit"] is None and not oc["sustained"] and not oc["transition"]
    assert not {k for k in oc if "regime" in k}                # regimes come from the one event rule only

    # the one event rule (what every image cell reports, and the search's ``regime`` column) reads the
    # same events off these histories: fit at epoch 10, transition at 60 -> intermediate
    ev = extract_events(h, IMAGE_RULE, "finished")
    assert (ev["epoch_fit"], ev["epoch_transition"]) == (10, 60) and ev["regime"] == "intermediate"
    assert (ev["T_fit"], ev["delay"]) == (40, 200)
    assert ev["Lambda_transition"] - ev["Lambda_fit"] == pytest.approx(0.5)
    assert extract_events(stays, IMAGE_RULE)["regime"] == "weak"
    assert extract_events(h.assign(train_acc=0.5), IMAGE_RULE)["regime"] == "strong"
    assert extract_events(h.assign(phi=0.1), IMAGE_RULE)["regime"] == "immediate"
    assert extract_events(h, IMAGE_RULE, "diverged")["regime"] == "diverged"
    # a switch within immediate_epochs of the fit is immediate, not a delayed transition
    quick = h.assign(test_acc=np.where(ep >= 13, 0.7, 0.2), phi=np.where(ep >= 13, 0.4, rel))
    assert extract_events(quick, IMAGE_RULE)["regime"] == "immediate"
    assert extract_events(quick, {**IMAGE_RULE, "immediate_epochs": 2})["regime"] == "intermediate"
