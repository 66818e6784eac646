"""The P1-P6 scorecard: each of the paper's six predictions reduced to one statistic computed
from an experiment's summary, a threshold fixed in advance (:data:`THRESHOLDS`), and a verdict.

Verdicts: ``holds`` (statistic on the predicted side of the threshold), ``fails``,
``not_applicable`` (the prediction does not concern this kind of experiment) and
``not_enough_data`` (a required field is missing/undefined, or too few cells/values to judge).
Each entry is ``{statistic, threshold, verdict, comparison, ci, ci_verdict, n, definition,
detail}``; ``ci`` is a 95 % interval of the statistic where one exists and ``ci_verdict`` says
whether the whole interval lies on one side of the threshold (``holds`` / ``fails``) or straddles
it (``uncertain``). The verdict itself uses the point estimate. No threshold is ever tuned to data.

Modular experiments (fields from :func:`nht.science.analyse_modular`):

* **P1_norm_ordering** -- ``norm_ordering.share``: share of ``delayed`` cells with
  ``V_mem > V_final`` (shortcut-phase squared norm above the structured one; Wilson interval).
  holds if >= 0.8; not_enough_data below 3 cells.
* **P2_three_regimes** -- ``regime_ordering.concordance``: 1 - share of discordant pairs of cells
  that differ only in lambda (weak ``shortcut_persists`` < transition ``delayed``/``immediate`` <
  suppressed ``no_fit``). holds if >= 0.8 *and* all three classes occur; fails if one is missing;
  not_enough_data with fewer than 3 lambda values or no comparable pair.
* **P3_group_accuracy** -- not_applicable (no groups in modular arithmetic).
* **P4_layer_hierarchy** -- ``layer_hierarchy.share_readout_max``: share of ``delayed`` cells whose
  readout weight has the largest contraction ``ln(V_mem,l / V_final,l)`` of all weight tensors.
  holds if >= 0.8; not_enough_data below 3 cells.
* **P5_clean_separation** -- ``clean_norm_separation.S`` (see :mod:`nht.science`). holds if >= 0.8;
  not_enough_data below 3 cells.
* **P6_delay_scaling** -- ``delay_law.r2``: R^2 of ``delay = k T_pred + b``. holds if >= 0.9 (the
  paper reports R^2 = 0.971); not_enough_data below 3 cells. The ``1/lambda`` check is reported in
  ``detail``: the baseline's R^2 and the exponent ``s`` of ``delay ∝ (1/(eta lambda))^s`` with its
  interval (theory: 1).

Image experiments (fields from ``nht.images.summary``):

* **P1** -- ``norm_ratio``: mean ``V_final`` at the smallest lambda / at the largest. holds if > 1.
* **P2** -- Spearman correlation between lambda and mean decay-from-peak (``decay_from_peak``):
  weak -> intermediate -> strong along lambda. holds if >= 0.8 and ``regimes`` has
  ``weak``, ``intermediate`` and ``strong`` cells; fails if one is missing; not_enough_data with
  fewer than 3 lambda values.
* **P3** -- ``-Spearman(rho, accuracy)`` across shortcut strengths rho, with accuracy the mean
  worst-group accuracy (``worst_group_acc``) where the dataset defines groups, else the mean clean
  accuracy (``clean_acc_by_strength``): accuracy should fall as the shortcut gets stronger. holds
  if >= 0.8; not_enough_data with fewer than 3 rho values.
* **P4** -- ``layer_hierarchy.share_readout_max`` when the summary has it (same definition as
  modular), else not_enough_data.
* **P5** -- ``clean_norm_separation.S`` when present (``phi`` = shortcut reliance), else
  not_enough_data.
* **P6** -- ``delay_law.r2`` when present, else not_enough_data.
"""

from __future__ import annotations

import math
import re

from nht import stats

PREDICTIONS = ("P1_norm_ordering", "P2_three_regimes", "P3_group_accuracy", "P4_layer_hierarchy",
               "P5_clean_separation", "P6_delay_scaling")
LABELS = {"P1_norm_ordering": "P1 norm ordering", "P2_three_regimes": "P2 three regimes",
          "P3_group_accuracy": "P3 group/clean accuracy", "P4_layer_hierarchy": "P4 layer hierarchy",
          "P5_clean_separation": "P5 clean norm separation", "P6_delay_scaling": "P6 delay scaling"}
VERDICTS = ("holds", "fails", "not_applicable", "not_enough_data")

THRESHOLDS = {
    "modular": {"P1_norm_ordering": 0.8, "P2_three_regimes": 0.8, "P3_group_accuracy": None,
                "P4_layer_hierarchy": 0.8, "P5_clean_separation": 0.8, "P6_delay_scaling": 0.9},
    "image": {"P1_norm_ordering": 1.0, "P2_three_regimes": 0.8, "P3_group_accuracy": 0.8,
              "P4_layer_hierarchy": 0.8, "P5_clean_separation": 0.8, "P6_delay_scaling": 0.9},
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


def _entry(statistic, threshold, comparison="ge", ci=None, n=None, definition="", detail=None,
           verdict=None) -> dict:
    """Assemble one scorecard entry; the verdict follows from statistic vs threshold unless given."""
    statistic = _num(statistic)
    if verdict is None:
        if statistic is None:
            verdict = "not_enough_data"
        else:
            # compare at 12 decimals so float noise (a Spearman of 0.7999999999999999) cannot
            # decide a verdict
            value = round(statistic, 12)
            ok = value >= threshold if comparison == "ge" else value > threshold
            verdict = "holds" if ok else "fails"
    ci_verdict = None
    if ci is not None and verdict in ("holds", "fails") and threshold is not None:
        lo, hi = ci
        above_lo = lo >= threshold if comparison == "ge" else lo > threshold
        above_hi = hi >= threshold if comparison == "ge" else hi > threshold
        ci_verdict = "holds" if above_lo else ("fails" if not above_hi else "uncertain")
    return {"statistic": statistic, "threshold": threshold, "verdict": verdict,
            "comparison": ">=" if comparison == "ge" else ">", "ci": ci, "ci_verdict": ci_verdict,
            "n": n, "definition": definition, "detail": detail or {}}


def _na(definition: str) -> dict:
    return _entry(None, None, definition=definition, verdict="not_applicable")


def _ned(threshold, definition: str, why: str, n=None, statistic=None, detail=None) -> dict:
    e = _entry(statistic, threshold, n=n, definition=definition, detail=detail,
               verdict="not_enough_data")
    e["detail"] = dict(e["detail"], reason=why)
    return e


def _share_entry(block, key, threshold, definition, n_key="n", ci_key="ci"):
    if not isinstance(block, dict):
        return _ned(threshold, definition, "field missing from the summary")
    n = block.get(n_key) or 0
    detail = {k: v for k, v in block.items() if k not in (key, n_key, ci_key, "definition")}
    if n < MIN_N or _num(block.get(key)) is None:
        return _ned(threshold, definition, f"fewer than {MIN_N} cells", n=n,
                    statistic=block.get(key), detail=detail)
    return _entry(block[key], threshold, ci=block.get(ci_key), n=n, definition=definition,
                  detail=detail)


# ----------------------------------------------------------------------------- modular

def _modular(s: dict) -> dict:
    th = THRESHOLDS["modular"]
    card = {}
    card["P1_norm_ordering"] = _share_entry(
        s.get("norm_ordering"), "share", th["P1_norm_ordering"],
        "share of delayed cells with V_mem > V_final (V = squared norm)")

    ro = s.get("regime_ordering")
    d2 = ("concordance of regimes with lambda within slices equal in all other settings "
          "(weak < transition < suppressed), and all three present")
    t2 = th["P2_three_regimes"]
    if not isinstance(ro, dict):
        card["P2_three_regimes"] = _ned(t2, d2, "field missing from the summary")
    else:
        detail = {k: ro.get(k) for k in ("counts", "all_present", "n_lambda", "n_pairs",
                                         "n_discordant", "median_lambda")}
        if (ro.get("n_lambda") or 0) < 3 or _num(ro.get("concordance")) is None:
            card["P2_three_regimes"] = _ned(t2, d2, "fewer than 3 lambda values or no comparable "
                                            "pair", n=ro.get("n_pairs"),
                                            statistic=ro.get("concordance"), detail=detail)
        else:
            e = _entry(ro["concordance"], t2, n=ro.get("n_pairs"), definition=d2, detail=detail)
            if not ro.get("all_present"):
                e["verdict"] = "fails"
                missing = [k for k, v in (ro.get("counts") or {}).items() if not v]
                e["detail"]["reason"] = f"regime class missing: {', '.join(missing)}"
            card["P2_three_regimes"] = e

    card["P3_group_accuracy"] = _na("worst-group/clean accuracy ordering: image experiments only")
    card["P4_layer_hierarchy"] = _share_entry(
        s.get("layer_hierarchy"), "share_readout_max", th["P4_layer_hierarchy"],
        "share of delayed cells whose readout weight has the largest ln(V_mem/V_final)")

    sep = s.get("clean_norm_separation")
    d5 = ("S = median over transition cells of P(ln V reliant > ln V structured) - P(<) "
          "from min(norm peak, T_mem) to the end")
    card["P5_clean_separation"] = _separation_entry(sep, th["P5_clean_separation"], d5)
    card["P6_delay_scaling"] = _delay_entry(s, th["P6_delay_scaling"])
    return card


def _separation_entry(sep, threshold, definition):
    if not isinstance(sep, dict):
        return _ned(threshold, definition, "field missing from the summary")
    detail = {"S_spearman": sep.get("S_spearman"), "S_from_peak": sep.get("S_from_peak"),
              "untrusted_cells": len(sep.get("untrusted_cells") or [])}
    if (sep.get("n") or 0) < MIN_N or _num(sep.get("S")) is None:
        return _ned(threshold, definition, f"fewer than {MIN_N} cells with S", n=sep.get("n"),
                    statistic=sep.get("S"), detail=detail)
    return _entry(sep["S"], threshold, ci=sep.get("S_ci"), n=sep.get("n"), definition=definition,
                  detail=detail)


def _delay_entry(s, threshold):
    d6 = "R^2 of delay = k T_pred + b, T_pred = ln(V_mem/V_final)/(2 eta lambda)"
    law = s.get("delay_law")
    if not isinstance(law, dict):
        return _ned(threshold, d6, "field missing from the summary")
    base = s.get("baseline_inverse_eta_lambda") or {}
    expo = s.get("scaling_exponent") or {}
    eci = expo.get("k_ci")
    detail = {"k": law.get("k"), "k_ci": law.get("k_ci"), "b": law.get("b"),
              "b_ci": law.get("b_ci"), "paper_r2": 0.971,
              "baseline_r2": base.get("r2"), "baseline_r2_ci": base.get("r2_ci"),
              "inverse_lambda_exponent": expo.get("k"), "inverse_lambda_exponent_ci": eci,
              "inverse_lambda_consistent": (None if not eci else bool(eci[0] <= 1 <= eci[1]))}
    if (law.get("n") or 0) < MIN_N or _num(law.get("r2")) is None:
        return _ned(threshold, d6, f"fewer than {MIN_N} cells with a delay", n=law.get("n"),
                    statistic=law.get("r2"), detail=detail)
    return _entry(law["r2"], threshold, ci=law.get("r2_ci"), n=law.get("n"), definition=d6,
                  detail=detail)


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
    th = THRESHOLDS["image"]
    card = {}
    d1 = "norm_ratio = mean V_final at the smallest lambda / at the largest lambda"
    card["P1_norm_ordering"] = (
        _entry(s["norm_ratio"], th["P1_norm_ordering"], comparison="gt", definition=d1,
               detail={"norm_ratio_detail": s.get("norm_ratio_detail")})
        if _num(s.get("norm_ratio")) is not None
        else _ned(th["P1_norm_ordering"], d1, "norm_ratio missing (needs >= 2 lambda values)"))

    d2 = "Spearman(lambda, mean decay from peak %), and weak/intermediate/strong all present"
    series = _series(s.get("decay_from_peak"))
    regimes = s.get("regimes") or {}
    counts = {k: regimes.get(k, 0) for k in ("weak", "intermediate", "strong")}
    if len(series) < 3 or not regimes:
        card["P2_three_regimes"] = _ned(th["P2_three_regimes"], d2,
                                        "fewer than 3 lambda values or no regime counts",
                                        n=len(series), detail={"counts": counts})
    else:
        rho = stats.spearman([x for x, _ in series], [m for _, m in series])
        e = _entry(rho, th["P2_three_regimes"], n=len(series), definition=d2,
                   detail={"counts": counts})
        if e["verdict"] == "holds" and not all(counts.values()):
            e["verdict"] = "fails"
            e["detail"]["reason"] = ("regime missing: "
                                     + ", ".join(k for k, v in counts.items() if not v))
        card["P2_three_regimes"] = e

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
    card["P4_layer_hierarchy"] = _share_entry(
        s.get("layer_hierarchy"), "share_readout_max", th["P4_layer_hierarchy"],
        "share of transition cells whose readout layer contracts most")
    card["P5_clean_separation"] = _separation_entry(
        s.get("clean_norm_separation"), th["P5_clean_separation"],
        "S with phi = shortcut reliance (nht.science.image_clean_norm_separation)")
    card["P6_delay_scaling"] = _delay_entry(s, th["P6_delay_scaling"])
    return card


# ----------------------------------------------------------------------------- public

def build_scorecard(experiment_summary: dict, kind: str | None = None) -> dict:
    """The six entries for one experiment (``kind`` "modular" or "image"; default: the
    summary's ``kind``). See the module docstring for every statistic and threshold."""
    kind = kind or experiment_summary.get("kind")
    if kind == "modular":
        return _modular(experiment_summary)
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


def _fmt(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def _cell_text(e: dict) -> str:
    v = e["verdict"]
    if v in ("not_applicable", "not_enough_data"):
        return v.replace("_", " ")
    return f"**{v}** ({_fmt(e['statistic'])} {e['comparison']} {_fmt(e['threshold'])}?)"


def scorecard_markdown(summary: dict) -> str:
    """Render ``results/scorecard.md``: measured verdicts of every experiment beside the paper's.

    ``summary`` is the merged ``results/summary.json`` (``{"experiments": {name: {...}}}``) or its
    ``experiments`` mapping. An experiment without a ``scorecard`` gets one built here.
    """
    exps = summary.get("experiments", summary)
    cards = {}
    for name, exp in exps.items():
        if not isinstance(exp, dict) or exp.get("kind") not in ("modular", "image"):
            continue
        cards[name] = exp.get("scorecard") or build_scorecard(exp, exp["kind"])
    names = list(cards)
    lines = ["# NHT scorecard: measured here vs the paper (arXiv 2603.07323)", "",
             "Every measured verdict is computed from the data by `nht.scorecard` with a threshold "
             "fixed in advance (shown as `statistic >= threshold?`); see "
             "`workflow/report/science.rst` for the estimators. The paper's verdicts are given "
             "by hand; for CelebA and Waterbirds it states only how many predictions hold.", "",
             "## Measured", ""]
    head = ["prediction"] + [f"{n} ({exps[n]['kind']})" for n in names]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in PREDICTIONS:
        lines.append("| " + " | ".join([LABELS[p]] + [_cell_text(cards[n][p]) for n in names]) + " |")
    lines.append("| **holds** | " + " | ".join(
        f"{sum(cards[n][p]['verdict'] == 'holds' for p in PREDICTIONS)}/6" for n in names) + " |")
    lines += ["", "## Paper", ""]
    phead = ["prediction"] + [PAPER[k]["label"] for k in PAPER]
    lines += ["| " + " | ".join(phead) + " |", "|" + "---|" * len(phead)]
    for p in PREDICTIONS:
        row = [LABELS[p]] + [(PAPER[k]["per"] or {}).get(p, "not stated") for k in PAPER]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("| **holds** | " + " | ".join(f"{PAPER[k]['holds']}/6" for k in PAPER) + " |")
    lines += ["", "## Differences from the paper", ""]
    any_ref = False
    for n in names:
        ref = paper_reference(n, exps[n])
        measured = sum(cards[n][p]["verdict"] == "holds" for p in PREDICTIONS)
        if ref is None:
            lines.append(f"- `{n}`: no counterpart in the paper; measured {measured}/6 hold.")
            continue
        any_ref = True
        paper = PAPER[ref]
        diffs = []
        if paper["per"]:
            for p in PREDICTIONS:
                if cards[n][p]["verdict"] != paper["per"][p]:
                    diffs.append(f"{LABELS[p]}: measured {cards[n][p]['verdict'].replace('_', ' ')}, "
                                 f"paper {paper['per'][p]}")
        flag = "same count" if measured == paper["holds"] else "**differs**"
        lines.append(f"- `{n}` vs paper {paper['label']}: measured {measured}/6 hold, paper "
                     f"{paper['holds']}/6 ({flag})" + (": " + "; ".join(diffs) if diffs else "."))
    if not names:
        lines.append("- no experiment to score.")
    elif not any_ref:
        lines.append("- no measured experiment maps to a column of the paper's table.")
    for n in names:
        lines += ["", f"## `{n}` in detail", "",
                  "| prediction | statistic | 95% CI | threshold | verdict | CI says | n | definition |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in PREDICTIONS:
            e = cards[n][p]
            ci = "–" if not e.get("ci") else f"[{_fmt(e['ci'][0])}, {_fmt(e['ci'][1])}]"
            reason = (e.get("detail") or {}).get("reason")
            definition = e.get("definition", "") + (f" ({reason})" if reason else "")
            lines.append(f"| {LABELS[p]} | {_fmt(e['statistic'])} | {ci} | "
                         f"{e['comparison'] if e['threshold'] is not None else ''} "
                         f"{_fmt(e['threshold'])} | {e['verdict'].replace('_', ' ')} | "
                         f"{e.get('ci_verdict') or '–'} | {_fmt(e.get('n'))} | {definition} |")
    return "\n".join(lines) + "\n"


def _inline_html(text: str) -> str:
    import html as _html
    text = _html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def markdown_to_html(markdown: str, title: str = "NHT scorecard") -> str:
    """A self-contained HTML page of :func:`scorecard_markdown`'s output (headings, paragraphs,
    bullet lists and pipe tables only -- the constructs that function writes)."""
    import html as _html
    body, table, items = [], [], []

    def flush():
        if table:
            rows = [r for r in table if not re.fullmatch(r"\|?(\s*-+\s*\|)+\s*", r)]
            cells = [[c.strip() for c in r.strip().strip("|").split(" | ")] for r in rows]
            out = ["<table>", "<tr>" + "".join(f"<th>{_inline_html(c)}</th>" for c in cells[0])
                   + "</tr>"]
            out += ["<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>"
                    for r in cells[1:]]
            body.append("\n".join(out + ["</table>"]))
            table.clear()
        if items:
            body.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        if line.startswith("- "):
            items.append(line[2:])
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline_html(line[level:].strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{_inline_html(line)}</p>")
    flush()
    style = ("body{font-family:sans-serif;font-size:13px;margin:1em}"
             "table{border-collapse:collapse;margin:0.5em 0}"
             "td,th{border:1px solid #bbb;padding:3px 6px;text-align:left;vertical-align:top}"
             "th{background:#eee}")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{_html.escape(title)}"
            f"</title><style>{style}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def scorecard_html(summary: dict) -> str:
    """:func:`scorecard_markdown` as a self-contained HTML page (for the Snakemake report)."""
    return markdown_to_html(scorecard_markdown(summary))


def attach_scorecards(summary: dict) -> dict:
    """Add ``scorecard`` (:func:`build_scorecard`) to every modular/image experiment of a merged
    summary (``{"experiments": {...}}``), in place; returns the summary."""
    for exp in summary.get("experiments", {}).values():
        if isinstance(exp, dict) and exp.get("kind") in ("modular", "image"):
            exp["scorecard"] = build_scorecard(exp, exp["kind"])
    return summary
