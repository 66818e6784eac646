"""Rendering of the P1-P6 scorecards (:mod:`nht.science.scorecard`, which never imports this
module): ``results/scorecard.md`` and its HTML page."""

from __future__ import annotations

import html
import re

import pandas as pd

from nht.science import scorecard as sc


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
    if v == "not_enough_data" and e.get("statistic") is not None:
        return f"not scored ({_fmt(e['statistic'])})"
    if v in ("not_applicable", "not_enough_data"):
        return v.replace("_", " ")
    return f"**{v}** ({_fmt(e['statistic'])} {e['comparison']} {_fmt(e['threshold'])}?)"


def _verdict_text(e: dict) -> str:
    if e["verdict"] == "not_enough_data" and e.get("statistic") is not None:
        return "not scored"
    return e["verdict"].replace("_", " ")


def _table(head: list[str], rows: list[list[str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=head)


def scorecard_blocks(summary: dict) -> list[tuple]:
    """The scorecard as blocks: ``("h", level, text)``, ``("p", text)``, ``("ul", [items])`` and
    ``("table", DataFrame)``, in Markdown inline syntax (``**bold**``, `` `code` ``); rendered by
    :func:`scorecard_markdown` and :func:`scorecard_html`.

    ``summary`` is the merged ``results/summary.json`` (``{"experiments": {name: {...}}}``) or its
    ``experiments`` mapping. An experiment without a ``scorecard`` gets one built here.
    """
    exps = summary.get("experiments", summary)
    cards = {}
    for name, exp in exps.items():
        if not isinstance(exp, dict) or exp.get("kind") not in ("modular", "image"):
            continue
        cards[name] = exp.get("scorecard") or sc.build_scorecard(exp, exp["kind"])
    names = list(cards)
    blocks: list[tuple] = [
        ("h", 1, "NHT scorecard: measured here vs the paper (arXiv 2603.07323)"),
        ("p", "Every measured verdict is computed from the data by `nht.science.scorecard` with a threshold "
              "fixed in advance (shown as `statistic >= threshold?`). A modular verdict holds only "
              "when the whole 95 % interval lies on the predicted side (`uncertain` when it "
              "straddles, or below 8 units, where no interval is computed); P1 and P5 must also beat "
              "nulls where V is unrelated to the transition, P6 is an out-of-sample comparison with "
              "the 1/(ηλ) fit and the same-ηλ mean of other groups, and the norm shift at fixed ηλ "
              "(the law's own discriminating prediction, slope 1 vs 0) is a headline of its own, "
              "not counted in the /6. `not scored (x)`: a descriptive statistic; see "
              "`workflow/report/science.rst` for the estimators. The paper's verdicts are given "
              "by hand; for CelebA and Waterbirds it states only how many predictions hold."),
        ("h", 2, "Measured")]
    rows = [[sc.LABELS[p]] + [_cell_text(cards[n][p]) for n in names] for p in sc.PREDICTIONS]
    rows.append(["**holds**"] + [f"{sum(cards[n][p]['verdict'] == 'holds' for p in sc.PREDICTIONS)}/6"
                                 for n in names])
    rows.append([sc.LABELS["norm_shift"]] + [_cell_text(cards[n]["norm_shift"]) if "norm_shift" in cards[n]
                                             else "–" for n in names])
    blocks.append(("table", _table(["prediction"] + [f"{n} ({exps[n]['kind']})" for n in names], rows)))
    blocks.append(("h", 2, "Paper"))
    rows = [[sc.LABELS[p]] + [(sc.PAPER[k]["per"] or {}).get(p, "not stated") for k in sc.PAPER]
            for p in sc.PREDICTIONS]
    rows.append(["**holds**"] + [f"{sc.PAPER[k]['holds']}/6" for k in sc.PAPER])
    blocks.append(("table", _table(["prediction"] + [sc.PAPER[k]["label"] for k in sc.PAPER], rows)))
    blocks.append(("h", 2, "Differences from the paper"))
    items, any_ref = [], False
    for n in names:
        ref = sc.paper_reference(n, exps[n])
        measured = sum(cards[n][p]["verdict"] == "holds" for p in sc.PREDICTIONS)
        if ref is None:
            items.append(f"`{n}`: no counterpart in the paper; measured {measured}/6 hold.")
            continue
        any_ref = True
        paper = sc.PAPER[ref]
        diffs = []
        if paper["per"]:
            for p in sc.PREDICTIONS:
                if cards[n][p]["verdict"] != paper["per"][p]:
                    diffs.append(f"{sc.LABELS[p]}: measured {cards[n][p]['verdict'].replace('_', ' ')}, "
                                 f"paper {paper['per'][p]}")
        flag = "same count" if measured == paper["holds"] else "**differs**"
        items.append(f"`{n}` vs paper {paper['label']}: measured {measured}/6 hold, paper "
                     f"{paper['holds']}/6 ({flag})" + (": " + "; ".join(diffs) if diffs else "."))
    if not names:
        items.append("no experiment to score.")
    elif not any_ref:
        items.append("no measured experiment maps to a column of the paper's table.")
    blocks.append(("ul", items))
    for n in names:
        blocks.append(("h", 2, f"`{n}` in detail"))
        rows = []
        for p in sc.HEADLINES:
            if p not in cards[n]:
                continue
            e = cards[n][p]
            ci = "–" if not e.get("ci") else f"[{_fmt(e['ci'][0])}, {_fmt(e['ci'][1])}]"
            reason = (e.get("detail") or {}).get("reason")
            definition = e.get("definition", "") + (f" ({reason})" if reason else "")
            rows.append([sc.LABELS[p], _fmt(e["statistic"]), ci,
                         f"{e['comparison'] if e['threshold'] is not None else ''} {_fmt(e['threshold'])}",
                         _verdict_text(e), e.get("ci_verdict") or "–", _fmt(e.get("n")), definition])
        blocks.append(("table", _table(["prediction", "statistic", "95% CI", "threshold", "verdict", "CI says",
                                        "n", "definition"], rows)))
        note = _cells_note(exps[n])
        if note:
            blocks.append(("p", note))
    return blocks


def scorecard_markdown(summary: dict) -> str:
    """``results/scorecard.md``: measured verdicts of every experiment beside the paper's
    (:func:`scorecard_blocks` as Markdown; pipe tables)."""
    out = []
    for block in scorecard_blocks(summary):
        if block[0] == "h":
            out.append("#" * block[1] + " " + block[2])
        elif block[0] == "p":
            out.append(block[1])
        elif block[0] == "ul":
            out.append("\n".join(f"- {item}" for item in block[1]))
        else:
            df = block[1]
            lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
            out.append("\n".join(lines + ["| " + " | ".join(row) + " |" for row in df.itertuples(index=False)]))
    return "\n\n".join(out) + "\n"


def _cells_note(exp: dict) -> str:
    """How many cells the delay-law fit and the P6 prediction left out, and why."""
    excluded = (exp.get("delay_law") or {}).get("excluded")
    cens = exp.get("censoring") or {}
    pred = exp.get("prediction") or {}
    if not excluded and not cens and not pred:
        return ""
    parts = []
    if cens:
        parts.append(f"{cens.get('n_censored', 0)} censored (delay > cap; not in the delay-law fits, "
                     "scored as bounds in P6; "
                     f"Kaplan-Meier median delay {_fmt(cens.get('km_median_delay'))}"
                     + (f", {cens['km_median_bound']}" if cens.get("km_median_bound") else "")
                     + ")")
    if excluded:
        parts.append("left out of the delay-law fit: "
                     + ", ".join(f"{k} {v}" for k, v in sorted(excluded.items())))
    if pred.get("not_predicted"):
        parts.append("not predicted: " + ", ".join(f"{k} {v}" for k, v in
                                                   sorted(pred["not_predicted"].items())))
    return "Cells: " + "; ".join(parts) + "."


def _inline_html(text: str) -> str:
    text = html.escape(str(text), quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


STYLE = ("body{font-family:sans-serif;font-size:13px;margin:1em}"
         "table{border-collapse:collapse;margin:0.5em 0}"
         "td,th{border:1px solid #bbb;padding:3px 6px;text-align:left;vertical-align:top}"
         "th{background:#eee}")


def scorecard_html(summary: dict, title: str = "NHT scorecard") -> str:
    """:func:`scorecard_blocks` as a self-contained HTML page (for the Snakemake report); tables by
    :meth:`pandas.DataFrame.to_html`."""
    body = []
    for block in scorecard_blocks(summary):
        if block[0] == "h":
            body.append(f"<h{block[1]}>{_inline_html(block[2])}</h{block[1]}>")
        elif block[0] == "p":
            body.append(f"<p>{_inline_html(block[1])}</p>")
        elif block[0] == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block[1]) + "</ul>")
        else:
            df = block[1].apply(lambda column: column.map(_inline_html))  # Series.map: pandas 2.0
            df.columns = [_inline_html(c) for c in df.columns]
            body.append(df.to_html(index=False, escape=False, border=0))
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
