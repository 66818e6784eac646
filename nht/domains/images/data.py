"""Image datasets, decoded once to a compact uint8 ``.npz`` (never per job or per epoch).

Every loader returns a dict of numpy arrays with images as ``uint8`` in ``(N, 3, H, W)`` order::

    x_train, y_train, x_test, y_test    images and integer labels
    a_train, a_test                     spurious attribute (CelebA, Waterbirds only)
    classes                             class names, index = label

Sources (``dataset.source`` in the config):

* ``digits`` / ``sklearn``: scikit-learn's bundled 8x8 digits (1,797 images, no download), scaled to
  0-255, zero-padded by ``pad`` pixels per side so a border of width <= pad lies outside the digit.
* ``cifar10`` / ``torchvision``: ``torchvision.datasets.CIFAR10(download=True)`` with its md5 check.
* ``cifar10`` / ``python_archive``: the official ``cifar-10-python.tar.gz`` (pickled batches) from a local
  path; its md5 is checked against the official one unless ``md5: null``.
* ``cifar10`` / ``local_archive``: a ``.tar[.gz]`` archive or a folder of image files in a
  ``{train,test}/<class>/`` layout (e.g. ``../shared/data/cifar10-jpeg.tar.gz``, a JPEG re-encoding whose
  pixels differ slightly from the official ones). Never used unless the config asks for it.
* ``celeba`` / ``folder`` (or ``torchvision`` to download through torchvision first): torchvision's on-disk
  layout ``img_align_celeba/``, ``list_attr_celeba.txt``, ``list_eval_partition.txt``.
* ``waterbirds`` / ``folder``: the standard folder with ``metadata.csv`` (img_filename, y, place, split).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from nht.core.io import write_atomic

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CIFAR10_PYTHON_MD5 = "c58f30108f718f92721af3b95e74349a"   # cifar-10-python.tar.gz, as in torchvision
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif")

CELEBA_LAYOUT = ("expected CelebA in torchvision's layout: <root>/img_align_celeba/*.jpg, "
                 "<root>/list_attr_celeba.txt, <root>/list_eval_partition.txt (or <root>/celeba/...)")
WATERBIRDS_LAYOUT = ("expected Waterbirds in its standard folder: <root>/metadata.csv with columns "
                     "img_filename, y, place, split (0 train, 1 val, 2 test) and the images at "
                     "<root>/<img_filename>; download waterbird_complete95_forest2water2.tar.gz from the "
                     "authors (group DRO, Sagawa et al. 2020) and unpack it")


class DatasetError(RuntimeError):
    """A dataset file is missing, corrupted or not in the expected layout."""


# ----------------------------------------------------------------------------- helpers

def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _hwc_to_chw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _decode_image(blob: bytes, name: str, size: int | None = None, crop: str | None = None) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(io.BytesIO(blob)) as im:
            im = im.convert("RGB")
            if crop == "center_square":
                w, h = im.size
                s = min(w, h)
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except Exception as exc:  # PIL raises several types on a bad file
        raise DatasetError(f"cannot decode image '{name}': {exc}") from exc


def _check_file(path: Path, what: str, layout: str = "") -> None:
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}" + (f"; {layout}" if layout else ""))


# ----------------------------------------------------------------------------- digits

def load_digits(pad: int = 4) -> dict:
    """scikit-learn's bundled 8x8 digits, padded with ``pad`` zero pixels per side, as RGB.

    Split: a fixed stratified 80/20 train/test split (seed 0), the same on every machine.
    """
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)          # (N, 8, 8) in 0..255
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    x = np.repeat(x[:, None], 3, axis=1)                                  # (N, 3, H, W)
    y = bunch.target.astype(np.int64)
    rng = np.random.default_rng(0)
    test = np.zeros(len(y), bool)
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        test[rng.permutation(idx)[: int(round(0.2 * len(idx)))]] = True
    return {"x_train": x[~test], "y_train": y[~test], "x_test": x[test], "y_test": y[test],
            "classes": np.array([str(k) for k in range(10)])}


# ----------------------------------------------------------------------------- CIFAR-10

def load_cifar10_torchvision(root: str | Path) -> dict:
    """The official download through torchvision (md5-checked by torchvision itself)."""
    from torchvision.datasets import CIFAR10

    out = {}
    for split, train in (("train", True), ("test", False)):
        try:
            ds = CIFAR10(str(root), train=train, download=True)
        except Exception as exc:
            raise DatasetError(f"torchvision CIFAR10(download=True) into '{root}' failed: {exc}. "
                               "Without internet, use source: python_archive (the official "
                               "cifar-10-python.tar.gz) or source: local_archive.") from exc
        out[f"x_{split}"] = _hwc_to_chw(np.asarray(ds.data, dtype=np.uint8))
        out[f"y_{split}"] = np.asarray(ds.targets, dtype=np.int64)
    out["classes"] = np.array(CIFAR10_CLASSES)
    return out


def load_cifar10_python_archive(archive: str | Path, md5: str | None = CIFAR10_PYTHON_MD5) -> dict:
    """The official ``cifar-10-python.tar.gz`` (``cifar-10-batches-py/{data_batch_1..5,test_batch}``)."""
    archive = Path(archive)
    _check_file(archive, "CIFAR-10 python archive",
                "expected the official cifar-10-python.tar.gz holding cifar-10-batches-py/")
    if md5:
        got = md5sum(archive)
        if got != md5:
            raise DatasetError(f"{archive}: md5 {got} does not match the expected {md5} "
                               "(corrupted or not the official cifar-10-python.tar.gz)")
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                base = os.path.basename(member.name)
                if member.isfile() and base in names:
                    batches[base] = pickle.load(tar.extractfile(member), encoding="bytes")
    except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise DatasetError(f"{archive}: cannot read the CIFAR-10 archive ({exc}); is it corrupted?") from exc
    missing = [n for n in names if n not in batches]
    if missing:
        raise DatasetError(f"{archive}: missing {missing} (expected cifar-10-batches-py/data_batch_1..5 "
                           "and test_batch)")

    def stack(keys):
        try:
            xs = [np.asarray(batches[k][b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for k in keys]
            ys = [np.asarray(batches[k][b"labels"], dtype=np.int64) for k in keys]
        except (KeyError, ValueError) as exc:
            raise DatasetError(f"{archive}: a batch is not in CIFAR-10's pickle format ({exc})") from exc
        return np.concatenate(xs), np.concatenate(ys)

    x_train, y_train = stack(names[:5])
    x_test, y_test = stack(names[5:])
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "classes": np.array(CIFAR10_CLASSES)}


def _iter_image_folder(archive: Path):
    """Yield (relative path parts, bytes) for every image file in a tar archive or a folder."""
    if archive.is_dir():
        for path in sorted(archive.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                yield path.relative_to(archive).parts, path.read_bytes()
        return
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                if member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                    yield Path(member.name).parts, tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DatasetError(f"{archive}: cannot read the image archive ({exc}); is it corrupted?") from exc


def load_image_folder_archive(archive: str | Path, classes: tuple[str, ...] | None = CIFAR10_CLASSES,
                              size: int | None = 32) -> dict:
    """An archive (.tar, .tar.gz) or folder of images in a ``[<top>/]{train,test}/<class>/<file>`` layout.

    Labels are the index of the class folder in ``classes`` (CIFAR-10's official order, which is also
    alphabetical) or, when ``classes`` is None, in the sorted list of class folders found.
    """
    archive = Path(archive)
    layout = "expected an archive or folder with {train,test}/<class>/<image> (e.g. cifar10-jpeg.tar.gz)"
    _check_file(archive, "image archive", layout)
    items = {"train": [], "test": []}
    for parts, blob in _iter_image_folder(archive):
        split_pos = [i for i, p in enumerate(parts[:-2]) if p in ("train", "test")]
        if not split_pos:
            continue
        i = split_pos[-1]
        if len(parts) != i + 3:
            continue
        items[parts[i]].append((parts[i + 1], "/".join(parts), blob))
    for split in ("train", "test"):
        if not items[split]:
            raise DatasetError(f"{archive}: no images under {split}/<class>/; {layout}")
    found = sorted({c for split in items.values() for c, _, _ in split})
    names = tuple(classes) if classes is not None else tuple(found)
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DatasetError(f"{archive}: unexpected class folders {unknown}; expected {list(names)}")
    index = {c: k for k, c in enumerate(names)}
    out = {}
    for split in ("train", "test"):
        rows = sorted(items[split], key=lambda t: (index[t[0]], t[1]))
        x = np.stack([_decode_image(blob, name, size) for _, name, blob in rows])
        out[f"x_{split}"] = _hwc_to_chw(x)
        out[f"y_{split}"] = np.array([index[c] for c, _, _ in rows], dtype=np.int64)
    out["classes"] = np.array(names)
    return out


# ----------------------------------------------------------------------------- CelebA

def _celeba_root(root: Path) -> Path:
    for cand in (root, root / "celeba"):
        if (cand / "list_attr_celeba.txt").exists():
            return cand
    raise DatasetError(f"CelebA not found under {root}: no list_attr_celeba.txt; {CELEBA_LAYOUT}")


def load_celeba(root: str | Path, target_attr: str = "Smiling", spurious_attr: str = "Blond_Hair",
                size: int = 32, max_train: int | None = None, max_test: int | None = None,
                subset_seed: int = 0, download: bool = False) -> dict:
    """CelebA from torchvision's on-disk layout; label = target_attr, spurious = spurious_attr.

    Test = the official test partition (2). Images are centre-cropped to a square and resized to
    ``size``. ``max_train``/``max_test`` draw a fixed random subset (``subset_seed``) before decoding.
    """
    root = Path(root)
    if download:
        from torchvision.datasets import CelebA
        try:
            CelebA(str(root), split="all", target_type="attr", download=True)
        except Exception as exc:
            raise DatasetError(f"torchvision CelebA download into '{root}' failed: {exc}; "
                               f"{CELEBA_LAYOUT}") from exc
    base = _celeba_root(root)
    for name in ("list_eval_partition.txt",):
        _check_file(base / name, "CelebA file", CELEBA_LAYOUT)
    img_dir = base / "img_align_celeba"
    _check_file(img_dir, "CelebA image folder", CELEBA_LAYOUT)
    try:
        lines = (base / "list_attr_celeba.txt").read_text().splitlines()
        attr_names = lines[1].split()
        attrs = {}
        for line in lines[2:]:
            f = line.split()
            if f:
                attrs[f[0]] = [int(v) for v in f[1:]]
        part = {}
        for line in (base / "list_eval_partition.txt").read_text().splitlines():
            f = line.split()
            if f:
                part[f[0]] = int(f[1])
    except (IndexError, ValueError) as exc:
        raise DatasetError(f"{base}: malformed CelebA attribute/partition file ({exc}); {CELEBA_LAYOUT}") from exc
    for a in (target_attr, spurious_attr):
        if a not in attr_names:
            raise DatasetError(f"{base}/list_attr_celeba.txt has no attribute '{a}' "
                               f"(known: {', '.join(attr_names)})")
    ti, si = attr_names.index(target_attr), attr_names.index(spurious_attr)
    rng = np.random.default_rng(subset_seed)
    out = {}
    for split, code, cap in (("train", 0, max_train), ("test", 2, max_test)):
        files = sorted(f for f, p in part.items() if p == code)
        if cap is not None and len(files) > cap:
            files = sorted(rng.choice(files, cap, replace=False).tolist())
        if not files:
            raise DatasetError(f"{base}: no images in partition {code} ({split})")
        xs = []
        for f in files:
            path = img_dir / f
            _check_file(path, "CelebA image", CELEBA_LAYOUT)
            xs.append(_decode_image(path.read_bytes(), str(path), size, crop="center_square"))
        out[f"x_{split}"] = _hwc_to_chw(np.stack(xs))
        out[f"y_{split}"] = np.array([attrs[f][ti] > 0 for f in files], dtype=np.int64)
        out[f"a_{split}"] = np.array([attrs[f][si] > 0 for f in files], dtype=np.int64)
    out["classes"] = np.array([f"not_{target_attr}", target_attr])
    return out


# ----------------------------------------------------------------------------- Waterbirds

def load_waterbirds(root: str | Path, size: int = 32, max_train: int | None = None,
                    max_test: int | None = None, subset_seed: int = 0) -> dict:
    """Waterbirds from its standard folder: label y (0 landbird, 1 waterbird), spurious = place."""
    import pandas as pd

    root = Path(root)
    meta = root / "metadata.csv"
    _check_file(meta, "Waterbirds metadata.csv", WATERBIRDS_LAYOUT)
    try:
        df = pd.read_csv(meta)
    except Exception as exc:
        raise DatasetError(f"{meta}: cannot parse ({exc}); {WATERBIRDS_LAYOUT}") from exc
    need = {"img_filename", "y", "place", "split"}
    if not need <= set(df.columns):
        raise DatasetError(f"{meta}: missing columns {sorted(need - set(df.columns))}; {WATERBIRDS_LAYOUT}")
    rng = np.random.default_rng(subset_seed)
    out = {}
    for split, code, cap in (("train", 0, max_train), ("test", 2, max_test)):
        rows = df[df["split"] == code].sort_values("img_filename")
        if cap is not None and len(rows) > cap:
            rows = rows.iloc[np.sort(rng.choice(len(rows), cap, replace=False))]
        if rows.empty:
            raise DatasetError(f"{meta}: no rows with split == {code} ({split})")
        xs = []
        for f in rows["img_filename"]:
            path = root / f
            _check_file(path, "Waterbirds image", WATERBIRDS_LAYOUT)
            xs.append(_decode_image(path.read_bytes(), str(path), size, crop="center_square"))
        out[f"x_{split}"] = _hwc_to_chw(np.stack(xs))
        out[f"y_{split}"] = rows["y"].to_numpy(np.int64)
        out[f"a_{split}"] = rows["place"].to_numpy(np.int64)
    out["classes"] = np.array(["landbird", "waterbird"])
    return out


# ----------------------------------------------------------------------------- dispatch

def resolve_path(path: str | None, base: str | Path | None = None) -> Path | None:
    """A config path, relative to ``base`` (the working directory, i.e. the repository root)."""
    if path is None:
        return None
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() or base is None else Path(base) / p


def load_dataset(spec: dict, base: str | Path | None = None) -> dict:
    """Load the dataset described by an experiment's ``dataset`` block (see the schema)."""
    name, source = spec["name"], spec["source"]
    size = spec.get("image_size")
    if name == "digits":
        if source != "sklearn":
            raise DatasetError(f"dataset digits has only source 'sklearn', not '{source}'")
        return load_digits(spec.get("pad", 4))
    if name == "cifar10":
        if source == "torchvision":
            return load_cifar10_torchvision(resolve_path(spec.get("root") or "data/image/torchvision", base))
        if source == "python_archive":
            md5 = spec.get("md5", "official")
            md5 = CIFAR10_PYTHON_MD5 if md5 == "official" else md5
            return load_cifar10_python_archive(resolve_path(spec["archive"], base), md5)
        if source == "local_archive":
            return load_image_folder_archive(resolve_path(spec["archive"], base), CIFAR10_CLASSES, size or 32)
    if name == "image_folder" and source == "local_archive":
        return load_image_folder_archive(resolve_path(spec["archive"], base), None, size or 32)
    if name == "celeba" and source in ("folder", "torchvision"):
        return load_celeba(resolve_path(spec["root"], base), spec.get("target_attr", "Smiling"),
                           spec.get("spurious_attr", "Blond_Hair"), size or 32, spec.get("max_train"),
                           spec.get("max_test"), spec.get("subset_seed", 0), download=source == "torchvision")
    if name == "waterbirds" and source == "folder":
        return load_waterbirds(resolve_path(spec["root"], base), size or 32, spec.get("max_train"),
                               spec.get("max_test"), spec.get("subset_seed", 0))
    raise DatasetError(f"unsupported dataset/source combination: {name}/{source}")


def save_npz(arrays: dict, path: str | Path) -> None:
    """Write arrays atomically (:func:`nht.core.io.write_atomic`) so a killed job leaves no half file."""
    write_atomic(path, lambda fh: np.savez(fh, **arrays))


def load_npz(path: str | Path) -> dict:
    path = Path(path)
    _check_file(path, "dataset file")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:
        raise DatasetError(f"{path}: cannot read the dataset file ({exc}); delete it and rerun") from exc
