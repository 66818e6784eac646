"""Compare nht's transformer cells with the companion code's lambda sweep, per lambda.

The companion (ClevixLab/grokking-norm-separation, scripts/s2_lambda_sweep_v2.py) trained its
1-layer transformer on (a+b) mod 97 for 8 lambdas x 10 seeds and saved T_fit, T_grok, V_at_mem
and V_final per run in data/summary2.json; the facts are copied, with their source, to
docs/reference/companion_summary2.json. This script reads nht's per-cell norm records
(``<results>/<experiment>/cells/<cell>/norms.json``, see nht/core/events.py; cells with p 97, lr 1e-3 and
the transformer model only) and writes a markdown table per lambda: cells, generalised/n, T_fit,
T_grok, V_fit, V_final (mean ± sample sd), for nht and for the companion, plus a per-seed table
for seeds present in both (with ``init: companion`` a seed gives both codes the same initial
weights and minibatch draws).

Times are steps; V is the squared parameter norm. The companion evaluates every 500 steps, so its
T are multiples of 500; when an nht cell was evaluated more often, its T_fit, T_grok and V_fit
are read from the evaluations at multiples of ``--grid`` (default 500) in its history.csv, i.e.
what the companion's cadence would have recorded. Means of T_grok and V_fit are over the cells
that reached the threshold; V_final is at the stop (T_grok + stop margin, else the cap; the cap
is shown because a smaller cap makes V_final and generalised/n incomparable).

Usage:
  .venv/bin/python benchmarks/companion_comparison.py [--results results] [--experiment NAME ...]
      [--out results/companion_comparison.md]
  # train some cells of a config's experiment first (records go to --results), then compare:
  .venv/bin/python benchmarks/companion_comparison.py --train workflow/presets/companion-sweep.yaml \\
      --experiment companion_sweep --lambdas 1 0.5 --seeds 42 43 44 --results /tmp/cmp --threads 1
  # smoke test (the suite): one companion_sweep cell (lambda 1, seed 42) for 40 steps, evaluated every
  # 20, on a 20-step grid, in a temporary directory; prints the table, writes nothing in the repo:
  .venv/bin/python benchmarks/companion_comparison.py --smoke

The companion's per-run keys (docs/reference/companion_summary2.json: ``T_mem``, ``T_grok``,
``V_at_mem``, ``V_final``) are mapped to nht's names (T_fit, T_grok, V_fit, V_final) by
:data:`COMPANION_KEYS`; the reference file is a verbatim copy and is not edited.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

REFERENCE = REPO / "docs" / "reference" / "companion_summary2.json"
PRESET = REPO / "workflow" / "presets" / "companion-sweep.yaml"

#: nht's name of a value -> the companion's key for it in summary2.json (its "definitions" block:
#: T_mem = first evaluated step with train accuracy >= 0.99, nht's T_fit; V_at_mem = ||theta||^2 there)
COMPANION_KEYS = {"T_fit": "T_mem", "T_grok": "T_grok", "V_fit": "V_at_mem", "V_final": "V_final"}


# ----------------------------------------------------------------------------- records

def _grid_values(history_path: Path, grid: int, train_thr: float, test_thr: float) -> dict | None:
    """T_fit, T_grok, V_fit from the evaluations at multiples of ``grid`` steps, or None when the
    history does not hold every multiple of ``grid`` up to its last step."""
    import pandas as pd

    if not history_path.exists():
        return None
    h = pd.read_csv(history_path).sort_values("step")
    on = h[h["step"] % grid == 0]
    if len(on) == 0 or set(range(0, int(h["step"].max()) + 1, grid)) - set(on["step"].astype(int)):
        return None
    mem = on[on["train_acc"] >= train_thr]
    gen = on[on["test_acc"] >= test_thr]
    return {"T_fit": int(mem["step"].iloc[0]) if len(mem) else None,
            "T_transition": int(gen["step"].iloc[0]) if len(gen) else None,
            "V_fit": float(mem["V"].iloc[0]) if len(mem) else None}


def load_nht(results: Path, experiments: list[str] | None, grid: int) -> tuple[list[dict], list[str]]:
    """nht cells comparable with the companion (p 97, lr 1e-3, transformer) and notes on the rest."""
    rows, notes, skipped = [], [], 0
    for path in sorted(results.glob("*/cells/*/norms.json")):
        rec = json.loads(path.read_text())
        if experiments and rec.get("experiment") not in experiments:
            continue
        if rec.get("model") != "transformer" or rec.get("p") != 97 or not math.isclose(rec.get("lr", 0), 1e-3):
            skipped += 1
            continue
        settings_path = path.parent.parent.parent / "settings.json"
        row = {"experiment": rec["experiment"], "cell": rec["cell"], "lam": float(rec["weight_decay"]),
               "seed": int(rec["seed"]), "T_fit": rec["T_fit"], "T_grok": rec["T_transition"], "V_fit": rec["V_fit"],
               "V_final": rec["V_final"], "stop_step": rec["stop_step"], "stop_reason": rec.get("stop_reason"),
               "provenance": rec.get("provenance", {}), "on_grid": False}
        thr = json.loads(settings_path.read_text()) if settings_path.exists() else {}
        g = _grid_values(path.parent / "history.csv", grid, thr.get("train_threshold", 0.99),
                         thr.get("test_threshold", 0.99))
        if g is not None:
            row.update(T_fit=g["T_fit"], T_grok=g["T_transition"], V_fit=g["V_fit"], on_grid=True)
        rows.append(row)
    if skipped:
        notes.append(f"{skipped} cells skipped (not the companion's p 97, lr 1e-3 transformer)")
    return rows, notes


def load_companion(path: Path) -> tuple[list[dict], dict]:
    """The companion's runs (one row per lambda x seed, keys renamed by :data:`COMPANION_KEYS`) and
    its ``source`` block. A run without one of the expected keys is an error naming the key."""
    doc = json.loads(path.read_text())
    rows = []
    for i, r in enumerate(doc["results"]):
        missing = [k for k in ("lam", "seed", *COMPANION_KEYS.values()) if k not in r]
        if missing:
            raise SystemExit(f"{path}: results[{i}] lacks {missing} (has {sorted(r)})")
        row = {"lam": float(r["lam"]), "seed": int(r["seed"]),
               "cap": 15000 if r["lam"] <= 0.01 else 80000}
        row.update({ours: r[theirs] for ours, theirs in COMPANION_KEYS.items()})
        rows.append(row)
    return rows, doc["source"]


# ----------------------------------------------------------------------------- table

def _mean_sd(values: list, digits: int = 0) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    m = statistics.fmean(vals)
    if len(vals) == 1:
        return f"{m:,.{digits}f}"
    return f"{m:,.{digits}f} ± {statistics.stdev(vals):,.{digits}f}"


def _summary(rows: list[dict]) -> dict:
    return {"n": len(rows), "grokked": sum(r["T_grok"] is not None for r in rows),
            "T_fit": _mean_sd([r["T_fit"] for r in rows]), "T_grok": _mean_sd([r["T_grok"] for r in rows]),
            "V_fit": _mean_sd([r["V_fit"] for r in rows]), "V_final": _mean_sd([r["V_final"] for r in rows]),
            "seeds": sorted({r["seed"] for r in rows})}


def _caps(rows: list[dict]) -> str:
    caps = sorted({r["cap"] for r in rows if r.get("cap")})
    return "/".join(f"{c:,}" for c in caps) or "?"


def build_table(nht: list[dict], comp: list[dict], source: dict, caps: dict[str, int], grid: int,
                notes: list[str]) -> str:
    for r in nht:
        r["cap"] = caps.get(r["experiment"])
    lams = sorted({r["lam"] for r in nht})
    lines = ["| λ | code | seeds | cap (steps) | generalised/n | T_fit | T_grok | V_fit | V_final |",
             "|---|---|---|---|---|---|---|---|---|"]
    for lam in lams:
        for name, rows in (("nht", [r for r in nht if r["lam"] == lam]),
                           ("companion", [r for r in comp if math.isclose(r["lam"], lam)])):
            if not rows:
                lines.append(f"| {lam:g} | {name} | – | – | not in the companion's sweep | – | – | – | – |")
                continue
            s = _summary(rows)
            seeds = f"{s['seeds'][0]}–{s['seeds'][-1]}" if len(s["seeds"]) > 2 else ", ".join(map(str, s["seeds"]))
            lines.append(f"| {lam:g} | {name} | {seeds} | {_caps(rows)} | {s['grokked']}/{s['n']} | {s['T_fit']} | "
                         f"{s['T_grok']} | {s['V_fit']} | {s['V_final']} |")
    per_seed = ["| λ | seed | T_fit nht / companion | T_grok nht / companion | V_fit nht / companion | "
                "V_final nht / companion |", "|---|---|---|---|---|---|"]
    comp_by = {(round(r["lam"], 6), r["seed"]): r for r in comp}

    def fmt(v, digits=0):
        return "–" if v is None else f"{v:,.{digits}f}"

    for r in sorted(nht, key=lambda r: (r["lam"], r["seed"])):
        c = comp_by.get((round(r["lam"], 6), r["seed"]))
        if c is None:
            continue
        per_seed.append(f"| {r['lam']:g} | {r['seed']} | {fmt(r['T_fit'])} / {fmt(c['T_fit'])} | "
                        f"{fmt(r['T_grok'])} / {fmt(c['T_grok'])} | {fmt(r['V_fit'])} / {fmt(c['V_fit'])} | "
                        f"{fmt(r['V_final'])} / {fmt(c['V_final'])} |")
    prov = sorted({(p.get("provenance") or {}).get("torch", "?") + ", " + (p.get("provenance") or {}).get("device", "?")
                   + f", {(p.get('provenance') or {}).get('threads', '?')} thread(s)" for p in nht})
    on_grid = sum(r["on_grid"] for r in nht)
    out = [
        "# nht vs the companion code, per λ",
        "",
        f"Companion: `{source['repo']}` `{source['path']}` at commit `{source['commit'][:12]}` "
        "(facts copied to docs/reference/companion_summary2.json). nht: "
        f"{len(nht)} cells from experiment(s) {', '.join(sorted({r['experiment'] for r in nht})) or '–'}; "
        f"torch/device: {'; '.join(prov) or '–'}.",
        "",
        "Steps for T, squared parameter norm ‖θ‖² for V; mean ± sample sd over seeds; T_grok and V_fit over "
        "the cells that reached 0.99 (train for T_fit/V_fit, test for T_grok); V_final at the stop "
        "(T_grok + 2,000 steps, else the cap). "
        f"nht T are read on the companion's {grid}-step evaluation grid ({on_grid} of {len(nht)} cells; "
        "the others use their own cadence).",
        "",
        *lines,
        "",
    ]
    if len(per_seed) > 2:
        out += ["Seeds run by both (with `init: companion`: same initial weights and minibatch draws; "
                "different train/test split):", "", *per_seed, ""]
    out += [f"Note: {n}." for n in notes]
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------- optional training

def train(config_path: str, experiment: str, lambdas: list[float], seeds: list[int], results: Path,
          threads: int, max_steps: int | None = None, eval_every: int | None = None) -> dict[str, int]:
    """Train the selected cells (one job per λ, seeds batched) and write their norm records.
    ``max_steps`` / ``eval_every`` (steps) override the config's (the smoke test's tiny run)."""
    import torch  # noqa: F401  (imported here: the table alone needs no torch)

    from nht.config import group_jobs, expand_cells, load_config
    from nht.core.history import history_csv
    from nht.core.io import write_json
    from nht.domains.modular.data import make_modular_dataset
    from nht.domains.modular.train import train_job
    from nht.stages.norms import cell_record, read_job_history

    config = load_config(config_path)
    if experiment not in config["experiments"]:
        raise SystemExit(f"{config_path} has no experiment '{experiment}' (has {sorted(config['experiments'])})")
    if max_steps is not None:
        config["experiments"][experiment]["max_steps"] = int(max_steps)
    if eval_every is not None:
        config["experiments"][experiment]["eval_every"] = int(eval_every)
    cells = [c for c in expand_cells(config, experiment)
             if (not lambdas or any(math.isclose(c["weight_decay"], lam) for lam in lambdas))
             and (not seeds or c["seed"] in seeds)]
    if not cells:
        raise SystemExit(f"no cells of '{experiment}' match lambdas {lambdas} and seeds {seeds}")
    by_lam: dict[float, list] = {}
    for c in cells:
        by_lam.setdefault(c["weight_decay"], []).append(c)
    for lam, group in sorted(by_lam.items()):
        for job in group_jobs(group):
            s = job.cells[0].settings
            data = make_modular_dataset(s["op"], s["p"], s["train_frac"], s["split_seed"])
            jobdir = results / experiment / "jobs" / job.id
            t = time.time()
            meta = train_job(list(job.cells), data, jobdir / "history.csv", jobdir / "meta.json", None,
                             device="cpu", threads=threads, job_id=job.id, progress_every_s=60)
            print(f"λ {lam:g}: {len(job.cells)} cells, {time.time() - t:.0f} s, "
                  f"{meta['cell_steps_per_second']:.0f} cell-steps/s", file=sys.stderr, flush=True)
            for c in job.cells:                   # what the norms stage does with a job's history
                d = results / experiment / "cells" / c.id
                d.mkdir(parents=True, exist_ok=True)
                h = read_job_history(jobdir / "history.csv", c.id)
                (d / "history.csv").write_text(history_csv(h))
                write_json(cell_record(h, meta, c.id, "modular", c.settings), d / "norms.json")
            (results / experiment / "settings.json").write_text(json.dumps(
                {k: v for k, v in s.items() if k not in ("weight_decay", "seed")}, indent=1, default=str))
    return {experiment: int(cells[0]["max_steps"])}


def caps_from(results: Path) -> dict[str, int]:
    caps = {}
    for path in results.glob("*/settings.json"):
        caps[path.parent.name] = int(json.loads(path.read_text()).get("max_steps", 0)) or None
    for path in results.glob("*/cells/*/norms.json"):
        rec = json.loads(path.read_text())
        caps.setdefault(rec["experiment"], None)
    return caps


def main(argv: list[str] | None = None, _steps: tuple[int, int] | tuple = ()) -> None:
    """The command line (see the module docstring); ``_steps`` = (max_steps, eval_every) overrides
    for ``--train`` (the smoke run)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(REPO / "results"), help="directory holding <experiment>/cells/*/norms.json")
    ap.add_argument("--experiment", nargs="*", help="only these experiments (default: every one found)")
    ap.add_argument("--reference", default=str(REFERENCE))
    ap.add_argument("--grid", type=int, default=500, help="the companion's evaluation cadence (steps)")
    ap.add_argument("--cap", action="append", default=[], metavar="EXPERIMENT=STEPS",
                    help="max_steps of an experiment, shown in the table (read from the config when known)")
    ap.add_argument("--config", default=str(REPO / "config.yaml"),
                    help="config whose experiments' max_steps are shown (when --train is not given)")
    ap.add_argument("--train", metavar="CONFIG", help="first train cells of --experiment from this config")
    ap.add_argument("--lambdas", type=float, nargs="*", default=[])
    ap.add_argument("--seeds", type=int, nargs="*", default=[])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "results" / "companion_comparison.md"))
    ap.add_argument("--smoke", action="store_true",
                    help="tiny end-to-end run for the test suite (see Usage); replaces the other options")
    a = ap.parse_args(argv)
    if a.smoke:
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="nht-companion-smoke-"))
        try:
            main(["--train", str(PRESET), "--experiment", "companion_sweep", "--lambdas", "1", "--seeds", "42",
                  "--results", str(tmp / "results"), "--grid", "20", "--config", str(PRESET),
                  "--cap", "companion_sweep=40", "--out", str(tmp / "companion_comparison.md"), "--threads", "1"],
                 _steps=(40, 20))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    results = Path(a.results)
    if a.train:
        if not a.experiment or len(a.experiment) != 1:
            raise SystemExit("--train needs exactly one --experiment")
        train(a.train, a.experiment[0], a.lambdas, a.seeds, results, a.threads, *_steps)
    caps = caps_from(results)
    if Path(a.config).exists():
        import yaml

        for name, exp in (yaml.safe_load(Path(a.config).read_text()) or {}).get("experiments", {}).items():
            if name in caps and caps[name] is None and "max_steps" in exp:
                caps[name] = int(exp["max_steps"])
    for item in a.cap:
        name, steps = item.split("=")
        caps[name] = int(steps)
    nht, notes = load_nht(results, a.experiment, a.grid)
    if not nht:
        raise SystemExit(f"no comparable nht norm records under {results}")
    comp, source = load_companion(Path(a.reference))
    table = build_table(nht, comp, source, caps, a.grid, notes)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
