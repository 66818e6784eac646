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
bytes), so a recorded output can be compared with what DVC's snapshot holds (:class:`DvcSnapshot`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
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


# ----------------------------------------------------------------------------- DVC, through its CLI

def dvc(*args: str, root: str | Path = ".") -> subprocess.CompletedProcess:
    """Run the DVC CLI in ``root``; while another DVC process holds the repository's lock, DVC
    waits for it (``--wait-for-lock``)."""
    here = Path(sys.executable).parent / "dvc"
    exe = str(here) if here.exists() else (shutil.which("dvc") or "dvc")
    return subprocess.run([exe, "--wait-for-lock", *args], cwd=root, capture_output=True, text=True)


class DvcSnapshot:
    """What DVC's last snapshot (``dvc add``: ``data.dvc``, ``results.dvc``, ``logs.dvc``) can put
    back, asked through DVC's own CLI: ``dvc ls --show-hash`` (the md5 of each file the snapshot
    tracks), ``dvc data status`` (which of them DVC's cache lacks) and ``dvc checkout`` (the
    restore). Only a file the snapshot holds at the recorded md5, with its bytes in the cache, is
    restorable; a restore is checked by md5 afterwards. Not a DVC repository: nothing is."""

    def __init__(self, root: str | Path = "."):
        self.root = Path(root)
        self._tracked: dict[str, dict[str, str]] = {}
        self._not_in_cache: set[str] | None = None

    def _rel(self, path: str) -> str | None:
        """``path`` as DVC names it: relative to the repository, symlinks resolved; None outside it."""
        try:
            return (self.root / path).resolve().relative_to(self.root.resolve()).as_posix()
        except (OSError, ValueError):
            return None

    def _md5s_under(self, top: str) -> dict[str, str]:
        if top not in self._tracked:
            proc = dvc("ls", "--json", "--show-hash", "-R", ".", top, root=self.root)
            try:
                entries = json.loads(proc.stdout) if proc.returncode == 0 else []
            except ValueError:
                entries = []
            self._tracked[top] = {f"{top}/{e['path']}": e.get("md5") for e in entries
                                  if isinstance(e, dict) and not e.get("isdir") and e.get("path")}
        return self._tracked[top]

    def _missing_from_cache(self) -> set[str]:
        if self._not_in_cache is None:
            proc = dvc("data", "status", "--granular", "--json", root=self.root)
            try:
                status = json.loads(proc.stdout) if proc.returncode == 0 else None
            except ValueError:
                status = None
            # unknown (DVC failed): nothing counts as cached
            self._not_in_cache = set(status.get("not_in_cache") or []) if isinstance(status, dict) else None
        return self._not_in_cache

    def restorable(self, path: str, md5: str) -> bool:
        """Whether ``dvc checkout`` would put back ``path`` with exactly this md5."""
        rel = self._rel(path)
        if not md5 or rel is None or not (self.root / ".dvc").is_dir():
            return False
        if self._md5s_under(rel.split("/", 1)[0]).get(rel) != md5:
            return False
        missing = self._missing_from_cache()
        return missing is not None and rel not in missing

    def restore(self, want: dict[str, str]) -> list[str]:
        """Put back every ``path: md5`` of ``want`` that is restorable (``dvc checkout --force``);
        the paths that now hold their md5."""
        paths = {p: self._rel(p) for p, m in want.items() if self.restorable(p, m)}
        if paths:
            dvc("checkout", "--force", *paths.values(), root=self.root)
        return [p for p in paths if file_md5(self.root / p) == want[p]]
