"""The P1-P6 scorecard: each of the paper's six predictions reduced to one statistic computed
from an experiment's summary, a threshold fixed in advance (:data:`THRESHOLDS`), and a verdict.

Every entry has ``scored`` (false for descriptive entries: the statistic is shown, no verdict is
drawn from it). Verdicts: ``holds``, ``fails``, ``uncertain`` (the 95 % interval straddles the threshold, or there
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
  same lambda (not one cell before and after decay). holds if the BCa interval is >= 0.8 *and*
  the share beats the V-irrelevant null (``norm_ordering.p <= 0.05``: peers' V read at delays
  permuted within fixed-``eta lambda`` strata, :mod:`nht.science.verdict_inputs`); an interval
  >= 0.8 that does not beat the null fails (V fell, but not in step with the transition).
* **P2_three_regimes** -- ``regime_ordering.tau_b``: pair-weighted Kendall tau-b of regime rank
  (weak < transition < suppressed) with lambda within slices; holds if the interval (over slices)
  is >= 0.8 *and* all three classes occur (fails if one is missing); not_enough_data with fewer
  than 3 lambda values.
* **P3_group_accuracy** -- not_applicable (no groups in modular arithmetic).
* **P4_layer_hierarchy** -- ``layer_hierarchy.share_readout_max`` (Wilson interval) >= 0.8.
* **P5_clean_separation** -- ``clean_norm_separation.S``: holds only if S >= 0.8 *and* S is above
  the 95th percentile of both nulls (V paired with another cell's reliance; reliance circularly
  shifted); see :mod:`nht.science.separation`. Where a null's 95th percentile is already 1 (V
  falls monotonically, so any switch time gives S = 1 and not even the law could pass) the entry
  is descriptive: verdict ``not_enough_data``, ``scored`` false, the reason stated.
* **P6_delay_scaling** -- out of sample (:mod:`nht.science.prediction`): median over cells of
  (relative delay error of a null) - (that of the NHT prediction), leave-one-group-out, known at
  ``T_fit``, censored cells scored as bounds, intervals from resampling held-out groups. Two
  nulls: the ``1/(eta lambda)`` fit and, where another group shares the cell's ``eta lambda``,
  the mean delay of those groups (the fair null). holds when NHT beats both (every available
  paired interval above 0, ``prediction.nht_beats_nulls`` true), fails when either interval lies
  at or below 0, uncertain otherwise (or with fewer than 8 groups). The statistic and interval
  shown are those of the binding comparison (the smaller median); both are in ``detail`` with the
  retrospective R^2, the tautology R^2, the baseline's R^2 and the decay rate.
* **norm_shift** -- a headline entry of its own beside P1-P6 (not counted in the "/6"):
  ``prediction.norm_shift.slope``, the within-stratum slope of the delay on ``ln(V_fit)/(2 eta
  lambda)`` at fixed ``eta lambda`` (law 1, ``1/(eta lambda)`` account 0); its verdict is the
  block's own (:func:`nht.science.prediction.norm_shift`): holds ("supports the law") when the
  group-resampled interval lies above 0 and the within-stratum permutation p <= 0.05, fails
  ("contradicts the law") when the interval lies below 1 and includes 0, uncertain otherwise,
  not_enough_data with fewer than 2 strata of >= 2 init scales.

Image experiments: the same P1, P2, P4, P5 and P6 (one science path, :mod:`nht.science.analyse`,
on the image histories with phi = border reliance and the one regime vocabulary of
:mod:`nht.core.events`), plus

* **P3** -- ``-Spearman(rho, accuracy)`` across shortcut strengths rho, with accuracy the mean
  worst-group accuracy (``worst_group_acc``) where the dataset defines groups, else the mean clean
  accuracy (``test_acc_by_rho``): accuracy should fall as the shortcut gets stronger.
  Scored only with >= 5 rho values (:data:`P3_MIN_RHO`; with 3 a random order passes with chance
  1/6): interval from a parametric bootstrap of the per-rho means (``N(mean, sd / sqrt(n))``,
  needs n >= 2 per rho), exact permutation p of the order (share of the orderings of the means
  with ``-Spearman >= `` the observed). holds when the interval is >= 0.8 and p <= 0.05, fails
  when the interval lies below 0.8, uncertain otherwise (or without an interval). With fewer rho
  values the statistic is shown, descriptive only: ``not_enough_data``, ``scored`` false.

A not_enough_data entry of an image experiment names how many of its cells made the delayed
transition (``transitions`` of the image summary).
"""

from __future__ import annotations

import itertools
import re

import numpy as np

from nht.core.io import finite_or_none as _num
from nht.science import stats

PREDICTIONS = ("P1_norm_ordering", "P2_three_regimes", "P3_group_accuracy", "P4_layer_hierarchy",
               "P5_clean_separation", "P6_delay_scaling")
LABELS = {"P1_norm_ordering": "P1 norm ordering", "P2_three_regimes": "P2 three regimes",
          "P3_group_accuracy": "P3 group/clean accuracy", "P4_layer_hierarchy": "P4 layer hierarchy",
          "P5_clean_separation": "P5 clean norm separation", "P6_delay_scaling": "P6 delay scaling"}
#: the headline entries: P1-P6 (the paper's, counted in "holds k/6") and the norm-shift test
HEADLINES = PREDICTIONS + ("norm_shift",)
LABELS["norm_shift"] = "norm shift at fixed ηλ"
VERDICTS = ("holds", "fails", "uncertain", "not_applicable", "not_enough_data")
P3_MIN_RHO = 5
ALPHA = 0.05

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
            "scored": verdict not in ("not_applicable", "not_enough_data"), "point_verdict": point,
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
    card["P1_norm_ordering"] = _norm_ordering_entry(s.get("norm_ordering"), th["P1_norm_ordering"])

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
    card["norm_shift"] = _norm_shift_entry(s)
    return card


def _norm_ordering_entry(no, threshold):
    d1 = ("P(V_sc > V_st): squared norm at the fit of a shortcut-reliant cell vs other cells' "
          "generalised solutions at the same lambda; must beat the null where V is read at "
          "delays permuted within fixed-eta-lambda strata (p <= 0.05)")
    e = _share_entry(no, "share", threshold, d1)
    if not isinstance(no, dict) or e["verdict"] == "not_enough_data":
        return e
    p = _num(no.get("p"))
    e["detail"]["p_vs_null"] = p
    if e["verdict"] == "holds" and (p is None or p > ALPHA):
        e["verdict"] = "fails"
        e["detail"]["reason"] = (f"the share does not beat the V-irrelevant null (p = "
                                 f"{'–' if p is None else f'{p:.3g}'} > {ALPHA}): V fell after the "
                                 "fit, but not in step with the transition")
    return e


def _separation_entry(sep, threshold, definition):
    if not isinstance(sep, dict):
        return _ned(threshold, definition, "field missing from the summary")
    nulls = {k: sep.get(k) for k in ("null_pairing", "null_circular")}
    detail = {"S_spearman": sep.get("S_spearman"), "S_from_peak": sep.get("S_from_peak"),
              "untrusted_cells": len(sep.get("untrusted_cells") or []), **nulls}
    if (sep.get("n") or 0) < MIN_N or _num(sep.get("S")) is None:
        return _ned(threshold, definition, f"fewer than {MIN_N} cells with S", n=sep.get("n"),
                    statistic=sep.get("S"), detail=detail)
    if sep.get("verdict") == "descriptive":
        e = _ned(threshold, definition, sep.get("reason") or "descriptive only", n=sep.get("n"),
                 statistic=sep.get("S"), detail=detail)
        return e
    verdict = sep.get("verdict") if sep.get("verdict") in ("holds", "fails") else None
    e = _entry(sep["S"], threshold, ci=sep.get("S_ci"), n=sep.get("n"), definition=definition,
               detail=detail, verdict=verdict)
    if verdict == "fails" and e["point_verdict"] == "holds":
        e["detail"]["reason"] = "S does not exceed a null's 95th percentile"
    return e


def _delay_entry(s, threshold):
    d6 = ("out of sample, known at T_fit: median over cells of relative delay error of a null "
          "(1/(eta lambda) fit; same-eta-lambda mean of other groups) minus that of the NHT "
          "prediction (leave-one-group-out, censored cells as bounds, groups resampled); must "
          "beat both")
    pred = s.get("prediction")
    law = s.get("delay_law") or {}
    base = s.get("baseline_inverse_eta_lambda") or {}
    rate = (s.get("decay_rate") or {}).get("ratio_to_theory") or {}
    if not isinstance(pred, dict):
        return _ned(threshold, d6, "prediction missing from the summary",
                    detail={"retrospective_r2": law.get("r2")})
    paired = pred.get("paired_difference") or {}
    fair = pred.get("nht_vs_same_eta_lambda_mean") or {}
    loo = pred.get("loo_error") or {}
    shift = pred.get("norm_shift") or {}
    detail = {"nht_beats_baseline": pred.get("nht_beats_baseline"),
              "nht_beats_same_eta_lambda_mean": pred.get("nht_beats_same_eta_lambda_mean"),
              "vs_inverse_eta_lambda": {k: paired.get(k) for k in ("median", "ci", "n", "n_groups")},
              "vs_same_eta_lambda_mean": {k: fair.get(k) for k in ("median", "ci", "n", "n_groups")},
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
    comps = [c for c in (paired, fair) if (c.get("n") or 0) > 0 and _num(c.get("median")) is not None]
    binding = min(comps, key=lambda c: c["median"]) if comps else paired
    n = binding.get("n") or 0
    if n < MIN_N or _num(binding.get("median")) is None:
        return _ned(threshold, d6, f"fewer than {MIN_N} cells predicted by both", n=n,
                    statistic=binding.get("median"), detail=detail)
    beats = pred.get("nht_beats_nulls", pred.get("nht_beats_baseline"))
    verdict = "holds" if beats is True else "fails" if beats is False else "uncertain"
    detail["binding_null"] = ("same_eta_lambda_mean" if binding is fair else "inverse_eta_lambda")
    e = _entry(binding["median"], threshold, comparison="gt", ci=binding.get("ci"), n=n,
               definition=d6, detail=detail, verdict=verdict)
    if not pred.get("discriminating"):
        e["detail"]["reason"] = ("only eta lambda varies at fixed norm: the law and 1/(eta "
                                 "lambda) cannot be separated by these data")
    return e


def _norm_shift_entry(s):
    d = ("within-stratum slope of the delay on ln(V_fit)/(2 eta lambda) at fixed eta lambda "
         "(law 1, 1/(eta lambda) account 0); holds = supports the law: group-resampled interval "
         "above 0 and permutation p <= 0.05; fails = contradicts: interval below 1 and including 0")
    shift = (s.get("prediction") or {}).get("norm_shift")
    if not isinstance(shift, dict):
        return _ned(None, d, "prediction.norm_shift missing from the summary")
    detail = {k: shift.get(k) for k in ("p", "n_strata", "n_groups", "n_cells",
                                        "n_censored_in_strata", "consistent_with_theory",
                                        "reading", "theory_slope", "null_slope", "per_stratum")}
    verdict = shift.get("verdict")
    if verdict not in ("holds", "fails", "uncertain"):
        return _ned(0.0, d, shift.get("reason") or "fewer than 2 strata", n=shift.get("n_strata"),
                    statistic=shift.get("slope"), detail=detail)
    e = _entry(shift.get("slope"), 0.0, comparison="gt", ci=shift.get("ci"),
               n=shift.get("n_strata"), definition=d, detail=detail, verdict=verdict)
    if shift.get("reason"):
        e["detail"]["reason"] = shift["reason"]
    return e


def _p3_entry(acc: list[tuple[float, float, float | None, int | None]], source: str, threshold,
              n_boot: int = 2000, seed: int = 0) -> dict:
    """P3 from ``[(rho, mean, sd, n)]`` (module docstring)."""
    d3 = f"-Spearman(rho, mean {source}) across shortcut strengths (accuracy falls with rho)"
    rho = np.array([a[0] for a in acc], float)
    mean = np.array([a[1] for a in acc], float)
    r = stats.spearman(rho, mean)
    stat = None if r is None else -r
    detail = {"source": source, "by_rho": {x: m for x, m, _, _ in acc}, "n_rho": len(acc)}
    if len(acc) < 3:
        return _ned(threshold, d3, "fewer than 3 rho values", n=len(acc), detail=detail)
    if len(acc) < P3_MIN_RHO:
        chance = np.mean([-(stats.spearman(rho, mean[list(q)]) or 0.0) >= threshold - 1e-12
                          for q in itertools.permutations(range(len(acc)))])
        return _ned(threshold, d3, f"{len(acc)} rho values, fewer than {P3_MIN_RHO}: descriptive "
                    f"only (a random order reaches {threshold} with chance {chance:.2g})",
                    n=len(acc), statistic=stat, detail=detail)
    if stat is None:
        return _ned(threshold, d3, "Spearman undefined (constant accuracy)", n=len(acc),
                    detail=detail)
    perms = (itertools.permutations(range(len(acc))) if len(acc) <= 8 else
             (np.random.default_rng(seed).permutation(len(acc)) for _ in range(20000)))
    null = []
    for perm in perms:
        v = stats.spearman(rho, mean[list(perm)])
        null.append(-(v if v is not None else 0.0))
    null = np.asarray(null)
    p = float((null >= stat - 1e-12).mean())
    detail["p_order"] = p
    ci = None
    sd = [a[2] for a in acc]
    n = [a[3] for a in acc]
    if all(x is not None for x in sd) and all(k is not None and k >= 2 for k in n):
        rng = np.random.default_rng(seed)
        se = np.array(sd, float) / np.sqrt(np.array(n, float))
        draws = []
        for _ in range(n_boot):
            v = stats.spearman(rho, rng.normal(mean, se))
            draws.append(-(v if v is not None else 0.0))
        ci = [float(q) for q in np.quantile(draws, [0.025, 0.975])]
    else:
        detail["reason"] = "no interval: a rho value has fewer than 2 cells"
    if ci is None:
        verdict = "uncertain"
    elif _side(ci[0], threshold, "ge") and p <= ALPHA:
        verdict = "holds"
    elif not _side(ci[1], threshold, "ge"):
        verdict = "fails"
    else:
        verdict = "uncertain"
        if p > ALPHA:
            detail["reason"] = f"order permutation p = {p:.3g} > {ALPHA}"
    return _entry(stat, threshold, ci=ci, n=len(acc), definition=d3, detail=detail,
                  verdict=verdict)


# ----------------------------------------------------------------------------- image

def _series(by_key: dict | None) -> list[tuple]:
    """``{value: [mean, sd, n]}`` (or ``{value: mean}``) -> sorted [(value, mean, sd, n)]
    (``sd``, ``n`` ``None`` when not given)."""
    out = []
    for k, v in (by_key or {}).items():
        x = _num(k)
        seq = isinstance(v, (list, tuple))
        m = _num(v[0] if seq and v else v)
        sd = _num(v[1]) if seq and len(v) > 2 else None
        n = int(v[2]) if seq and len(v) > 2 and _num(v[2]) is not None else None
        if x is not None and m is not None:
            out.append((x, m, sd, n))
    return sorted(out)


def _image(s: dict) -> dict:
    """The shared entries (:func:`_shared`, the same statistics as modular) and P3, which only
    images have; a not_enough_data entry says how many cells made the transition."""
    th = THRESHOLDS["image"]
    card = _shared(s, "image")
    wga = _series(s.get("worst_group_acc"))
    source = "worst_group_acc" if len(wga) >= 3 else "test_acc_by_rho"
    acc = wga if len(wga) >= 3 else _series(s.get("test_acc_by_rho"))
    card["P3_group_accuracy"] = _p3_entry(acc, source, th["P3_group_accuracy"])
    why = _transition_reason(s.get("transitions"))
    for key in ("P1_norm_ordering", "P4_layer_hierarchy", "P5_clean_separation", "P6_delay_scaling",
                "norm_shift"):
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
    """The headline entries (:data:`HEADLINES`: P1-P6 and ``norm_shift``) for one experiment (``kind`` "modular" or "image"; default: the
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
    cfg = exp.get("config") or {}
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

