"""Stage ``image-shortcut``: add the coloured-border shortcut for one (rho, border, seed) and
build the four test sets (clean, aligned, conflicting, shortcut-only)."""

from __future__ import annotations

import argparse
import sys

from nht.core.io import json_arg
from nht.domains.images.data import load_npz, save_npz
from nht.domains.images.shortcuts import inject


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht image-shortcut", description=__doc__)
    ap.add_argument("--raw", required=True)
    ap.add_argument("--spec", type=json_arg, required=True)
    ap.add_argument("--rho", type=float, required=True)
    ap.add_argument("--border", type=int, required=True, help="border width in pixels")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    raw, s = load_npz(a.raw), a.spec
    if s.get("name") == "digits" and a.border > s.get("pad", 4):
        print(f"warning: border {a.border} px exceeds the digits padding {s.get('pad', 4)} px; "
              "it overlaps the digit", file=sys.stderr)
    classes = s.get("classes")
    out = inject(raw, a.rho, a.border, a.seed, s.get("n_train"), s.get("n_test"), s.get("subset_seed", 0),
                 alpha=s.get("border_alpha", 1.0), classes=tuple(classes) if classes else None)
    save_npz(out, a.out)
    print(f"injected rho={a.rho} border={a.border} seed={a.seed}: train {out['x_train'].shape} -> {a.out}")
