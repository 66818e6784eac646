"""Command line of the image experiments; each Snakemake rule calls exactly one subcommand.

    python -m nht.images fetch     --spec JSON --out RAW.npz
    python -m nht.images inject    --raw RAW.npz --spec JSON --rho R --border W --seed S --out DATA.npz
    python -m nht.images train     --settings JSON --data DATA.npz --out CELL_DIR --cell ID [--device D]
    python -m nht.images figures   --norms N1.json N2.json ... --out-dir DIR [--config JSON]
    python -m nht.images summarize --experiment NAME --norms ... --figures ... --config JSON
                                   --out experiment_summary.json [--table cells.csv]

``--spec``/``--settings``/``--config`` take a JSON string or ``@path`` to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _json_arg(text: str):
    if text.startswith("@"):
        with open(text[1:]) as fh:
            return json.load(fh)
    return json.loads(text)


def cmd_fetch(a):
    from nht.images.data import load_dataset, save_npz
    t0 = time.monotonic()
    d = load_dataset(a.spec)
    save_npz(d, a.out)
    print(f"fetched {a.spec['name']}/{a.spec['source']}: train {d['x_train'].shape}, test {d['x_test'].shape} "
          f"in {time.monotonic() - t0:.1f}s -> {a.out}")


def cmd_inject(a):
    from nht.images.data import load_npz, save_npz
    from nht.images.shortcuts import inject
    raw = load_npz(a.raw)
    s = a.spec
    if s.get("name") == "digits" and a.border > s.get("pad", 4):
        print(f"warning: border {a.border} px exceeds the digits padding {s.get('pad', 4)} px; "
              "it overlaps the digit", file=sys.stderr)
    classes = s.get("classes")
    out = inject(raw, a.rho, a.border, a.seed, s.get("n_train"), s.get("n_test"), s.get("subset_seed", 0),
                 alpha=s.get("border_alpha", 1.0), classes=tuple(classes) if classes else None)
    save_npz(out, a.out)
    print(f"injected rho={a.rho} border={a.border} seed={a.seed}: train {out['x_train'].shape} -> {a.out}")


def cmd_train(a):
    from nht.images.train import train_cell
    res = train_cell(a.settings, a.data, a.out, device=a.device, threads=a.threads,
                     deterministic=not a.nondeterministic, tf32=a.tf32, cell_id=a.cell)
    print(json.dumps({k: res.get(k) for k in ("cell", "status", "regime", "decay_pct", "final_clean_acc",
                                                "final_reliance", "wall_s")}))


def cmd_figures(a):
    from nht.images.figures import make_figures
    for p in make_figures(a.norms, a.out_dir, a.config):
        print(p)


def cmd_summarize(a):
    from nht.images.summary import write_summary
    res = write_summary(a.norms, a.experiment, a.config or {}, a.figures, a.out, a.table)
    print(json.dumps({k: res[k] for k in ("cells", "clean_acc_by_strength", "decay_from_peak", "regimes")}))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nht.images", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    f = sub.add_parser("fetch", help="decode a dataset once to a uint8 .npz")
    f.add_argument("--spec", type=_json_arg, required=True, help="the experiment's dataset block (JSON)")
    f.add_argument("--out", required=True)
    f.set_defaults(func=cmd_fetch)

    i = sub.add_parser("inject", help="add the coloured-border shortcut for one (rho, border, seed)")
    i.add_argument("--raw", required=True)
    i.add_argument("--spec", type=_json_arg, required=True)
    i.add_argument("--rho", type=float, required=True)
    i.add_argument("--border", type=int, required=True, help="border width in pixels")
    i.add_argument("--seed", type=int, required=True)
    i.add_argument("--out", required=True)
    i.set_defaults(func=cmd_inject)

    t = sub.add_parser("train", help="train one cell")
    t.add_argument("--settings", type=_json_arg, required=True, help="the cell's resolved settings (JSON)")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True, help="cell directory")
    t.add_argument("--cell", required=True, help="cell id (guards the checkpoint)")
    t.add_argument("--device", default="auto")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--nondeterministic", action="store_true")
    t.add_argument("--tf32", action="store_true")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("figures", help="draw the experiment's figures")
    g.add_argument("--norms", nargs="+", required=True)
    g.add_argument("--out-dir", required=True)
    g.add_argument("--config", type=_json_arg, default=None)
    g.set_defaults(func=cmd_figures)

    s = sub.add_parser("summarize", help="write experiment_summary.json and cells.csv")
    s.add_argument("--experiment", required=True)
    s.add_argument("--norms", nargs="+", required=True)
    s.add_argument("--figures", nargs="*", default=[])
    s.add_argument("--config", type=_json_arg, default=None)
    s.add_argument("--out", required=True)
    s.add_argument("--table", default=None)
    s.set_defaults(func=cmd_summarize)

    a = p.parse_args(argv)
    from nht.images.data import DatasetError
    try:
        a.func(a)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
