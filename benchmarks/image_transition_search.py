"""Search for an image protocol that shows the shortcut -> structure switch on a laptop (issue 13).

    nice -n 19 .venv/bin/python benchmarks/image_transition_search.py [--only NAME ...] [--budget-min 60]
    .venv/bin/python benchmarks/image_transition_search.py --smoke   # the test suite: SMOKE_PROTOCOL,
                                                    # work and reports in a temporary directory

Every protocol in :data:`PROTOCOLS` is run through nht's own image code (``nht.domains.images.data`` loaders,
``nht.domains.images.shortcuts.inject``, ``nht.domains.images.train.train_cell`` with the config validated by the image
schema), one cell (lambda x seed) at a time on 1 torch thread, each cell capped by ``time_limit_s``.
Cells already trained with identical settings (``meta.json`` present under ``--work``, carrying this
search's tag) are reused, so the search can be rerun or extended. Histories follow the one history schema
(:mod:`nht.core.history`: ``test_acc`` = clean accuracy, ``phi`` = reliance, ``Lambda`` = decay budget).
Outputs, rewritten after every cell:

* ``docs/image_transition_search.csv``  one row per protocol x cell: outcome under the rule below, and
  ``regime``, the cell's regime from :func:`nht.core.events.extract_events` (the one event rule every nht
  cell reports: weak / intermediate / strong / immediate / diverged);
* ``docs/image_transition_search.md``   readable table per protocol, closest cases, the paper's scale;
* ``docs/figures/image_transition_search_curves.csv.gz``  per epoch and cell: train/test (clean)/conflicting
  accuracy, reliance phi, V (squared L2 norm) and the cumulative decay budget Lambda = lambda * sum_s eta_s;
* ``docs/figures/image_transition_<protocol>.png``  for promising protocols (a transition or a sustained
  fit on the cue in some cell): per seed, clean accuracy and reliance vs epoch, V on a second axis
  (log), one colour per lambda.

Transition rule (:func:`shortcut_phases` with :data:`PHASE_RULE`, both defined here: the search's own
exploratory instrument, kept as recorded in docs/image_transition_search.md; all times in EPOCHS; Lambda
is the decay budget accumulated up to that epoch's end):

1. fit on the cue at t_fit: first epoch >= 1 with train accuracy >= FIT_TRAIN and reliance >= FIT_REL
   (reliance phi = share of conflicting test images classified as the border's class);
2. sustained: reliance >= SUSTAIN_REL at every epoch in [t_fit, t_fit + K), K = max(SUSTAIN_MIN,
   ceil(SUSTAIN_FRAC * epochs));
3. switch at t_switch: first epoch >= t_fit + K with clean accuracy >= clean(t_fit) + RISE and
   reliance <= reliance(t_fit) - FALL.

``transition`` = all three. ``score`` = max over epochs e >= t_fit + K of min(1, rise_e / RISE,
fall_e / FALL) (rise/fall relative to t_fit): 1 for a transition, 0 when either never improves; it ranks
the closest cases. ``late_rise`` = clean accuracy rose by >= RISE after the sustained fit, whatever
reliance did. With no fit, score and late_rise are computed from epoch 1.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nht.config import expand_cells, validate_config  # noqa: E402
from nht.core.io import stable_hash  # noqa: E402
from nht.core.events import extract_events  # noqa: E402
from nht.core.history import read_history  # noqa: E402
from nht.core.io import write_json  # noqa: E402
from nht.domains.images.data import load_dataset, load_npz, save_npz  # noqa: E402
from nht.domains.images.shortcuts import inject  # noqa: E402
from nht.domains.images.train import train_cell  # noqa: E402

# The search's exploratory transition rule (see the module docstring and shortcut_phases).
PHASE_RULE = {"fit_train": 0.9, "fit_reliance": 0.7, "sustain_reliance": 0.5, "sustain_min": 5,
              "sustain_frac": 0.05, "rise": 0.20, "fall": 0.30}

FIT_TRAIN, FIT_REL = PHASE_RULE["fit_train"], PHASE_RULE["fit_reliance"]
SUSTAIN_REL, SUSTAIN_MIN, SUSTAIN_FRAC = (PHASE_RULE[k] for k in ("sustain_reliance", "sustain_min", "sustain_frac"))
RISE, FALL = PHASE_RULE["rise"], PHASE_RULE["fall"]

CIFAR_ARCHIVE = "../shared/data/cifar10-jpeg.tar.gz"
DIGITS12 = {"name": "digits", "source": "sklearn", "pad": 2}        # 12x12, border 2 outside the digit
DIGITS16 = {"name": "digits", "source": "sklearn", "pad": 4}        # 16x16 (the default run's images)
CIFAR16 = {"name": "cifar10", "source": "local_archive", "archive": CIFAR_ARCHIVE, "image_size": 16}
MLP = {"name": "mlp", "hidden": [256, 256]}
ADAMW = {"name": "adamw", "betas": [0.9, 0.999]}

# One dict per protocol. ``exp`` = keys of an image experiment (validated by the schema, grid axes
# weight_decay x seed); ``classes``/``alpha`` go to shortcuts.inject only (not config keys yet).
def _mlp_case(name, note, classes=None, alpha=1.0, **over):
    """The probe's closest case (full-batch AdamW, constant lr, MLP 256-256, init x8, rho .95, border 2
    on 12x12 digits, pixel noise .3, lambda 1/2/4, 3000 epochs = 3000 steps) with ``over`` replaced."""
    exp = {"dataset": {**DIGITS12}, "rho": 0.95, "border": 2, "lr": 0.001, "weight_decay": [1.0, 2.0, 4.0],
           "seed": 0, "model": {**MLP, "init_scale": 8.0}, "optimizer": ADAMW, "lr_schedule": "constant",
           "epochs": 3000, "batch_size": "full", "input_noise": 0.3}
    exp.update(over)
    return {"name": name, "note": note, "classes": classes, "alpha": alpha, "exp": exp}


# One dict per protocol. ``exp`` = keys of an image experiment (validated by the schema, grid axes
# weight_decay x seed); ``classes``/``alpha`` go to shortcuts.inject only (not config keys yet).
PROTOCOLS = [
    # 1. the probe's closest case and first variants (pixel noise .3)
    _mlp_case("probe_closest_mlp_x8", "probe's closest case in nht (border amplitude 1, not the probe's 2-3)"),
    _mlp_case("mlp_x8_border4", "stronger cue: 4 px border on 16x16 digits (pad 4)",
              dataset={**DIGITS16}, border=4, weight_decay=[1.0]),
    _mlp_case("mlp_x8_nonoise", "no pixel noise (conflicting examples can be memorised)", input_noise=0.0,
              epochs=1500, weight_decay=[2.0, 8.0]),
    _mlp_case("mlp_x8_border4_nonoise", "4 px border, no pixel noise", dataset={**DIGITS16}, border=4,
              input_noise=0.0, epochs=1500, weight_decay=[2.0, 8.0]),
    _mlp_case("mlp_x8_2class", "2-class digits (3 vs 8)", classes=(3, 8), epochs=1500, weight_decay=[2.0, 8.0]),
    # 2. the one that transitioned (no noise, lambda 8) as a lambda x seed grid, 1000 epochs
    _mlp_case("nonoise_grid", "no noise: lambda 4/8/16/32 x seeds 0-2, 1000 epochs", input_noise=0.0,
              epochs=1000, weight_decay=[4.0, 8.0, 16.0, 32.0], seed=[0, 1, 2]),
    # 2b. longer: lambda 8 / 12 / 16 x seeds 0-2, 2500 epochs (lambda 16 reached a shortcut phase in 1000)
    _mlp_case("nonoise_long", "no noise: lambda 8/12/16 x seeds 0-2, 2500 epochs", input_noise=0.0,
              epochs=2500, weight_decay=[8.0, 12.0, 16.0], seed=[0, 1, 2]),
    # 3. levers around it (no noise, lambda 8 and 16, 1000 epochs)
    _mlp_case("nonoise_init_x4", "init x4 instead of x8 (V_init / 16)",
              input_noise=0.0, epochs=1000, weight_decay=[8.0, 16.0], model={**MLP, "init_scale": 4.0}),
    _mlp_case("nonoise_std_init", "standard init (x1)", input_noise=0.0, epochs=1000, weight_decay=[8.0, 16.0],
              model={**MLP}),
    _mlp_case("nonoise_rho09", "rho .9", input_noise=0.0, epochs=1000,
              weight_decay=[8.0, 16.0], rho=0.9),
    # 4. seed checks of the 1000-epoch transitions above (lambda 16, seeds 1 and 2)
    _mlp_case("nonoise_init_x4_seeds", "init x4, lambda 16, seeds 1-2 (seed check)", input_noise=0.0,
              epochs=1000, weight_decay=[16.0], seed=[1, 2], model={**MLP, "init_scale": 4.0}),
    _mlp_case("nonoise_rho09_seeds", "rho .9, lambda 16, seeds 1-2 (seed check)", input_noise=0.0, epochs=1000,
              weight_decay=[16.0], rho=0.9, seed=[1, 2]),
    _mlp_case("nonoise_rho08", "rho .8", input_noise=0.0, epochs=1000, weight_decay=[8.0, 16.0], rho=0.8),
    _mlp_case("nonoise_rho_ends", "rho .1 (no information), .5 and 1.0 at lambda 16", input_noise=0.0,
              epochs=1000, weight_decay=[16.0], rho=[0.1, 0.5, 1.0]),
    _mlp_case("nonoise_weakcue", "weak cue: border blended at alpha .5", alpha=0.5, input_noise=0.0,
              epochs=1000, weight_decay=[8.0, 16.0]),
    _mlp_case("nonoise_cosine", "cosine lr (half the decay budget of constant)", lr_schedule="cosine",
              input_noise=0.0, epochs=1000, weight_decay=[8.0, 16.0]),
    _mlp_case("nonoise_minibatch", "minibatch 128 (12 steps/epoch), 100 epochs", batch_size=128, epochs=100,
              input_noise=0.0, weight_decay=[8.0, 16.0]),
    _mlp_case("nonoise_2class", "2-class digits (3 vs 8)", classes=(3, 8), input_noise=0.0, epochs=1000,
              weight_decay=[8.0, 16.0]),
    _mlp_case("nonoise_sgd", "SGD momentum .9, lr .01, L2 lambda .1/.4", optimizer={"name": "sgd", "momentum": 0.9},
              lr=0.01, weight_decay=[0.1, 0.4], epochs=1000, input_noise=0.0),
    _mlp_case("cnn_digits_x4", "SimpleCNN w .5 on 16x16 digits, init x4, batch 128, 60 epochs, no noise",
              dataset={**DIGITS16}, model={"name": "simple_cnn", "width_mult": 0.5, "init_scale": 4.0},
              batch_size=128, epochs=60, weight_decay=[8.0], input_noise=0.0),
    _mlp_case("cifar2_mlp_x8", "CIFAR-10 airplane vs automobile 16x16, 2k train, MLP init x8, no noise",
              classes=(0, 1), dataset={**CIFAR16, "n_train": 2000, "n_test": 1000}, weight_decay=[8.0, 16.0],
              epochs=800, input_noise=0.0),
    _mlp_case("cifar2_cnn_x4", "CIFAR-10 airplane vs automobile 16x16, 2k train, SimpleCNN w .5 init x4, batch 128",
              classes=(0, 1), dataset={**CIFAR16, "n_train": 2000, "n_test": 1000},
              model={"name": "simple_cnn", "width_mult": 0.5, "init_scale": 4.0}, batch_size=128, epochs=40,
              weight_decay=[8.0], input_noise=0.0),
    _mlp_case("nonoise_wide", "wider MLP 1024-1024, init x8, 500 epochs", model={"name": "mlp", "hidden": [1024, 1024],
              "init_scale": 8.0}, weight_decay=[16.0], epochs=500, input_noise=0.0),
]

#: --smoke: the probe's closest case cut to one cell (lambda 8) and 3 epochs
SMOKE_PROTOCOL = _mlp_case("smoke", "smoke test: 1 cell, 3 epochs", input_noise=0.0, epochs=3, weight_decay=[8.0])

COMMON = {"kind": "image", "threads": 1, "checkpoint_seconds": 1.0e9, "eval_batch_size": 512}


# ----------------------------------------------------------------------------- outcome rule

def shortcut_phases(epochs, train_acc, test_acc, phi, V=None, decay_budget=None,
                    rule: dict | None = None) -> dict:
    """Behavioural phases of one cell (no norms involved): fit on the cue, sustained reliance, switch.

    Times are EPOCHS (epoch 0 = initialisation is ignored); ``decay_budget`` (Lambda = lambda * sum of
    lr up to the epoch) and ``V`` (squared L2 norm) are only read off at the phase epochs. With ``rule``
    = :data:`PHASE_RULE` (any key may be overridden):

    1. fit on the cue at ``t_fit``: first epoch with train accuracy >= fit_train and reliance >=
       fit_reliance;
    2. sustained: reliance >= sustain_reliance at every epoch of [t_fit, t_fit + K), K = max(sustain_min,
       ceil(sustain_frac * last epoch)); ``sustain_epochs`` = epochs from t_fit until reliance first
       falls below sustain_reliance;
    3. switch at ``t_switch``: first epoch >= t_fit + K with clean accuracy >= clean(t_fit) + rise and
       reliance <= reliance(t_fit) - fall.

    These are behavioural measurements (``transition``, ``sustained``, the phase times), not a
    regime: a cell's regime is the one event rule's (:func:`nht.core.events.extract_events`, the
    search's ``regime`` column).
    ``score`` = max over epochs >= t_fit + K of min(1, rise_e / rise, fall_e / fall), clipped at 0
    (rise/fall relative to t_fit; from epoch 1 when there is no fit); ``late_rise``: clean accuracy rose
    by >= rise after a sustained fit (or, with no fit, after epoch 1).
    """
    r = {**PHASE_RULE, **(rule or {})}
    ep = np.asarray(epochs, dtype=float)
    keep = ep >= 1
    ep = ep[keep].astype(int)
    tr, cl, rel = (np.asarray(a, dtype=float)[keep] for a in (train_acc, test_acc, phi))
    V = np.asarray(V, dtype=float)[keep] if V is not None else np.full(len(ep), np.nan)
    lam = np.asarray(decay_budget, dtype=float)[keep] if decay_budget is not None else np.full(len(ep), np.nan)
    out = {"transition": False, "t_fit": None, "t_switch": None, "Lambda_fit": None,
           "Lambda_switch": None, "V_fit": None, "V_switch": None, "sustained": False, "sustain_epochs": None,
           "score": 0.0, "late_rise": False, "max_rise": None, "max_fall": None}
    if len(ep) == 0:
        return out

    def num(x):
        return float(x) if np.isfinite(x) else None

    k = max(int(r["sustain_min"]), math.ceil(r["sustain_frac"] * int(ep.max())))
    fit = np.flatnonzero((tr >= r["fit_train"]) & (rel >= r["fit_reliance"]))
    if len(fit):
        i = int(fit[0])
        out.update(t_fit=int(ep[i]), Lambda_fit=num(lam[i]), V_fit=num(V[i]))
        window = rel[i:i + k]
        out["sustained"] = bool(len(window) == k and (window >= r["sustain_reliance"]).all())
        below = np.flatnonzero(rel[i:] < r["sustain_reliance"])
        out["sustain_epochs"] = int(ep[i + below[0]] - ep[i]) if len(below) else int(ep[-1] - ep[i] + 1)
        start = i + k
    else:
        i, start = 0, 1
    if start < len(ep):
        rise, fall = cl[start:] - cl[i], rel[i] - rel[start:]
        out["max_rise"], out["max_fall"] = float(np.nanmax(rise)), float(np.nanmax(fall))
        both = np.minimum(np.minimum(rise / r["rise"], fall / r["fall"]), 1.0).clip(min=0.0)
        out["score"] = float(np.nanmax(both))
        out["late_rise"] = bool(out["max_rise"] >= r["rise"] and (out["sustained"] or not len(fit)))
        if len(fit) and out["sustained"]:
            sw = np.flatnonzero((rise >= r["rise"]) & (fall >= r["fall"]))
            if len(sw):
                j = start + int(sw[0])
                out.update(transition=True, t_switch=int(ep[j]), Lambda_switch=num(lam[j]), V_switch=num(V[j]))
    return out


def classify(hist: pd.DataFrame, structure: str = "test_acc") -> dict:
    """Outcome of one cell's history (history schema) under the rule (:func:`shortcut_phases`), with
    ``structure`` (``test_acc`` = clean accuracy, or ``conflicting_acc``: shape label under a wrong
    border) as the accuracy that must rise."""
    return shortcut_phases(hist["epoch"], hist["train_acc"], hist[structure], hist["phi"], hist["V"],
                           hist["Lambda"])


# ----------------------------------------------------------------------------- running

def raw_dataset(spec: dict, cache: Path) -> dict:
    """The decoded raw dataset (cached as .npz under ``cache``)."""
    key = {k: spec[k] for k in ("name", "source", "pad", "image_size", "archive") if k in spec}
    path = cache / f"raw-{spec['name']}-{stable_hash(key)}.npz"
    if not path.exists():
        save_npz(load_dataset(spec, base=REPO), path)
    return load_npz(path)


def run_protocol(proto: dict, work: Path, limit_s: float, log) -> list[dict]:
    exp = {**COMMON, **copy.deepcopy(proto["exp"]), "time_limit_s": limit_s}
    cfg = validate_config({"experiments": {proto["name"]: exp}})
    cells = expand_cells(cfg)
    raw = raw_dataset(cfg["experiments"][proto["name"]]["dataset"], work / "cache")
    rows = []
    for cell in cells:
        s = cell.settings
        out_dir = work / proto["name"] / cell.id
        tag = stable_hash([cell.id, proto.get("classes"), proto.get("alpha")])
        done = out_dir / "meta.json"
        trained = False
        cached = json.loads(done.read_text()) if done.exists() else {}
        if not (cached.get("search_tag") == tag and "cells" in cached):   # an older meta shape retrains
            ds = s["dataset"]
            data = inject(raw, s["rho"], s["border"], s["seed"], ds.get("n_train"), ds.get("n_test"),
                          ds.get("subset_seed", 0), alpha=proto.get("alpha", 1.0), classes=proto.get("classes"))
            data_path = work / "cache" / f"data-{proto['name']}-{tag}.npz"
            save_npz(data, data_path)
            meta = train_cell(cell.train_settings, data_path, out_dir, device="cpu", threads=1, cell_id=cell.id)
            meta["search_tag"] = tag
            write_json(meta, done)
            trained = True
        meta = json.loads(done.read_text())
        res = {**meta["cells"][cell.id], "wall_s": meta["wall_seconds"]}   # the training meta's one shape
        hist = read_history(out_dir / "history.csv")
        oc = classify(hist)
        occ = classify(hist, "conflicting_acc")
        ev = extract_events(hist, s, res["status"])
        last = hist[hist["epoch"] >= 1].iloc[-1]
        if trained:
            log(f"{proto['name']} {cell.id}: {res['status']} {res.get('wall_s', 0):.0f}s "
                f"epochs {res['epochs_done']} clean {float(last['test_acc']):.3f} "
                f"reliance {float(last['phi']):.3f} regime {ev['regime']} switch {oc['transition']}")
        rows.append({
            "protocol": proto["name"], "cell": cell.id, "weight_decay": s["weight_decay"], "seed": s["seed"],
            "rho": s["rho"], "lr": s["lr"], "lr_schedule": s["lr_schedule"], "batch_size": s["batch_size"],
            "epochs_planned": s["epochs"], "epochs_done": int(last["epoch"]), "status": res["status"],
            **oc,
            "delta_Lambda": (oc["Lambda_switch"] - oc["Lambda_fit"]) if oc["transition"] else None,
            "delta_Lambda_law": (0.5 * math.log(oc["V_fit"] / oc["V_switch"])
                                 if oc["transition"] and oc["V_switch"] > 0 else None),
            "V_init": float(hist["V"].iloc[0]), "V_end": float(last["V"]), "Lambda_end": float(last["Lambda"]),
            "clean_end": float(last["test_acc"]), "reliance_end": float(last["phi"]),
            "train_end": float(last["train_acc"]), "best_clean": float(hist["test_acc"].max()),
            "regime": ev["regime"], "epoch_fit_events": ev["epoch_fit"],
            "epoch_transition_events": ev["epoch_transition"],
            "norm_grew": ev["norm_grew"], "decay_pct": ev["decay_pct"],
            "transition_conf": occ["transition"],
            "t_switch_conf": occ["t_switch"], "Lambda_switch_conf": occ["Lambda_switch"],
            "score_conf": occ["score"], "conflicting_end": float(last["conflicting_acc"]),
            "wall_s": res.get("wall_s"), "note": proto["note"],
        })
        curves = hist[["epoch", "train_acc", "test_acc", "conflicting_acc", "phi", "V", "Lambda"]].copy()
        curves.insert(0, "weight_decay", s["weight_decay"])
        curves.insert(0, "seed", s["seed"])
        curves.insert(0, "protocol", proto["name"])
        rows[-1]["_curves"] = curves
    return rows


# ----------------------------------------------------------------------------- reporting

PAPER_SCALE = """\
## Where the paper reports the switch

The paper (arXiv 2603.07323) reports the image results on full CIFAR-10 (50,000 training images at
32x32, SimpleCNN of 287,912 parameters, AdamW lr 1e-3 cosine, batch 128, **200 epochs** = 78,200
steps, lambda 0.1, i.e. a decay budget Lambda = lambda * sum(lr) = 3.9) plus ResNet-18, CelebA and
Waterbirds runs on GPUs (see `workflow/presets/paper-*.yaml`, which transcribe the companion code's
settings). Those runs are 100-1000x the compute of any protocol here.
"""


def fmt(v, nd=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}g}"
    return str(v)


def write_reports(rows: list[dict], docs: Path, wall_total: float, skipped: list[str]) -> None:
    figdir = docs / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    curves = [r.pop("_curves") for r in rows if "_curves" in r]
    df = pd.DataFrame(rows)
    df.to_csv(docs / "image_transition_search.csv", index=False)
    if curves:
        pd.concat(curves).to_csv(figdir / "image_transition_search_curves.csv.gz", index=False,
                                 float_format="%.4g")
    lines = ["# Image transition search (issue 13)", "",
             "Generated by `benchmarks/image_transition_search.py` (rerun it to refresh; cells already "
             "trained are reused). 2 shared CPU cores, 1 torch thread per cell, `nice -n 19`.", "",
             "**Rule** (epochs; Lambda = lambda * sum of lr up to that epoch, the decay budget): fit on the "
             f"cue at t_fit = first epoch with train acc >= {FIT_TRAIN} and reliance >= {FIT_REL}; sustained = "
             f"reliance >= {SUSTAIN_REL} for K = max({SUSTAIN_MIN}, {SUSTAIN_FRAC:.0%} of epochs) epochs; "
             f"switch at t_switch = first later epoch with clean acc >= clean(t_fit) + {RISE} and reliance <= "
             f"reliance(t_fit) - {FALL}. score = how far the best later epoch got toward both (1 = "
             "transition; it counts only as a ranking when the fit was not sustained). sustain = epochs from "
             f"t_fit until reliance first fell below {SUSTAIN_REL}. late_rise = clean rose >= 0.2 after a "
             "sustained fit (or from epoch 1 when there was no fit), whatever reliance did.", ""]
    if not df.empty:
        n_tr = int(df["transition"].sum())
        lines += [f"**Headline:** {df['protocol'].nunique()} protocols, {len(df)} cells, "
                  f"{n_tr} cell(s) with a transition under the rule (clean accuracy), "
                  f"{int(df['transition_conf'].sum())} with conflicting accuracy as the structure measure; "
                  "total training wall time "
                  f"{df['wall_s'].sum() / 60:.1f} min (sum over cells, 1 thread each, on 2 shared cores).", ""]
        lines += ["## Protocols", "", "| protocol | note | cells | transitions | late rise | best score | "
                  "fit (cells) | sustained (cells) | transitions, conflicting acc | wall s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, g in df.groupby("protocol", sort=False):
            lines.append(f"| {name} | {g['note'].iloc[0]} | {len(g)} | {int(g['transition'].sum())} | "
                         f"{int(g['late_rise'].sum())} | {g['score'].max():.2f} | "
                         f"{int(g['t_fit'].notna().sum())} | {int(g['sustained'].sum())} | "
                         f"{int(g['transition_conf'].sum())} | {g['wall_s'].sum():.0f} |")
        lines += ["", "## Cells", "", "| protocol | lambda | seed | status | epochs | t_fit | Lambda_fit | "
                  "V_fit | sustain | t_switch | Lambda_switch | V_switch | dLambda / law | V_init | V_end | clean end | "
                  "reliance end | conflicting end | score | switch (conflicting acc) | regime |",
                  "|" + "---|" * 21]
        for _, r in df.iterrows():
            dl = (f"{fmt(r['delta_Lambda'])} / {fmt(r['delta_Lambda_law'])}" if r["transition"] else "-")
            lines.append(
                f"| {r['protocol']} | {fmt(r['weight_decay'])} | {r['seed']} | {r['status']} | "
                f"{r['epochs_done']}/{r['epochs_planned']} | {fmt(r['t_fit'])} | {fmt(r['Lambda_fit'])} | "
                f"{fmt(r['V_fit'])} | {fmt(r['sustain_epochs'])} | {fmt(r['t_switch'])} | {fmt(r['Lambda_switch'])} | {fmt(r['V_switch'])} | "
                f"{dl} | {fmt(r['V_init'])} | {fmt(r['V_end'])} | {r['clean_end']:.3f} | "
                f"{r['reliance_end']:.3f} | {r['conflicting_end']:.3f} | {r['score']:.2f} | "
                f"{r['transition_conf']} (t {fmt(r['t_switch_conf'])}) | {r['regime']} |")
        best = df.sort_values(["transition", "sustained", "score", "max_rise"], ascending=False).iloc[0]
        lines += ["", "## Best or closest case", "",
                  f"{best['protocol']} lambda {fmt(best['weight_decay'])} seed {best['seed']}: t_fit "
                  f"{fmt(best['t_fit'])} (Lambda {fmt(best['Lambda_fit'])}), reliance >= {SUSTAIN_REL} for "
                  f"{fmt(best['sustain_epochs'])} epochs after the fit, max clean rise after the "
                  f"sustained fit {fmt(best['max_rise'])}, max reliance fall {fmt(best['max_fall'])}, end "
                  f"clean {best['clean_end']:.3f} / reliance {best['reliance_end']:.3f}, V {fmt(best['V_init'])} "
                  f"-> {fmt(best['V_end'])}, score {best['score']:.2f}.", ""]
        for name, g in df.groupby("protocol", sort=False):
            if (g["transition"] | g["transition_conf"] | g["sustained"]).any():
                plot_protocol(name, [c for c in curves if c["protocol"].iloc[0] == name], figdir)
                lines.append(f"![{name}](figures/image_transition_{name}.png)")
    if skipped:
        lines += ["", "Not run (budget): " + ", ".join(skipped)]
    lines += ["", PAPER_SCALE]
    md = docs / "image_transition_search.md"
    findings = _kept_findings(md)
    md.write_text(findings + "\n".join(lines) + "\n")


FINDINGS_END = "<!-- end of hand-written findings; everything below is generated -->"


def _kept_findings(md: Path) -> str:
    """The hand-written findings at the top of an existing report (kept across reruns)."""
    if md.exists():
        text = md.read_text()
        if FINDINGS_END in text:
            return text.split(FINDINGS_END)[0] + FINDINGS_END + "\n\n"
    return ""


def plot_protocol(name: str, curves: list[pd.DataFrame], figdir: Path) -> None:
    """One panel per seed: clean accuracy (solid) and reliance (dashed) vs epoch, V (dash-dot, log, right
    axis); one colour per lambda."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({int(c["seed"].iloc[0]) for c in curves})
    lams = sorted({float(c["weight_decay"].iloc[0]) for c in curves})
    fig, axes = plt.subplots(1, len(seeds), figsize=(5.5 * len(seeds), 4.2), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, seed in zip(axes[0], seeds):
        ax2 = ax.twinx()
        for c in curves:
            if int(c["seed"].iloc[0]) != seed:
                continue
            lam = float(c["weight_decay"].iloc[0])
            col = cmap(lams.index(lam) / max(1, len(lams) - 1) * 0.9)
            ax.plot(c["epoch"], c["test_acc"], color=col, lw=1.4, label=f"lambda {lam:g}: clean")
            ax.plot(c["epoch"], c["phi"], color=col, lw=1.0, ls="--", label=f"lambda {lam:g}: reliance")
            ax2.plot(c["epoch"], c["V"], color=col, lw=0.8, ls="-.", alpha=0.6)
        ax.set(xlabel="epoch", ylim=(0, 1),
               title=f"{name}, seed {seed}")
        ax2.set_yscale("log")
        if ax is axes[0][-1]:
            ax2.set_ylabel("V = ||theta||^2 (dash-dot)")
        if ax is axes[0][0]:
            ax.set_ylabel("clean accuracy (solid), reliance (dashed)")
            ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(figdir / f"image_transition_{name}.png", dpi=80)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", help="protocol names to run (default all); others are reused if done")
    p.add_argument("--budget-min", type=float, default=60.0, help="stop starting protocols after this")
    p.add_argument("--cell-limit-s", type=float, default=150.0, help="time_limit_s of every cell")
    p.add_argument("--work", default=str(REPO / "results" / "image_transition_search"))
    p.add_argument("--docs", default=str(REPO / "docs"))
    p.add_argument("--report-only", action="store_true", help="only tabulate cells already trained")
    p.add_argument("--smoke", action="store_true",
                   help="run SMOKE_PROTOCOL only, --work and --docs in a temporary directory (tests)")
    a = p.parse_args(argv)
    if a.smoke:
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="nht-search-smoke-"))
        try:
            search(a, [SMOKE_PROTOCOL], tmp / "work", tmp / "docs")
            print((tmp / "docs" / "image_transition_search.csv").read_text())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    search(a, PROTOCOLS, Path(a.work), Path(a.docs))


def search(a: argparse.Namespace, protocols: list[dict], work: Path, docs: Path) -> None:
    """Run or tabulate ``protocols`` (options ``a`` of :func:`main`); cells under ``work``, reports
    under ``docs``."""
    torch.set_num_threads(1)
    work.mkdir(parents=True, exist_ok=True)
    logf = open(work / "search.log", "a")

    def log(msg):
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    t0 = time.monotonic()
    rows, skipped = [], []
    for proto in protocols:
        wanted = a.only is None or proto["name"] in a.only
        have = (work / proto["name"]).exists()
        over = time.monotonic() - t0 > a.budget_min * 60
        if (not wanted or a.report_only or over) and not have:
            if wanted and over:
                skipped.append(proto["name"])
            continue
        if (not wanted or a.report_only or over) and have:
            # tabulate what exists without training more
            if all_done(proto, work, a.cell_limit_s):
                rows += run_protocol(proto, work, a.cell_limit_s, log)
            continue
        log(f"protocol {proto['name']}: {proto['note']}")
        rows += run_protocol(proto, work, a.cell_limit_s, log)
        write_reports([dict(r) for r in rows], docs, time.monotonic() - t0, skipped)
    write_reports([dict(r) for r in rows], docs, time.monotonic() - t0, skipped)
    log(f"search done in {(time.monotonic() - t0) / 60:.1f} min")


def all_done(proto: dict, work: Path, limit_s: float) -> bool:
    """True when every cell of ``proto`` has a meta.json (so tabulating trains nothing)."""
    exp = {**COMMON, **copy.deepcopy(proto["exp"]), "time_limit_s": limit_s}
    cfg = validate_config({"experiments": {proto["name"]: exp}})
    return all((work / proto["name"] / c.id / "meta.json").exists() for c in expand_cells(cfg))


if __name__ == "__main__":
    main()
