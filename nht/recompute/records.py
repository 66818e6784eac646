"""Job records: what one finished job read, ran and wrote (see :mod:`nht.recompute`).

A record is a JSON file ``<records_dir>/<stage>.json``::

    {"stage": "train_modular@experiment=e,job=j", "rule": "train_modular",
     "wildcards": {...}, "definition": "<hash of rule source, params, input list>",
     "code": "<code fingerprint>", "code_set": ["nht.domains.modular.train", ...],
     "inputs": {path: md5}, "outputs": {path: md5},
     "forced_by": ".nht/force/<stage>/<digest>" or "", "log": {"path": ..., "md5": ...},
     "started": ISO time, "finished": ISO time, "host": ...}

``forced_by`` is the force stamp the job last ran under: stamps are unique per decision, so the
end of a run knows by content which stale jobs it renewed (:mod:`.publish`). A forced job that
finds its record still describes it restores its outputs instead and leaves the record as it is
(byte for byte); it notes the stamp in ``.nht/renewed/<stage>`` (:func:`mark_renewed`). ``log`` is
the job's log as that run left it, so a restore can put it back from DVC's cache (:mod:`.job`).
Times are for people; no decision reads them.

Paths are relative to the workflow's working directory. md5 is DVC's file hash (plain md5 of the
bytes), so a recorded output can be found in DVC's cache.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import shutil
from pathlib import Path

from nht.core.io import write_atomic

FORCE_DIR = ".nht/force"
QUARANTINE_DIR = ".nht/quarantine"
RENEWED_DIR = ".nht/renewed"
CHUNK = 1 << 20


def stage_name(rule: str, wildcards: dict) -> str:
    """One job's stable name: ``rule@k=v,k=v`` (wildcards sorted by name)."""
    return rule + "@" + ",".join(f"{k}={wildcards[k]}" for k in sorted(wildcards))


def file_md5(path: str | Path) -> str | None:
    """md5 of a file's bytes, or None when it does not exist."""
    h = hashlib.md5()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(CHUNK):
                h.update(block)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return h.hexdigest()


def record_path(records_dir: str | Path, stage: str) -> Path:
    return Path(records_dir) / f"{stage}.json"


class Unreadable(dict):
    """Stands for a record file that exists but cannot be parsed (treated as stale)."""


def read_record(path: str | Path) -> dict | None:
    """The record at ``path``; None when missing; an :class:`Unreadable` when corrupt."""
    try:
        with open(path) as fh:
            rec = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return Unreadable()
    if not isinstance(rec, dict) or not {"stage", "rule", "definition", "code", "inputs", "outputs"} <= rec.keys():
        return Unreadable()
    return rec


def write_record(path: str | Path, rec: dict) -> None:
    """Write a record atomically (unique temporary name, then rename)."""
    write_atomic(path, json.dumps(rec, indent=1, sort_keys=True) + "\n")


def load_records(records_dir: str | Path) -> dict[str, dict]:
    """Every record in a directory, by stage name (unreadable ones included as Unreadable)."""
    out = {}
    d = Path(records_dir)
    if not d.is_dir():
        return out
    for p in d.glob("*.json"):
        rec = read_record(p)
        if rec is not None:
            out[p.stem] = rec
    return out


def mark_renewed(stage: str, stamp: str, root: str | Path = ".") -> None:
    """Note that a forced job (force stamp ``stamp``) found its outputs current or restored them."""
    write_atomic(Path(root) / RENEWED_DIR / stage, stamp + "\n")


def renewed_stamp(stage: str, root: str | Path = ".") -> str:
    """The force stamp under which a job last restored or confirmed its outputs ("" if never)."""
    try:
        return (Path(root) / RENEWED_DIR / stage).read_text().strip()
    except OSError:
        return ""


# ----------------------------------------------------------------------------- DVC cache

def dvc_cache_dir(root: str | Path = ".") -> Path | None:
    """DVC's cache directory of the repository at ``root`` (None when it is not a DVC repo).

    Read from ``.dvc/config.local`` / ``.dvc/config`` (``[cache] dir``), default ``.dvc/cache``.
    """
    dvc = Path(root) / ".dvc"
    if not dvc.is_dir():
        return None
    for name in ("config.local", "config"):
        cp = configparser.ConfigParser()
        try:
            cp.read(dvc / name)
        except configparser.Error:
            continue
        if cp.has_option("cache", "dir"):
            d = Path(cp.get("cache", "dir"))
            return d if d.is_absolute() else (dvc / d)
    return dvc / "cache"


def cache_object(cache: Path | None, md5: str) -> Path | None:
    """Path of a file's object in DVC's cache (DVC 3 layout ``files/md5/ab/cdef...``), or None."""
    if cache is None or not md5:
        return None
    p = cache / "files" / "md5" / md5[:2] / md5[2:]
    return p if p.is_file() else None


def restore_file(cache: Path | None, md5: str, dest: str | Path) -> bool:
    """Copy a cached object to ``dest`` if its bytes still hash to ``md5`` (atomic rename)."""
    src = cache_object(cache, md5)
    if src is None or file_md5(src) != md5:
        return False
    with open(src, "rb") as fh_src:
        write_atomic(dest, lambda fh: shutil.copyfileobj(fh_src, fh))
    return True
