"""End of a run (``onsuccess``/``onerror``): quarantine what is not current, then snapshot into DVC.

Runs in Snakemake's main process after the jobs (never in a dry run: Snakemake calls neither
handler then), and only does work when a job of this run wrote a record:

1. Outputs of this run's jobs that are *not current* are moved to ``.nht/quarantine/<time>/``:
   those of stale jobs that did not rerun (a job failed upstream, the run was cut short) and any
   output whose content differs from its record (a partial file). So a stale or corrupt file is
   never left in place looking current, and never enters DVC. Judged by content only, never by
   file times: a stale job counts as renewed when its record, or its restore's note
   (``.nht/renewed/<stage>``), names this run's decision (the job's force stamp, unique per
   decision; :mod:`.job`), and then its outputs must match that record.
2. With DVC on (``dvc.enabled``: auto = when ``.dvc/`` exists), ``dvc add`` snapshots the data,
   results and log directories into DVC's cache (``data.dvc``, ``results.dvc``, ``logs.dvc``),
   ready for ``dvc push``; and the top level of ``dvc.yaml`` (metrics, plots, params) is written,
   for ``dvc metrics/plots/params``. Both under a file lock of ours (``filelock``) and DVC's own
   repository lock (``dvc --wait-for-lock``), so two runs, or a run beside ``dvc push``, wait for
   each other instead of losing a write.
   DVC tracks only paths inside its repository: a directory given as an absolute path or reached
   through a symlink is snapshotted under the path it resolves to inside the repository (e.g.
   ``store/results.dvc`` for ``results -> store/results``); one that resolves outside the repository
   is not snapshotted, and a warning says so and what to do (:func:`dvc_targets`).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from nht.recompute.records import QUARANTINE_DIR, dvc, file_md5, load_records, renewed_stamp

LOCK_FILE = ".dvc/tmp/nht-publish.lock"


def is_enabled(config: dict, root: str | Path = ".") -> bool:
    """``dvc.enabled``: true, false or "auto" (on when ``<root>/.dvc`` exists); NHT_DVC=0 turns it off."""
    env = os.environ.get("NHT_DVC")
    if env is not None and env.strip().lower() in ("0", "false", "no", "off"):
        return False
    setting = (config.get("dvc") or {}).get("enabled", "auto")
    has_dvc = (Path(root) / ".dvc").is_dir()
    if setting == "auto":
        return has_dvc
    if setting and not has_dvc:
        raise RuntimeError("config dvc.enabled is true but there is no .dvc/ directory here; "
                           "run `dvc init` (see docs/dvc.md) or set dvc.enabled: auto")
    return bool(setting)

def file_lock(path: str | Path) -> FileLock:
    """Our lock around the end of a run (two runs publish one after the other)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path))


def quarantine(paths: list[str], root: Path, why: str) -> list[str]:
    """Move files out of the way, keeping their relative paths under a timestamped folder."""
    moved = []
    dest_root = root / QUARANTINE_DIR / time.strftime("%Y%m%dT%H%M%S")
    for p in paths:
        src = root / p
        if not src.is_file():
            continue
        dest = dest_root / _inside(Path(p), root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dest))
        moved.append(p)
    if moved:
        print(f"nht: moved {len(moved)} file(s) that are not current ({why}) to {dest_root}/: "
              + ", ".join(moved[:5]) + (" ..." if len(moved) > 5 else ""), file=sys.stderr)
    return moved

def _inside(p: Path, root: Path) -> Path:
    """``p`` as a relative path for the quarantine folder (absolute paths keep their full path)."""
    if not p.is_absolute():
        return p
    try:
        return p.relative_to(root.resolve())
    except ValueError:
        return p.relative_to(p.anchor)


def not_current(decisions: dict, records_dirs: list[str], root: Path) -> list[str]:
    """Outputs of this run's jobs that are stale (decided stale, and not recomputed or confirmed
    in this run: their record does not name the decision's force stamp) or differ from their
    record (partial files). Content only: file times are never read."""
    records = {}
    for d in records_dirs:
        records.update(load_records(root / d))
    out = []
    for stage, d in decisions.items():
        rec = records.get(stage)
        outputs = (rec or {}).get("outputs") or {}
        existing = [p for p in outputs if (root / p).exists()]
        stamp = getattr(d, "stamp", "")
        renewed = bool(stamp) and stamp in ((rec or {}).get("forced_by"), renewed_stamp(stage, root))
        if d.status == "stale" and not renewed:
            out += existing
        else:
            out += [p for p in existing if file_md5(root / p) != outputs[p]]
    return sorted(set(out))


def dvc_targets(config: dict, root: Path) -> tuple[list[str], dict[str, str]]:
    """What ``dvc add`` can snapshot: the data, results and log directories as paths relative to
    the repository, symlinks and absolute paths resolved (DVC refuses paths through symlinked
    directories and outside its repository), and, by configured name, those it cannot (resolving
    outside the repository) with the resolved path."""
    top = root.resolve()
    targets, outside = [], {}
    for d in dict.fromkeys([str(config.get("data_dir", "data")), str(config.get("results_dir", "results")), "logs"]):
        p = root / d
        if not p.is_dir():
            continue
        real = p.resolve()
        try:
            rel = real.relative_to(top)
        except ValueError:
            outside[d] = str(real)
            continue
        if rel.parts and rel.parts[0] != ".dvc":
            targets.append(rel.as_posix())
    return list(dict.fromkeys(targets)), outside


def warn_outside(outside: dict[str, str], root: Path) -> None:
    for d, real in outside.items():
        print(f"nht: WARNING: {d} is not snapshotted into DVC: it resolves to {real}, outside this DVC "
              f"repository ({root.resolve()}), and DVC tracks only paths inside its repository. To share it "
              f"through DVC, keep the directory inside the checkout (a relative path such as `results`); to "
              f"keep the bytes on another disk, move DVC's cache there instead (`dvc cache dir /other/disk/dvc-cache`).",
              file=sys.stderr)


def finish(config: dict, decisions: dict, records_dirs: list[str], root: str | Path = ".") -> None:
    """See the module doc; nothing here is judged by time. A failure to publish is reported with what to do; the results stay."""
    root = Path(root)
    try:
        dvc_on = is_enabled(config, root)
        with file_lock(root / LOCK_FILE) if (root / ".dvc").is_dir() else _nolock():
            quarantine(not_current(decisions, records_dirs, root), root, "stale or partial")
            if not dvc_on:
                return
            targets, outside = dvc_targets(config, root)
            warn_outside(outside, root)
            from nht.recompute.dvc_yaml import write_top_level
            try:
                rel = (root / str(config.get("results_dir", "results"))).resolve().relative_to(root.resolve())
            except ValueError:
                rel = None                          # outside the repository: no metrics or plots for DVC
            if rel is not None:
                write_top_level(root, dict(config, results_dir=rel.as_posix()))
            if not targets:
                return
            t0 = time.perf_counter()
            proc = dvc("add", *targets, root=root)
            if proc.returncode != 0:
                print(f"nht: WARNING: `dvc add {' '.join(targets)}` failed ({proc.returncode}): "
                      f"{(proc.stderr + proc.stdout).strip()[-2000:]}\nThe results are in place; run "
                      f"`dvc add {' '.join(targets)}` by hand before `dvc push`.", file=sys.stderr)
                return
            print(f"nht: DVC snapshot of {', '.join(targets)} in {time.perf_counter() - t0:.1f} s "
                  f"(`dvc push` shares it)", file=sys.stderr)
    except Exception as err:   # noqa: BLE001 - the run's results stay; say what to do
        print(f"nht: WARNING: publishing the run failed: {err!r}", file=sys.stderr)


@contextmanager
def _nolock():
    yield

