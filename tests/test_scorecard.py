"""Tests of nht.science.scorecard: every verdict flips exactly when its statistic crosses its threshold."""

import copy
import json

import pytest

from nht.science import scorecard as sc
from nht.science import scorecard_render as render

EPS = 1e-6


def modular_summary(share1=0.9, tau=0.95, share4=0.9, S=0.9, diff=0.2, beats=True,
                    all_present=True, n=10, null_q95=0.5, width=0.05, p1=0.01):
    """A summary whose statistics sit at the given values, each with a +-``width`` interval."""
    ci = (lambda v: [v - width, v + width]) if n >= 8 else (lambda v: None)
    return {
        "kind": "modular",
        "regimes": {"intermediate": n},
        "norm_ordering": {"share": share1, "ci": ci(share1), "n": n, "same_cell_share": 1.0,
                          "p": p1},
        "regime_ordering": {"tau_b": tau, "ci": ci(tau), "n_slices": n, "n_pairs": 30,
                            "n_discordant": 1, "n_lambda": 4, "all_present": all_present,
                            "counts": {"weak (shortcut persists)": 2 if all_present else 0,
                                       "transition (intermediate/immediate)": 6,
                                       "strong (nothing fits)": 2}},
        "layer_hierarchy": {"share_readout_max": share4, "ci": ci(share4), "n": n},
        "clean_norm_separation": {
            "S": S, "S_ci": ci(S), "n": n, "untrusted_cells": [],
            "null_pairing": {"q95": null_q95}, "null_circular": {"q95": null_q95 - 0.2},
            "verdict": ("not_enough_data" if n < 3 else
                        "holds" if S >= 0.8 and S > null_q95 else "fails")},
        "prediction": {"nht_beats_baseline": beats, "discriminating": True,
                       "paired_difference": {"median": diff, "ci": ci(diff), "n": n},
                       "loo_error": {"nht": {"median": 0.1, "ci": [0.05, 0.2]},
                                     "baseline_inverse_eta_lambda": {"median": 0.3, "ci": None}},
                       "norm_shift": {"slope": 1.1, "ci": [0.8, 1.4], "p": 0.001,
                                      "n_strata": 8, "verdict": "holds"}},
        "delay_law": {"k": 1.6, "b": 10.0, "r2": 0.97, "n": n, "tautology_r2": 0.99},
        "baseline_inverse_eta_lambda": {"k": 1, "b": 0, "r2": 0.96, "n": n},
        "decay_rate": {"ratio_to_theory": {"median": 0.4, "ci": [0.3, 0.5], "n": n}},
    }


RHOS = (0.1, 0.3, 0.5, 0.9, 1.0)


def image_summary(norm_ratio=1.5, decay=(0.5, 5, 20, 50), regimes=None,
                  acc=(0.8, 0.7, 0.6, 0.4, 0.1), wga=None, sd=0.01, n=2):
    return {
        "kind": "image",
        "norm_ratio": norm_ratio,
        "decay_from_peak": {str(lam): [d, 1.0, 2] for lam, d in zip((0.001, 0.01, 0.1, 1), decay)},
        "regimes": regimes if regimes is not None else {"weak": 2, "intermediate": 3, "strong": 2,
                                                        "diverged": 0},
        "test_acc_by_rho": {str(r): [a, sd, n] for r, a in zip(RHOS, acc)},
        "worst_group_acc": wga,
    }


def test_modular_card_has_all_keys_and_is_json():
    card = sc.build_scorecard(modular_summary(), "modular")
    assert list(card) == list(sc.HEADLINES)
    for e in card.values():
        assert {"statistic", "threshold", "verdict", "scored"} <= set(e)
        assert e["verdict"] in sc.VERDICTS
    assert all(card[p]["verdict"] == "holds" for p in sc.HEADLINES if p != "P3_group_accuracy")
    assert card["P3_group_accuracy"]["verdict"] == "not_applicable"
    json.dumps(card, allow_nan=False)


MODULAR_KNOBS = {
    "P1_norm_ordering": ("share1", 0.8),
    "P2_three_regimes": ("tau", 0.8),
    "P4_layer_hierarchy": ("share4", 0.8),
}


@pytest.mark.parametrize("pred", list(MODULAR_KNOBS))
def test_modular_verdict_is_an_interval_verdict(pred):
    knob, thr = MODULAR_KNOBS[pred]
    assert sc.THRESHOLDS["modular"][pred] == thr
    card = lambda v, **kw: sc.build_scorecard(modular_summary(**{knob: v}, **kw), "modular")[pred]
    assert card(thr + 0.05 + EPS)["verdict"] == "holds"          # whole interval above
    assert card(thr - 0.05 - EPS)["verdict"] == "fails"          # whole interval below
    straddle = card(thr + 0.01)
    assert straddle["verdict"] == "uncertain" and straddle["point_verdict"] == "holds"
    small = card(0.99, n=5)                                      # n < 8: no interval
    assert small["verdict"] == "uncertain" and small["ci"] is None
    # P1/P4 count cells (< 3: not enough); P2 counts slices of >= 3 lambdas (still judged)
    assert card(0.99, n=2)["verdict"] == ("uncertain" if pred == "P2_three_regimes"
                                          else "not_enough_data")


def test_P1_must_beat_the_V_irrelevant_null():
    card = lambda **kw: sc.build_scorecard(modular_summary(**kw))["P1_norm_ordering"]
    assert card(p1=0.01)["verdict"] == "holds"
    e = card(p1=0.4)                       # the interval is >= 0.8, the null does as well
    assert e["verdict"] == "fails" and "V-irrelevant null" in e["detail"]["reason"]
    assert card(p1=None)["verdict"] == "fails"


def test_norm_shift_is_a_headline_entry():
    def card(**shift):
        s = modular_summary()
        s["prediction"]["norm_shift"].update(shift)
        return sc.build_scorecard(s)["norm_shift"]
    assert card()["verdict"] == "holds" and card()["statistic"] == 1.1
    assert card(verdict="fails", slope=0.1, ci=[-0.3, 0.5])["verdict"] == "fails"
    ned = card(verdict="not_enough_data", slope=None, ci=None, reason="1 stratum; need >= 2")
    assert ned["verdict"] == "not_enough_data" and "need >= 2" in ned["detail"]["reason"]
    assert not ned["scored"]


def test_P5_is_descriptive_when_no_S_could_beat_its_nulls():
    s = modular_summary()
    s["clean_norm_separation"].update(verdict="descriptive", reason="a null's 95th percentile is 1")
    e = sc.build_scorecard(s)["P5_clean_separation"]
    assert e["verdict"] == "not_enough_data" and not e["scored"] and e["statistic"] == 0.9
    assert "95th percentile" in e["detail"]["reason"]


def test_P5_needs_S_above_threshold_and_above_its_nulls():
    card = lambda **kw: sc.build_scorecard(modular_summary(**kw))["P5_clean_separation"]
    assert card(S=0.9, null_q95=0.5)["verdict"] == "holds"
    above_threshold_not_null = card(S=0.9, null_q95=0.95)
    assert above_threshold_not_null["verdict"] == "fails"
    assert "null" in above_threshold_not_null["detail"]["reason"]
    assert card(S=0.79, null_q95=0.3)["verdict"] == "fails"
    assert card(n=2)["verdict"] == "not_enough_data"


@pytest.mark.parametrize("beats,verdict", [(True, "holds"), (False, "fails"),
                                           ("uncertain", "uncertain")])
def test_P6_is_the_out_of_sample_comparison(beats, verdict):
    e = sc.build_scorecard(modular_summary(beats=beats))["P6_delay_scaling"]
    assert e["verdict"] == verdict and e["threshold"] == 0.0 and e["comparison"] == ">"
    assert e["detail"]["retrospective_r2"] == 0.97 and e["detail"]["tautology_r2"] == 0.99
    assert e["detail"]["decay_ratio_to_theory"] == 0.4
    s = modular_summary()
    # the fair null: beating 1/(eta lambda) is not enough when the same-eta-lambda mean wins
    s["prediction"].update(nht_beats_nulls=False, nht_vs_same_eta_lambda_mean={
        "median": -0.1, "ci": [-0.2, -0.05], "n": 10})
    fair = sc.build_scorecard(s)["P6_delay_scaling"]
    assert fair["verdict"] == "fails" and fair["statistic"] == -0.1
    assert fair["detail"]["binding_null"] == "same_eta_lambda_mean"
    s = modular_summary()
    s["prediction"]["discriminating"] = False
    assert "cannot be separated" in sc.build_scorecard(s)["P6_delay_scaling"]["detail"]["reason"]
    s.pop("prediction")
    assert sc.build_scorecard(s)["P6_delay_scaling"]["verdict"] == "not_enough_data"


def test_modular_not_enough_data_and_missing_regime():
    card = sc.build_scorecard(modular_summary(n=2), "modular")
    for p in ("P1_norm_ordering", "P4_layer_hierarchy", "P5_clean_separation", "P6_delay_scaling"):
        assert card[p]["verdict"] == "not_enough_data", p
    card = sc.build_scorecard({"kind": "modular"}, "modular")
    assert {card[p]["verdict"] for p in sc.PREDICTIONS} == {"not_enough_data", "not_applicable"}
    card = sc.build_scorecard(modular_summary(all_present=False), "modular")
    assert card["P2_three_regimes"]["verdict"] == "fails"
    assert "weak" in card["P2_three_regimes"]["detail"]["reason"]
    s = modular_summary()
    s["regime_ordering"]["n_lambda"] = 2
    assert sc.build_scorecard(s)["P2_three_regimes"]["verdict"] == "not_enough_data"


def test_image_card_uses_the_shared_science_entries_and_adds_p3():
    """One science path: with the science blocks, an image card's P1, P2, P4-P6 are the modular
    entries (same statistics, thresholds and flips); P3 is the image-only accuracy ordering."""
    sci = {k: v for k, v in modular_summary().items() if k != "kind"}
    card = sc.build_scorecard({**image_summary(), **sci}, "image")
    modular = sc.build_scorecard(modular_summary(), "modular")
    for p in ("P1_norm_ordering", "P2_three_regimes", "P4_layer_hierarchy", "P5_clean_separation",
              "P6_delay_scaling"):
        assert card[p] == modular[p], p
    assert card["P3_group_accuracy"]["verdict"] == "holds"
    low = {k: v for k, v in modular_summary(share1=0.6, S=0.79, beats=False).items() if k != "kind"}
    flipped = sc.build_scorecard({**image_summary(), **low}, "image")
    assert flipped["P1_norm_ordering"]["verdict"] == "fails"
    assert flipped["P5_clean_separation"]["verdict"] == "fails"
    assert flipped["P6_delay_scaling"]["verdict"] == "fails"
    # without the science blocks every shared entry is not_enough_data, never a verdict
    bare = sc.build_scorecard(image_summary(), "image")
    for p in ("P1_norm_ordering", "P2_three_regimes", "P4_layer_hierarchy", "P5_clean_separation",
              "P6_delay_scaling"):
        assert bare[p]["verdict"] == "not_enough_data", p
    # P3: accuracy must fall with rho; worst-group accuracy preferred where defined
    up = sc.build_scorecard(image_summary(acc=(0.1, 0.4, 0.6, 0.7, 0.8)))["P3_group_accuracy"]
    assert up["verdict"] == "fails" and up["statistic"] == pytest.approx(-1)
    wg = sc.build_scorecard(image_summary(wga={"0.1": [0.1, 0, 2], "0.5": [0.2, 0, 2],
                                               "0.9": [0.3, 0, 2]}))["P3_group_accuracy"]
    # three rho values: descriptive only, whatever the order
    assert wg["verdict"] == "not_enough_data" and not wg["scored"]
    assert wg["detail"]["source"] == "worst_group_acc" and wg["statistic"] == pytest.approx(-1)


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="kind"):
        sc.build_scorecard({}, "tabular")


def test_markdown_shows_measured_beside_paper_and_differences():
    mod = modular_summary(beats=False)
    mod["scorecard"] = sc.build_scorecard(mod)
    img = image_summary()
    img["config"] = {"dataset": "cifar10"}
    digits = image_summary(norm_ratio=0.5)
    summary = {"experiments": {"mlp_regimes": mod, "cifar_cpu": img, "digits": digits,
                               "broken": {"kind": "other"}}}
    md = render.scorecard_markdown(copy.deepcopy(summary))
    assert "| P6 delay scaling |" in md
    for label in ("modular arithmetic", "CIFAR-10", "CelebA", "Waterbirds"):
        assert label in md
    assert "6/6" in md and "5/6" in md and "4/6" in md and "2/6" in md
    assert "`mlp_regimes` vs paper modular arithmetic: measured 4/6 hold, paper 6/6 (**differs**)" in md
    assert "P6 delay scaling: measured fails, paper holds" in md
    assert "P3 group/clean accuracy: measured not applicable, paper holds" in md
    assert "`digits`: no counterpart in the paper" in md
    assert "`cifar_cpu` vs paper CIFAR-10" in md
    assert "broken" not in md
    assert render.scorecard_markdown(summary["experiments"]) == md
    mod["censoring"] = {"n_censored": 3, "km_median_delay": 4300.0}
    mod["delay_law"]["excluded"] = {"censored": 3, "norm_grew": 2}
    md = render.scorecard_markdown({"experiments": {"m": mod}})
    assert "Cells: 3 censored" in md and "censored 3, norm_grew 2" in md


def test_html_rendering_has_the_tables():
    mod = modular_summary(beats=False)
    page = render.scorecard_html({"experiments": {"mlp <x>": mod}})
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert page.count("<table") == 3           # measured, paper, detail (DataFrame.to_html)
    assert "<td>P6 delay scaling</td>" in page and "<strong>fails</strong>" in page
    assert "mlp &lt;x&gt;" in page and "<x>" not in page
    assert "<li><code>mlp &lt;x&gt;</code> vs paper modular arithmetic" in page


def test_attach_scorecards_in_place():
    s = {"experiments": {"m": modular_summary(), "x": {"kind": "other"}}}
    assert sc.attach_scorecards(s) is s
    assert list(s["experiments"]["m"]["scorecard"]) == list(sc.HEADLINES)
    assert "scorecard" not in s["experiments"]["x"]


def test_image_scorecard_says_why_p4_to_p6_have_no_data():
    from nht.science.scorecard import build_scorecard

    none = {"kind": "image", "transitions": {"n_cells": 12, "n_intermediate": 0, "cells": {},
                                             "regimes": {"weak": 8, "immediate": 4}}}
    card = build_scorecard(none)
    for key in ("P4_layer_hierarchy", "P5_clean_separation", "P6_delay_scaling"):
        assert card[key]["verdict"] == "not_enough_data"
        assert "no shortcut-to-shape transition at this scale: 0 of 12 cells" in card[key]["detail"]["reason"]
    one = {"kind": "image", "transitions": {"n_cells": 3, "n_intermediate": 1, "cells": {"c": {}},
                                            "regimes": {"intermediate": 1, "weak": 2}}}
    assert "only 1 of 3 cells make the transition" in build_scorecard(one)["P6_delay_scaling"]["detail"]["reason"]
