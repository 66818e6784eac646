"""Stage ``image-fetch``: decode an image dataset once to a uint8 ``.npz`` (real download with
checksums, or a local archive; see :mod:`nht.domains.images.data`)."""

from __future__ import annotations

import argparse
import sys
import time

from nht.core.io import json_arg
from nht.domains.images.data import DatasetError, load_dataset, save_npz


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nht image-fetch", description=__doc__)
    ap.add_argument("--spec", type=json_arg, required=True, help="the experiment's dataset block (JSON or @file)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    try:
        d = load_dataset(a.spec)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    save_npz(d, a.out)
    print(f"fetched {a.spec['name']}/{a.spec['source']}: train {d['x_train'].shape}, test {d['x_test'].shape} "
          f"in {time.monotonic() - t0:.1f}s -> {a.out}")
