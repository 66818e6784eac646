"""Rendering of the P1-P6 scorecards (:mod:`nht.science.scorecard`, which never imports this
module): ``results/scorecard.md`` and its HTML page."""

from __future__ import annotations

import re

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
        cards[name] = exp.get("scorecard") or sc.build_scorecard(exp, exp["kind"])
    names = list(cards)
    lines = ["# NHT scorecard: measured here vs the paper (arXiv 2603.07323)", "",
             "Every measured verdict is computed from the data by `nht.science.scorecard` with a threshold "
             "fixed in advance (shown as `statistic >= threshold?`). A modular verdict holds only "
             "when the whole 95 % interval lies on the predicted side (`uncertain` when it "
             "straddles, or below 8 units, where no interval is computed); P1 and P5 must also beat "
             "nulls where V is unrelated to the transition, P6 is an out-of-sample comparison with "
             "the 1/(ηλ) fit and the same-ηλ mean of other groups, and the norm shift at fixed ηλ "
             "(the law's own discriminating prediction, slope 1 vs 0) is a headline of its own, "
             "not counted in the /6. `not scored (x)`: a descriptive statistic; see "
             "`workflow/report/science.rst` for the estimators. The paper's verdicts are given "
             "by hand; for CelebA and Waterbirds it states only how many predictions hold.", "",
             "## Measured", ""]
    head = ["prediction"] + [f"{n} ({exps[n]['kind']})" for n in names]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in sc.PREDICTIONS:
        lines.append("| " + " | ".join([sc.LABELS[p]] + [_cell_text(cards[n][p]) for n in names]) + " |")
    lines.append("| **holds** | " + " | ".join(
        f"{sum(cards[n][p]['verdict'] == 'holds' for p in sc.PREDICTIONS)}/6" for n in names) + " |")
    lines.append("| " + " | ".join([sc.LABELS["norm_shift"]] + [
        _cell_text(cards[n]["norm_shift"]) if "norm_shift" in cards[n] else "–" for n in names]) + " |")
    lines += ["", "## Paper", ""]
    phead = ["prediction"] + [sc.PAPER[k]["label"] for k in sc.PAPER]
    lines += ["| " + " | ".join(phead) + " |", "|" + "---|" * len(phead)]
    for p in sc.PREDICTIONS:
        row = [sc.LABELS[p]] + [(sc.PAPER[k]["per"] or {}).get(p, "not stated") for k in sc.PAPER]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("| **holds** | " + " | ".join(f"{sc.PAPER[k]['holds']}/6" for k in sc.PAPER) + " |")
    lines += ["", "## Differences from the paper", ""]
    any_ref = False
    for n in names:
        ref = sc.paper_reference(n, exps[n])
        measured = sum(cards[n][p]["verdict"] == "holds" for p in sc.PREDICTIONS)
        if ref is None:
            lines.append(f"- `{n}`: no counterpart in the paper; measured {measured}/6 hold.")
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
        for p in sc.HEADLINES:
            if p not in cards[n]:
                continue
            e = cards[n][p]
            ci = "–" if not e.get("ci") else f"[{_fmt(e['ci'][0])}, {_fmt(e['ci'][1])}]"
            reason = (e.get("detail") or {}).get("reason")
            definition = e.get("definition", "") + (f" ({reason})" if reason else "")
            lines.append(f"| {sc.LABELS[p]} | {_fmt(e['statistic'])} | {ci} | "
                         f"{e['comparison'] if e['threshold'] is not None else ''} "
                         f"{_fmt(e['threshold'])} | {_verdict_text(e)} | "
                         f"{e.get('ci_verdict') or '–'} | {_fmt(e.get('n'))} | {definition} |")
        lines += _cells_note(exps[n])
    return "\n".join(lines) + "\n"


def _cells_note(exp: dict) -> list[str]:
    """How many cells the delay-law fit and the P6 prediction left out, and why."""
    excluded = (exp.get("delay_law") or {}).get("excluded")
    cens = exp.get("censoring") or {}
    pred = exp.get("prediction") or {}
    if not excluded and not cens and not pred:
        return []
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
    return ["", "Cells: " + "; ".join(parts) + "."]


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
