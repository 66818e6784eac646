"""Tests of nht.scorecard: every verdict flips exactly when its statistic crosses its threshold."""

import copy
import json

import pytest

from nht import scorecard as sc

EPS = 1e-6


def modular_summary(share1=0.9, concordance=0.95, share4=0.9, S=0.9, r2=0.95, all_present=True,
                    n=10):
    return {
        "kind": "modular",
        "regimes": {"delayed": n},
        "norm_ordering": {"share": share1, "ci": [share1 - 0.1, min(1, share1 + 0.05)], "n": n},
        "regime_ordering": {"concordance": concordance, "n_pairs": 30, "n_discordant": 1,
                            "n_lambda": 4, "all_present": all_present,
                            "counts": {"weak (shortcut_persists)": 2 if all_present else 0,
                                       "transition (delayed/immediate)": 6,
                                       "suppressed (no_fit)": 2}},
        "layer_hierarchy": {"share_readout_max": share4, "ci": [0.5, 1.0], "n": n},
        "clean_norm_separation": {"S": S, "S_ci": [S - 0.05, S + 0.05], "n": n,
                                  "untrusted_cells": []},
        "delay_law": {"k": 1.6, "b": 10.0, "r2": r2, "n": n, "k_ci": [1.2, 2], "b_ci": [0, 20],
                      "r2_ci": [r2 - 0.05, min(1, r2 + 0.02)]},
        "baseline_inverse_eta_lambda": {"k": 1, "b": 0, "r2": 0.5, "n": n, "r2_ci": [0.2, 0.7]},
        "scaling_exponent": {"k": 0.95, "k_ci": [0.8, 1.1], "n": n},
    }


def image_summary(norm_ratio=1.5, decay=(0.5, 5, 20, 50), regimes=None, acc=(0.8, 0.6, 0.4, 0.1),
                  wga=None):
    return {
        "kind": "image",
        "norm_ratio": norm_ratio,
        "decay_from_peak": {str(lam): [d, 1.0, 2] for lam, d in zip((0.001, 0.01, 0.1, 1), decay)},
        "regimes": regimes if regimes is not None else {"weak": 2, "intermediate": 3, "strong": 2,
                                                        "diverged": 0},
        "clean_acc_by_strength": {str(r): [a, 0.01, 2] for r, a in zip((0.1, 0.5, 0.9, 1.0), acc)},
        "worst_group_acc": wga,
    }


def test_modular_card_has_all_keys_and_is_json():
    card = sc.build_scorecard(modular_summary(), "modular")
    assert list(card) == list(sc.PREDICTIONS)
    for e in card.values():
        assert {"statistic", "threshold", "verdict"} <= set(e)
        assert e["verdict"] in sc.VERDICTS
    assert all(card[p]["verdict"] == "holds" for p in sc.PREDICTIONS if p != "P3_group_accuracy")
    assert card["P3_group_accuracy"]["verdict"] == "not_applicable"
    json.dumps(card, allow_nan=False)


MODULAR_KNOBS = {
    "P1_norm_ordering": ("share1", 0.8),
    "P2_three_regimes": ("concordance", 0.8),
    "P4_layer_hierarchy": ("share4", 0.8),
    "P5_clean_separation": ("S", 0.8),
    "P6_delay_scaling": ("r2", 0.9),
}


@pytest.mark.parametrize("pred", list(MODULAR_KNOBS))
def test_modular_verdict_flips_at_threshold(pred):
    knob, thr = MODULAR_KNOBS[pred]
    assert sc.THRESHOLDS["modular"][pred] == thr
    below = sc.build_scorecard(modular_summary(**{knob: thr - EPS}), "modular")[pred]
    at = sc.build_scorecard(modular_summary(**{knob: thr}), "modular")[pred]
    above = sc.build_scorecard(modular_summary(**{knob: thr + EPS}), "modular")[pred]
    assert below["verdict"] == "fails"
    assert at["verdict"] == "holds" and above["verdict"] == "holds"
    assert below["statistic"] == pytest.approx(thr - EPS) and below["threshold"] == thr


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


def test_ci_verdict_reports_uncertainty():
    s = modular_summary(r2=0.92)
    s["delay_law"]["r2_ci"] = [0.85, 0.97]
    e = sc.build_scorecard(s)["P6_delay_scaling"]
    assert e["verdict"] == "holds" and e["ci_verdict"] == "uncertain"
    s["delay_law"]["r2_ci"] = [0.91, 0.97]
    assert sc.build_scorecard(s)["P6_delay_scaling"]["ci_verdict"] == "holds"
    assert sc.build_scorecard(s)["P6_delay_scaling"]["detail"]["inverse_lambda_consistent"] is True


def test_image_verdicts_flip_at_thresholds():
    card = sc.build_scorecard(image_summary(), "image")
    assert card["P1_norm_ordering"]["verdict"] == "holds"
    assert card["P2_three_regimes"]["verdict"] == "holds"
    assert card["P3_group_accuracy"]["verdict"] == "holds"
    for p in ("P4_layer_hierarchy", "P5_clean_separation", "P6_delay_scaling"):
        assert card[p]["verdict"] == "not_enough_data"
    # P1: ratio > 1
    assert sc.build_scorecard(image_summary(norm_ratio=1.0))["P1_norm_ordering"]["verdict"] == "fails"
    assert sc.build_scorecard(image_summary(norm_ratio=1 + EPS))["P1_norm_ordering"]["verdict"] == "holds"
    assert sc.build_scorecard(image_summary(norm_ratio=None))["P1_norm_ordering"]["verdict"] == \
        "not_enough_data"
    # P2: Spearman over 4 lambdas: one adjacent swap -> 0.8 (holds), two swaps -> 0.6 (fails)
    one = sc.build_scorecard(image_summary(decay=(5, 0.5, 20, 50)))["P2_three_regimes"]
    two = sc.build_scorecard(image_summary(decay=(5, 0.5, 50, 20)))["P2_three_regimes"]
    assert one["statistic"] == pytest.approx(0.8) and one["verdict"] == "holds"
    assert two["statistic"] == pytest.approx(0.6) and two["verdict"] == "fails"
    miss = sc.build_scorecard(image_summary(regimes={"weak": 3, "intermediate": 4, "strong": 0}))
    assert miss["P2_three_regimes"]["verdict"] == "fails"
    # P3: accuracy must fall with rho; worst-group accuracy preferred where defined
    up = sc.build_scorecard(image_summary(acc=(0.1, 0.4, 0.6, 0.8)))["P3_group_accuracy"]
    assert up["verdict"] == "fails" and up["statistic"] == pytest.approx(-1)
    wg = sc.build_scorecard(image_summary(wga={"0.1": [0.1, 0, 1], "0.5": [0.2, 0, 1],
                                               "0.9": [0.3, 0, 1]}))["P3_group_accuracy"]
    assert wg["verdict"] == "fails" and wg["detail"]["source"] == "worst_group_acc"
    # P5/P6 fields, when an image summary has them, use the modular rules
    s = image_summary()
    s.update({k: v for k, v in modular_summary(S=0.79).items()
              if k in ("clean_norm_separation", "delay_law")})
    card = sc.build_scorecard(s)
    assert card["P5_clean_separation"]["verdict"] == "fails"
    assert card["P6_delay_scaling"]["verdict"] == "holds"


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="kind"):
        sc.build_scorecard({}, "tabular")


def test_markdown_shows_measured_beside_paper_and_differences():
    mod = modular_summary(r2=0.15)
    mod["scorecard"] = sc.build_scorecard(mod)
    img = image_summary()
    img["provenance"] = {"config": {"dataset": "cifar10"}}
    digits = image_summary(norm_ratio=0.5)
    summary = {"experiments": {"mlp_regimes": mod, "cifar_cpu": img, "digits": digits,
                               "broken": {"kind": "other"}}}
    md = sc.scorecard_markdown(copy.deepcopy(summary))
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
    assert sc.scorecard_markdown(summary["experiments"]) == md


def test_html_rendering_has_the_tables():
    mod = modular_summary(r2=0.15)
    page = sc.scorecard_html({"experiments": {"mlp <x>": mod}})
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert page.count("<table>") == 3          # measured, paper, detail
    assert "<td>P6 delay scaling</td>" in page and "<strong>fails</strong>" in page
    assert "mlp &lt;x&gt;" in page and "<x>" not in page
    assert "<li><code>mlp &lt;x&gt;</code> vs paper modular arithmetic" in page


def test_attach_scorecards_in_place():
    s = {"experiments": {"m": modular_summary(), "x": {"kind": "other"}}}
    assert sc.attach_scorecards(s) is s
    assert list(s["experiments"]["m"]["scorecard"]) == list(sc.PREDICTIONS)
    assert "scorecard" not in s["experiments"]["x"]
