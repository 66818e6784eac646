"""Spurious-border shortcut injection.

A border of ``width`` pixels is painted around every training image. Its colour is the label's colour
from a fixed palette with probability ``rho`` and, otherwise, the colour of another class drawn
uniformly. ``rho = 1/K`` (K classes) makes the border carry no information about the label.

Test sets built from the same test images:

* ``clean``          no border (the original image);
* ``aligned``        border in the label's colour;
* ``conflicting``    border in another class's colour (``c_conflicting`` holds that class);
* ``shortcut_only``  border in the label's colour on a uniform grey image (value 128).

Everything is deterministic per (dataset, rho, width, seed): the random draws come from
``numpy.random.default_rng([seed, round(rho * 1e6), width])``.

A weak cue: ``alpha`` < 1 (keyword of :func:`inject` / :func:`add_border`) blends the border colour into
the image, pixel = (1 - alpha) * image + alpha * colour, rounded to uint8; ``alpha = 1`` (the default)
paints the colour over the frame as before.
"""

from __future__ import annotations

import numpy as np

# Ten well-separated RGB colours; classes beyond ten get deterministic extra colours.
PALETTE = np.array([
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 190],
], dtype=np.uint8)
GREY = 128


def palette(n_classes: int) -> np.ndarray:
    """(n_classes, 3) uint8 colours; the first ten are :data:`PALETTE`."""
    if n_classes <= len(PALETTE):
        return PALETTE[:n_classes].copy()
    extra = np.random.default_rng(12345).integers(0, 256, (n_classes - len(PALETTE), 3), dtype=np.uint8)
    return np.concatenate([PALETTE, extra])


def border_mask(height: int, width_px: int, border: int) -> np.ndarray:
    """Boolean (H, W) mask of the outer frame of ``border`` pixels."""
    mask = np.zeros((height, width_px), bool)
    if border > 0:
        mask[:border, :] = mask[-border:, :] = True
        mask[:, :border] = mask[:, -border:] = True
    return mask


def add_border(x: np.ndarray, colour_idx: np.ndarray, border: int, colours: np.ndarray,
               alpha: float = 1.0) -> np.ndarray:
    """Copy of uint8 images ``x`` (N, 3, H, W) with a frame of ``border`` px in ``colours[colour_idx]``,
    blended with weight ``alpha`` (1 = opaque)."""
    out = x.copy()
    if border <= 0:
        return out
    mask = border_mask(x.shape[2], x.shape[3], border)
    rgb = colours[colour_idx]                                  # (N, 3)
    if alpha >= 1.0:
        out[:, :, mask] = rgb[:, :, None]
    else:
        frame = out[:, :, mask].astype(np.float64)
        out[:, :, mask] = np.rint((1.0 - alpha) * frame + alpha * rgb[:, :, None]).clip(0, 255).astype(np.uint8)
    return out


def draw_colours(y: np.ndarray, rho: float, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Border class per image: the label with probability rho, else another class uniformly."""
    keep = rng.random(len(y)) < rho
    other = other_class(y, n_classes, rng)
    return np.where(keep, y, other).astype(np.int64)


def other_class(y: np.ndarray, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """A class different from ``y``, uniformly among the other K-1."""
    shift = rng.integers(1, n_classes, len(y))
    return (y + shift) % n_classes


def subset(n: int, cap: int | None, seed: int, y: np.ndarray | None = None) -> np.ndarray:
    """Indices of a fixed random subset of size ``cap`` (all when cap is None), sorted."""
    if cap is None or cap >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def restrict_classes(raw: dict, classes) -> dict:
    """Raw dataset keeping only labels in ``classes``, relabelled by their position in ``classes``."""
    keep = [int(c) for c in classes]
    lut = {c: i for i, c in enumerate(keep)}
    out = dict(raw)
    for split in ("train", "test"):
        m = np.isin(raw[f"y_{split}"], keep)
        out[f"x_{split}"] = raw[f"x_{split}"][m]
        out[f"y_{split}"] = np.array([lut[int(v)] for v in raw[f"y_{split}"][m]], dtype=np.int64)
        if f"a_{split}" in raw:
            out[f"a_{split}"] = raw[f"a_{split}"][m]
    out["classes"] = np.asarray(raw["classes"])[keep]
    return out


def inject(raw: dict, rho: float, width: int, seed: int, n_train: int | None = None,
           n_test: int | None = None, subset_seed: int = 0, alpha: float = 1.0,
           classes: tuple[int, ...] | None = None) -> dict:
    """Build the shortcut dataset of one (rho, width, seed) from a decoded raw dataset.

    ``n_train``/``n_test`` take a fixed random subset (``subset_seed``, identical for every cell of an
    experiment). ``alpha`` < 1 blends the border (a weaker cue). ``classes`` keeps only those labels
    (relabelled 0..k-1 in the given order, e.g. (0, 1) for 2-class digits) before subsetting. Returns uint8 images (N, 3, H, W) and int64 labels::

        x_train, y_train, c_train          training images, labels, border class
        x_clean, x_aligned, x_conflicting, x_shortcut_only, y_test, c_conflicting
        a_train, a_test                    spurious attribute, when the raw dataset has one
    """
    if classes is not None:
        raw = restrict_classes(raw, classes)
    y_all = raw["y_train"]
    n_classes = int(len(raw["classes"]))
    tr = subset(len(y_all), n_train, subset_seed)
    te = subset(len(raw["y_test"]), n_test, subset_seed + 1)
    x_train, y_train = raw["x_train"][tr], raw["y_train"][tr]
    x_test, y_test = raw["x_test"][te], raw["y_test"][te]
    colours = palette(n_classes)
    rng = np.random.default_rng([int(seed), int(round(rho * 1e6)), int(width)])
    c_train = draw_colours(y_train, rho, n_classes, rng)
    c_conf = other_class(y_test, n_classes, rng)
    grey = np.full_like(x_test, GREY)
    out = {
        "x_train": add_border(x_train, c_train, width, colours, alpha),
        "y_train": y_train, "c_train": c_train,
        "x_clean": x_test,
        "x_aligned": add_border(x_test, y_test, width, colours, alpha),
        "x_conflicting": add_border(x_test, c_conf, width, colours, alpha),
        "x_shortcut_only": add_border(grey, y_test, width, colours, alpha),
        "y_test": y_test, "c_conflicting": c_conf,
        "classes": raw["classes"], "palette": colours,
        "params": np.array([rho, width, seed], dtype=np.float64),
    }
    for key in ("a_train", "a_test"):
        if key in raw:
            out[key] = raw[key][tr if key == "a_train" else te]
    return out
