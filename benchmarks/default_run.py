"""Benchmark: the default pipeline end to end, as `make run` runs it, in a fresh temporary copy.

Prints the wall time, the peak resident memory of any single process of the run (goal: <= 4 GiB),
the per-rule time from Snakemake's benchmark files, each training job's cell-steps/s, and the
regime counts and delay-law R^2 of every experiment, so one run gives the figures a release note
needs. Peak RSS comes from getrusage(RUSAGE_CHILDREN).ru_maxrss: the largest resident set of any
descendant process.

At the end it prints the README's science table (:func:`science_table`: per experiment the
leave-one-group-out delay errors of NHT and its two nulls, norm_shift and the scorecard), headed by
the date, CPU, torch and code version, so the README's numbers come from this script on the
current code.

Usage: .venv/bin/python benchmarks/default_run.py [--cores 2] [--config config.yaml] [--keep DIR]
       .venv/bin/python benchmarks/default_run.py --summary DIR/results/summary.json   # table only
       .venv/bin/python benchmarks/default_run.py --smoke   # the same on a 2-cell, 300-step config (tests)
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from nht.core.provenance import cpu_model

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")

#: --smoke: one tiny modular experiment (one job of 2 cells of p 11, 300 steps; a second of training)
SMOKE_CONFIG = {"experiments": {"smoke": {
    "kind": "modular", "p": 11, "train_frac": 0.7, "model": {"name": "mlp", "embed_dim": 8, "hidden": 32},
    "lr": 0.01, "weight_decay": 1.0, "init_scale": [1, 3], "max_steps": 300, "eval_every": 20,
    "stop_margin": 40}}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", default="all")
    ap.add_argument("--config", default=str(REPO / "config.yaml"))
    ap.add_argument("--keep", help="run in this directory and keep it (default: a temporary one)")
    ap.add_argument("--smoke", action="store_true",
                    help="tests: run SMOKE_CONFIG on 2 cores in a temporary directory, removed at the end")
    ap.add_argument("--summary", help="only print the science table of this summary.json (no run)")
    args = ap.parse_args()
    if args.summary:
        print(science_table(json.loads(Path(args.summary).read_text())))
        return
    wd = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="nht-default-"))
    wd.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Snakefile", wd)
    for name in ("workflow", "profiles"):
        shutil.copytree(REPO / name, wd / name, dirs_exist_ok=True)
    if args.smoke:
        import yaml

        args.cores = "2"
        (wd / "config.yaml").write_text(yaml.safe_dump(SMOKE_CONFIG))
    else:
        shutil.copy(args.config, wd / "config.yaml")
    shared = REPO.parent / "shared"
    if shared.exists() and not (wd.parent / "shared").exists():
        print(f"note: ../shared is not next to {wd}; image presets that read it use their own paths")
    t = time.perf_counter()
    proc = subprocess.run([SNAKEMAKE, "--cores", str(args.cores)],
                          cwd=wd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        sys.exit(f"pipeline failed ({proc.returncode})")
    print(f"wall time                 {wall:.0f} s  (cores={args.cores})")
    print(f"peak RSS (one process)    {peak_gib:.2f} GiB  (goal <= 4 GiB: {'met' if peak_gib <= 4 else 'NOT met'})")
    rows = []
    for tsv in (wd / "benchmarks/rules").rglob("*.tsv"):
        b = pd.read_csv(tsv, sep="\t")
        rows.append({"rule": tsv.relative_to(wd / "benchmarks/rules").parts[0], "s": float(b["s"].iloc[0]),
                     "max_rss_mb": float(b["max_rss"].iloc[0]) if "max_rss" in b else float("nan")})
    if rows:
        per_rule = pd.DataFrame(rows).groupby("rule").agg(jobs=("s", "size"), total_s=("s", "sum"),
                                                          max_s=("s", "max"), max_rss_mb=("max_rss_mb", "max"))
        print(per_rule.sort_values("total_s", ascending=False).to_string(float_format=lambda v: f"{v:.1f}"))
    for meta in sorted((wd / "results").glob("*/jobs/*/meta.json")):
        m = json.loads(meta.read_text())
        print(f"job {m['experiment']}/{m['job']}: {m['n_cells']} cells, {m['wall_seconds']:.0f} s, "
              f"{m['cell_steps_per_second']:.0f} cell-steps/s")
    summary = json.loads((wd / "results/summary.json").read_text())
    for name, exp in summary["experiments"].items():
        print(f"{name} ({exp['kind']}): cells {exp.get('cells')}, regimes {exp.get('regimes')}")
        law, base = exp.get("delay_law") or {}, exp.get("baseline_inverse_eta_lambda") or {}
        if law:
            print(f"  retrospective delay law R2 {_f(law.get('r2'))} {_ci(law.get('r2_ci'))} k {_f(law.get('k'))} "
                  f"n {law.get('n')}; tautology R2 {_f(law.get('tautology_r2'))}; 1/(eta lambda) R2 {_f(base.get('r2'))}")
        pred = exp.get("prediction") or {}
        for key, err in (pred.get("loo_error") or {}).items():
            if isinstance(err, dict):
                print(f"  leave-one-group-out median relative delay error, {key}: {_f(err.get('median'))} "
                      f"{_ci(err.get('ci'))} (n {err.get('n')})")
        if pred:
            print(f"  NHT beats 1/(eta lambda): {pred.get('nht_beats_baseline')}")
        rate = (exp.get("decay_rate") or {}).get("ratio_to_theory")
        if isinstance(rate, dict):
            print(f"  decay rate / (2 eta lambda): {_f(rate.get('median', rate.get('value')))} {_ci(rate.get('ci'))}")
        card = exp.get("scorecard") or {}
        verdicts = {k: (v.get("verdict") if isinstance(v, dict) else v) for k, v in card.items()
                    if k.startswith("P")}
        if verdicts:
            print("  scorecard: " + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())))
        for k, v in sorted(card.items()):
            if isinstance(v, dict) and v.get("verdict") == "not_enough_data":
                print(f"    {k}: {(v.get('detail') or {}).get('reason')}")
    print()
    print(science_table(summary, cores=args.cores, wall_s=wall))
    if args.smoke and not args.keep:
        shutil.rmtree(wd, ignore_errors=True)
    else:
        print(f"results in {wd}")


def science_table(summary: dict, cores: str | None = None, wall_s: float | None = None) -> str:
    """The README's science table of one summary.json (Markdown), with what produced it."""
    prov = summary.get("provenance") or {}
    head = (f"Measured {datetime.date.today()} by `benchmarks/default_run.py` on {cpu_model()}"
            + (f", {cores} cores" if cores else "") + f", torch {prov.get('torch')}, code {str(prov.get('code_version'))[:10]}"
            + (f", {wall_s:.0f} s wall" if wall_s is not None else "") + ".")
    rows = ["| experiment | cells, regimes | LOO median relative delay error: NHT / 1/(ηλ) / same-ηλ mean "
            "[95% CI, groups resampled] (groups) | NHT beats both nulls? | norm_shift slope [95% CI], p | scorecard |",
            "|---|---|---|---|---|---|"]
    for name, exp in summary["experiments"].items():
        regimes = ", ".join(f"{k} {v}" for k, v in (exp.get("regimes") or {}).items() if v)
        pred = exp.get("prediction") or {}
        errs = pred.get("loo_error") or {}
        err = " / ".join(f"{_f((errs.get(k) or {}).get('median'))} {_ci((errs.get(k) or {}).get('ci'))}".strip()
                         for k in ("nht", "baseline_inverse_eta_lambda", "same_eta_lambda_mean"))
        card = exp.get("scorecard") or {}
        shift = card.get("norm_shift") or {}
        detail = shift.get("detail") or {}
        shift_text = (f"{_f(shift.get('statistic'))} {_ci(shift.get('ci'))}, p {_f(detail.get('p'))}: "
                      f"{shift.get('verdict')}" if shift.get("statistic") is not None
                      else f"{shift.get('verdict', '–')} ({detail.get('reason', '')})")
        verdicts = ", ".join(f"{k.split('_')[0]} {v.get('verdict')}" for k, v in sorted(card.items())
                             if isinstance(v, dict) and k.startswith("P"))
        rows.append(f"| `{name}` | {exp.get('cells')}: {regimes} | {err} ({pred.get('n_groups', '–')}) | "
                    f"{pred.get('nht_beats_nulls', '–')} | {shift_text} | {verdicts} |")
    return head + "\n\n" + "\n".join(rows)


def _f(x) -> str:
    return f"{x:.3g}" if isinstance(x, (int, float)) else str(x)


def _ci(ci) -> str:
    return f"[{_f(ci[0])}, {_f(ci[1])}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""


if __name__ == "__main__":
    main()
