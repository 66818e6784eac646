"""One way to write and read result files: atomic (write to a unique temporary name, then rename),
JSON without NaN (written as null), so a reader never sees a half-written or invalid file."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import pandas as pd


def finite_or_none(value) -> float | None:
    """``float(value)`` if it is a finite number, else ``None`` (JSON has no NaN): the one NaN/inf
    to None rule of the project, for one value (:func:`clean_json` applies it to a whole document)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def clean_json(obj: Any) -> Any:
    """``obj`` made JSON-safe, recursively: numpy scalars and arrays become Python values, and
    every NaN/inf (and pandas' missing values) becomes None, since JSON has no NaN. The one NaN
    cleaner of the project."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [clean_json(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return finite_or_none(obj)
    if obj is None or isinstance(obj, str):
        return obj
    try:
        if pd.isna(obj):
            return None
    except (TypeError, ValueError):
        pass
    return obj


def write_atomic(path: str | Path, data: bytes | str | Callable[[BinaryIO], Any]) -> None:
    """Write ``data`` to ``path`` through a temporary file unique to this process, then rename, so
    a reader never sees a half-written file and concurrent writers never mix. ``data`` is text,
    bytes, or a function that writes into the open binary file (``torch.save``, ``np.savez``, a
    copy), so large objects are streamed, not held twice in memory. The file is mode 0644."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(obj: Any, path: str | Path) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON (NaN -> null)."""
    write_atomic(path, json.dumps(clean_json(obj), indent=1, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def stable_hash(obj: Any, length: int = 8) -> str:
    """Hex digest of a JSON-serialisable object, independent of dict order (cell, job and dataset
    ids; checkpoint signatures)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def json_arg(text: str):
    """A command-line JSON value: a JSON string, or ``@path`` to a JSON file."""
    if text.startswith("@"):
        return read_json(text[1:])
    return json.loads(text)
