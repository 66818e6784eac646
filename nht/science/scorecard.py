"""The P1-P6 scorecard: each of the paper's six predictions reduced to one statistic computed
from an experiment's summary, a threshold fixed in advance (:data:`THRESHOLDS`), and a verdict.

Verdicts: ``holds``, ``fails``, ``uncertain`` (the 95 % interval straddles the threshold, or there
are too few independent units for an interval: fewer than 8, :data:`nht.science.stats.MIN_BOOT_N`),
``not_applicable`` and ``not_enough_data`` (a required field is missing/undefined, or fewer than 3
cells/values). Each entry is ``{statistic, threshold, verdict, point_verdict, comparison, ci,
ci_verdict, n, definition, detail}``: ``point_verdict`` compares the point estimate with the
threshold, ``ci_verdict`` the whole interval. Modular verdicts are interval verdicts (holds only
when the whole interval is on the predicted side); P5 uses its null test. No threshold is ever
tuned to data.

Modular experiments (fields from :func:`nht.science.analyse.analyse_experiment`):

* **P1_norm_ordering** -- ``norm_ordering.share``: P(V_sc > V_st) with V_sc the squared norm at
  the fit of a shortcut-reliant cell and V_st that of *other* cells' generalised solutions at the
  same lambda (not one cell before and after decay). holds if the BCa interval is >= 0.8.
* **P2_three_regimes** -- ``regime_ordering.tau_b``: pair-weighted Kendall tau-b of regime rank
  (weak < transition < suppressed) with lambda within slices; holds if the interval (over slices)
  is >= 0.8 *and* all three classes occur (fails if one is missing); not_enough_data with fewer
  than 3 lambda values.
* **P3_group_accuracy** -- not_applicable (no groups in modular arithmetic).
* **P4_layer_hierarchy** -- ``layer_hierarchy.share_readout_max`` (Wilson interval) >= 0.8.
* **P5_clean_separation** -- ``clean_norm_separation.S``: holds only if S >= 0.8 *and* S is above
  the 95th percentile of both nulls (V paired with another cell's reliance; reliance circularly
  shifted); see :mod:`nht.science.separation`.
* **P6_delay_scaling** -- out of sample: ``prediction.paired_difference.median`` = median over
  cells of (relative delay error of the ``1/(eta lambda)`` baseline) - (that of the NHT
  prediction), leave-one-group-out, known at ``T_fit`` (:mod:`nht.science.prediction`). holds when the
  paired interval lies above 0 (``prediction.nht_beats_baseline`` true), fails when it lies at or
  below 0, uncertain when it straddles 0 or with fewer than 8 cells. The retrospective R^2,
  the tautology R^2, the baseline's R^2, the norm-shift test and the decay rate are in ``detail``.

Image experiments: the same P1, P2, P4, P5 and P6 (one science path, :mod:`nht.science.analyse`,
on the image histories with phi = border reliance and the one regime vocabulary of
:mod:`nht.core.events`), plus

* **P3** -- ``-Spearman(rho, accuracy)`` across shortcut strengths rho, with accuracy the mean
  worst-group accuracy (``worst_group_acc``) where the dataset defines groups, else the mean clean
  accuracy (``clean_acc_by_strength``): accuracy should fall as the shortcut gets stronger. holds
  if >= 0.8; not_enough_data with fewer than 3 rho values.

A not_enough_data entry of an image experiment names how many of its cells made the delayed
transition (``transitions`` of the image summary).
"""

from __future__ import annotations

import re

from nht.science import stats

PREDICTIONS = ("P1_norm_ordering", "P2_three_regimes", "P3_group_accuracy", "P4_layer_hierarchy",
               "P5_clean_separation", "P6_delay_scaling")
LABELS = {"P1_norm_ordering": "P1 norm ordering", "P2_three_regimes": "P2 three regimes",
          "P3_group_accuracy": "P3 group/clean accuracy", "P4_layer_hierarchy": "P4 layer hierarchy",
          "P5_clean_separation": "P5 clean norm separation", "P6_delay_scaling": "P6 delay scaling"}
VERDICTS = ("holds", "fails", "uncertain", "not_applicable", "not_enough_data")

THRESHOLDS = {
    "modular": {"P1_norm_ordering": 0.8, "P2_three_regimes": 0.8, "P3_group_accuracy": None,
                "P4_layer_hierarchy": 0.8, "P5_clean_separation": 0.8, "P6_delay_scaling": 0.0},
    "image": {"P1_norm_ordering": 0.8, "P2_three_regimes": 0.8, "P3_group_accuracy": 0.8,
              "P4_layer_hierarchy": 0.8, "P5_clean_separation": 0.8, "P6_delay_scaling": 0.0},
}
MIN_N = 3

# The paper's verdicts (arXiv 2603.07323). Per-prediction verdicts are only stated for modular
# arithmetic (all hold) and CIFAR-10 (all but P6); for CelebA and Waterbirds only the totals.
PAPER = {
    "modular": {"label": "modular arithmetic", "holds": 6,
                "per": {p: "holds" for p in PREDICTIONS}},
    "cifar10": {"label": "CIFAR-10", "holds": 5,
                "per": {**{p: "holds" for p in PREDICTIONS}, "P6_delay_scaling": "fails"}},
    "celeba": {"label": "CelebA", "holds": 4, "per": None},
    "waterbirds": {"label": "Waterbirds", "holds": 2, "per": None},
}


# ----------------------------------------------------------------------------- helpers

def _num(v):
    return stats.finite_or_none(v)


def _side(value, threshold, comparison) -> bool:
    # compare at 12 decimals so float noise (a Spearman of 0.7999999999999999) cannot decide
    value = round(value, 12)
    return value >= threshold if comparison == "ge" else value > threshold


def _entry(statistic, threshold, comparison="ge", ci=None, n=None, definition="", detail=None,
           verdict=None, by_ci=False) -> dict:
    """Assemble one scorecard entry. ``point_verdict``: statistic vs threshold; ``ci_verdict``:
    the whole interval vs threshold (``uncertain`` if it straddles). The verdict is ``verdict``
    when given, else the interval verdict (``uncertain`` without an interval) when ``by_ci``,
    else the point verdict."""
    statistic = _num(statistic)
    point = None
    if statistic is not None and threshold is not None:
        point = "holds" if _side(statistic, threshold, comparison) else "fails"
    ci_verdict = None
    if ci is not None and point is not None:
        lo, hi = ci
        ci_verdict = ("holds" if _side(lo, threshold, comparison)
                      else "fails" if not _side(hi, threshold, comparison) else "uncertain")
    if verdict is None:
        if point is None:
            verdict = "not_enough_data"
        elif by_ci:
            verdict = ci_verdict or "uncertain"
        else:
            verdict = point
    return {"statistic": statistic, "threshold": threshold, "verdict": verdict,
            "point_verdict": point,
            "comparison": ">=" if comparison == "ge" else ">", "ci": ci, "ci_verdict": ci_verdict,
            "n": n, "definition": definition, "detail": detail or {}}


def _na(definition: str) -> dict:
    return _entry(None, None, definition=definition, verdict="not_applicable")


def _ned(threshold, definition: str, why: str, n=None, statistic=None, detail=None) -> dict:
    e = _entry(statistic, threshold, n=n, definition=definition, detail=detail,
               verdict="not_enough_data")
    e["detail"] = dict(e["detail"], reason=why)
    return e


def _share_entry(block, key, threshold, definition, n_key="n", ci_key="ci", by_ci=True):
    if not isinstance(block, dict):
        return _ned(threshold, definition, "field missing from the summary")
    n = block.get(n_key) or 0
    detail = {k: v for k, v in block.items() if k not in (key, n_key, ci_key, "definition")}
    if n < MIN_N or _num(block.get(key)) is None:
        return _ned(threshold, definition, f"fewer than {MIN_N} cells", n=n,
                    statistic=block.get(key), detail=detail)
    return _entry(block[key], threshold, ci=block.get(ci_key), n=n, definition=definition,
                  detail=detail, by_ci=by_ci)


# ----------------------------------------------------------------------------- modular

def _shared(s: dict, kind: str = "modular") -> dict:
    """P1, P2, P4, P5, P6 from the science layer's blocks, the same for every domain; P3 is
    not_applicable here and set by the image card."""
    th = THRESHOLDS[kind]
    card = {}
    card["P1_norm_ordering"] = _share_entry(
        s.get("norm_ordering"), "share", th["P1_norm_ordering"],
        "P(V_sc > V_st): squared norm at the fit of a shortcut-reliant cell vs other cells' "
        "generalised solutions at the same lambda")

    ro = s.get("regime_ordering")
    d2 = ("pair-weighted Kendall tau-b of regime rank (weak < transition < suppressed) with "
          "lambda within slices equal in all other settings, and all three present")
    t2 = th["P2_three_regimes"]
    if not isinstance(ro, dict):
        card["P2_three_regimes"] = _ned(t2, d2, "field missing from the summary")
    else:
        detail = {k: ro.get(k) for k in ("counts", "all_present", "n_lambda", "n_pairs",
                                         "n_discordant", "n_slices")}
        if (ro.get("n_lambda") or 0) < 3 or _num(ro.get("tau_b")) is None:
            card["P2_three_regimes"] = _ned(t2, d2, "fewer than 3 lambda values or no slice "
                                            "with two lambdas", n=ro.get("n_slices"),
                                            statistic=ro.get("tau_b"), detail=detail)
        else:
            e = _entry(ro["tau_b"], t2, ci=ro.get("ci"), n=ro.get("n_slices"), definition=d2,
                       detail=detail, by_ci=True)
            if not ro.get("all_present"):
                e["verdict"] = "fails"
                missing = [k for k, v in (ro.get("counts") or {}).items() if not v]
                e["detail"]["reason"] = f"regime class missing: {', '.join(missing)}"
            card["P2_three_regimes"] = e

    card["P3_group_accuracy"] = _na("worst-group/clean accuracy ordering: image experiments only")
    card["P4_layer_hierarchy"] = _share_entry(
        s.get("layer_hierarchy"), "share_readout_max", th["P4_layer_hierarchy"],
        "share of intermediate cells whose readout weight has the largest ln(V_fit/V_final)")
    d5 = ("S = median over transition cells of P(ln V reliant > ln V structured) - P(<) "
          "from min(norm peak, T_fit) to the end; must exceed both nulls' 95th percentiles")
    card["P5_clean_separation"] = _separation_entry(s.get("clean_norm_separation"),
                                                    th["P5_clean_separation"], d5)
    card["P6_delay_scaling"] = _delay_entry(s, th["P6_delay_scaling"])
    return card


def _separation_entry(sep, threshold, definition):
    if not isinstance(sep, dict):
        return _ned(threshold, definition, "field missing from the summary")
    nulls = {k: sep.get(k) for k in ("null_pairing", "null_circular")}
    detail = {"S_spearman": sep.get("S_spearman"), "S_from_peak": sep.get("S_from_peak"),
              "untrusted_cells": len(sep.get("untrusted_cells") or []), **nulls}
    if (sep.get("n") or 0) < MIN_N or _num(sep.get("S")) is None:
        return _ned(threshold, definition, f"fewer than {MIN_N} cells with S", n=sep.get("n"),
                    statistic=sep.get("S"), detail=detail)
    verdict = sep.get("verdict") if sep.get("verdict") in ("holds", "fails") else None
    e = _entry(sep["S"], threshold, ci=sep.get("S_ci"), n=sep.get("n"), definition=definition,
               detail=detail, verdict=verdict)
    if verdict == "fails" and e["point_verdict"] == "holds":
        e["detail"]["reason"] = "S does not exceed a null's 95th percentile"
    return e


def _delay_entry(s, threshold):
    d6 = ("out of sample, known at T_fit: median over cells of relative delay error of the "
          "1/(eta lambda) baseline minus that of the NHT prediction (leave-one-group-out)")
    pred = s.get("prediction")
    law = s.get("delay_law") or {}
    base = s.get("baseline_inverse_eta_lambda") or {}
    rate = (s.get("decay_rate") or {}).get("ratio_to_theory") or {}
    if not isinstance(pred, dict):
        return _ned(threshold, d6, "prediction missing from the summary",
                    detail={"retrospective_r2": law.get("r2")})
    paired = pred.get("paired_difference") or {}
    loo = pred.get("loo_error") or {}
    shift = pred.get("norm_shift") or {}
    detail = {"nht_beats_baseline": pred.get("nht_beats_baseline"),
              "loo_median_error": {k: (v or {}).get("median") for k, v in loo.items()},
              "loo_median_error_ci": {k: (v or {}).get("ci") for k, v in loo.items()},
              "discriminating": pred.get("discriminating"),
              "norm_shift_slope": shift.get("slope"), "norm_shift_ci": shift.get("ci"),
              "norm_shift_verdict": shift.get("verdict"),
              "retrospective_r2": law.get("r2"), "tautology_r2": law.get("tautology_r2"),
              "baseline_r2": base.get("r2"), "paper_r2": 0.971,
              "decay_ratio_to_theory": rate.get("median"),
              "decay_ratio_to_theory_ci": rate.get("ci"),
              "excluded_from_law_fit": law.get("excluded"),
              "n_censored": (s.get("censoring") or {}).get("n_censored")}
    n = paired.get("n") or 0
    if n < MIN_N or _num(paired.get("median")) is None:
        return _ned(threshold, d6, f"fewer than {MIN_N} cells predicted by both", n=n,
                    statistic=paired.get("median"), detail=detail)
    beats = pred.get("nht_beats_baseline")
    verdict = "holds" if beats is True else "fails" if beats is False else "uncertain"
    e = _entry(paired["median"], threshold, comparison="gt", ci=paired.get("ci"), n=n,
               definition=d6, detail=detail, verdict=verdict)
    if not pred.get("discriminating"):
        e["detail"]["reason"] = ("only eta lambda varies at fixed norm: the law and 1/(eta "
                                 "lambda) cannot be separated by these data")
    return e


# ----------------------------------------------------------------------------- image

def _series(by_key: dict | None) -> list[tuple[float, float]]:
    """``{value: [mean, sd, n]}`` (or ``{value: mean}``) -> sorted [(value, mean)]."""
    out = []
    for k, v in (by_key or {}).items():
        x = _num(k)
        m = _num(v[0] if isinstance(v, (list, tuple)) and v else v)
        if x is not None and m is not None:
            out.append((x, m))
    return sorted(out)


def _image(s: dict) -> dict:
    """The shared entries (:func:`_shared`, the same statistics as modular) and P3, which only
    images have; a not_enough_data entry says how many cells made the transition."""
    th = THRESHOLDS["image"]
    card = _shared(s, "image")
    wga = _series(s.get("worst_group_acc"))
    source = "worst_group_acc" if len(wga) >= 3 else "clean_acc_by_strength"
    acc = wga if len(wga) >= 3 else _series(s.get("clean_acc_by_strength"))
    d3 = f"-Spearman(rho, mean {source}) across shortcut strengths (accuracy falls with rho)"
    if len(acc) < 3:
        card["P3_group_accuracy"] = _ned(th["P3_group_accuracy"], d3, "fewer than 3 rho values",
                                         n=len(acc))
    else:
        r = stats.spearman([x for x, _ in acc], [m for _, m in acc])
        card["P3_group_accuracy"] = _entry(None if r is None else -r, th["P3_group_accuracy"],
                                           n=len(acc), definition=d3,
                                           detail={"source": source, "by_rho": dict(acc)})
    why = _transition_reason(s.get("transitions"))
    for key in ("P1_norm_ordering", "P4_layer_hierarchy", "P5_clean_separation", "P6_delay_scaling"):
        if why and card[key]["verdict"] == "not_enough_data":
            card[key]["detail"]["reason"] = f"{why}; {card[key]['detail'].get('reason')}"
    return card


def _transition_reason(t: dict | None) -> str | None:
    """Why an image experiment has no data for P4-P6, in terms of its transitions."""
    if not isinstance(t, dict) or t.get("n_intermediate") is None:
        return None
    n, cells = t["n_intermediate"], t.get("n_cells")
    phases = ", ".join(f"{k} {v}" for k, v in sorted((t.get("regimes") or {}).items()))
    if n == 0:
        return (f"no shortcut-to-shape transition at this scale: 0 of {cells} cells ({phases}); "
                "docs/image_transition_search.md")
    if n < MIN_N:
        return f"only {n} of {cells} cells make the transition ({phases}), fewer than {MIN_N}"
    return None


# ----------------------------------------------------------------------------- public

def build_scorecard(experiment_summary: dict, kind: str | None = None) -> dict:
    """The six entries for one experiment (``kind`` "modular" or "image"; default: the
    summary's ``kind``). See the module docstring for every statistic and threshold."""
    kind = kind or experiment_summary.get("kind")
    if kind == "modular":
        return _shared(experiment_summary, "modular")
    if kind == "image":
        return _image(experiment_summary)
    raise ValueError(f"unknown experiment kind {kind!r} (expected 'modular' or 'image')")


def paper_reference(name: str, exp: dict) -> str | None:
    """Which column of the paper's table an experiment corresponds to (or ``None``)."""
    if exp.get("kind") == "modular":
        return "modular"
    cfg = (exp.get("provenance") or {}).get("config") or exp.get("config") or {}
    text = " ".join(str(x) for x in (cfg.get("dataset"), exp.get("dataset"), name)).lower()
    for key, pat in (("cifar10", r"cifar"), ("celeba", r"celeb"), ("waterbirds", r"waterbird")):
        if re.search(pat, text):
            return key
    return None


def attach_scorecards(summary: dict) -> dict:
    """Add ``scorecard`` (:func:`build_scorecard`) to every modular/image experiment of a merged
    summary (``{"experiments": {...}}``), in place; returns the summary."""
    for exp in summary.get("experiments", {}).values():
        if isinstance(exp, dict) and exp.get("kind") in ("modular", "image"):
            exp["scorecard"] = build_scorecard(exp, exp["kind"])
    return summary


from nht.science.scorecard_render import markdown_to_html, scorecard_html, scorecard_markdown  # noqa: E402,F401
