"""Modular-arithmetic datasets: every pair (a, b) labelled with (a op b) mod p, split by seed.

A dataset is generated once per (op, p, train_frac, split_seed) and shared by every cell
that uses it (see :data:`nht.config.DATASET_AXES`).
"""

from __future__ import annotations

from pathlib import Path

from nht.core.io import write_atomic

import numpy as np

OPS = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    # a / b = a * b^(p-2) mod p for prime p (Fermat), b != 0
    "div": lambda a, b, p: (a * pow(int(b), p - 2, p)) % p,
    "a2_plus_b2": lambda a, b, p: (a * a + b * b) % p,
    "a2_ab_b2": lambda a, b, p: (a * a + a * b + b * b) % p,
    "a3_ab": lambda a, b, p: (a * a * a + a * b) % p,
}


def modular_table(op: str, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All valid pairs and labels: arrays a, b, y of equal length (b = 0 excluded for div)."""
    if op not in OPS:
        raise ValueError(f"unknown op '{op}', expected one of {sorted(OPS)}")
    fn = OPS[op]
    rows = [(a, b, fn(a, b, p)) for a in range(p) for b in range(p) if not (op == "div" and b == 0)]
    arr = np.array(rows, dtype=np.int64)
    return arr[:, 0], arr[:, 1], arr[:, 2]


def make_modular_dataset(op: str, p: int, train_frac: float, split_seed: int) -> dict[str, np.ndarray]:
    """Generate the dataset: ``x_train`` (n, 2) int64 token pairs, ``y_train``, ``x_test``, ``y_test``.

    The split is a uniformly random permutation drawn from ``numpy.random.default_rng(split_seed)``;
    the first ``round(train_frac * n)`` pairs train, the rest test.
    """
    a, b, y = modular_table(op, p)
    x = np.stack([a, b], axis=1)
    perm = np.random.default_rng(split_seed).permutation(len(y))
    n_train = int(round(train_frac * len(y)))
    if not 0 < n_train < len(y):
        raise ValueError(f"train_frac={train_frac} leaves an empty train or test set for p={p}")
    tr, te = perm[:n_train], perm[n_train:]
    return {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te],
            "p": np.array(p), "op": np.array(op)}


def save_dataset(data: dict[str, np.ndarray], path: str | Path) -> None:
    """Write the dataset atomically (:func:`nht.core.io.write_atomic`), compressed."""
    write_atomic(path, lambda fh: np.savez_compressed(fh, **data))


def load_dataset(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}
