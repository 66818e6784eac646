"""One way to write and read result files: atomic (write to a unique temporary name, then rename),
JSON without NaN (written as null), so a reader never sees a half-written or invalid file."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable


def clean_nan(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN/inf)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_nan(v) for v in obj]
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
    write_atomic(path, json.dumps(clean_nan(obj), indent=1, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def json_arg(text: str):
    """A command-line JSON value: a JSON string, or ``@path`` to a JSON file."""
    if text.startswith("@"):
        return read_json(text[1:])
    return json.loads(text)
