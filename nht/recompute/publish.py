"""End of a run (``onsuccess``/``onerror``): quarantine what is not current, then snapshot into DVC.

Runs in Snakemake's main process after the jobs (never in a dry run: Snakemake calls neither
handler then), and only does work when a job of this run wrote a record:

1. Outputs of this run's jobs that are *not current* are moved to ``.nht/quarantine/<time>/``:
   those of stale jobs that did not rerun (a job failed upstream, the run was cut short) and any
   output whose content differs from its record (a partial file). So a stale or corrupt file is
   never left in place looking current, and never enters DVC.
2. With DVC on (``dvc.enabled``: auto = when ``.dvc/`` exists), ``dvc add`` snapshots the data,
   results and log directories into DVC's cache (``data.dvc``, ``results.dvc``, ``logs.dvc``),
   ready for ``dvc push``; and the top level of ``dvc.yaml`` (metrics, plots, params) is written,
   for ``dvc metrics/plots/params``. Both under a file lock of ours and DVC's own repository lock,
   so two runs, or a run beside ``dvc push``, wait for each other instead of losing a write.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from nht.recompute.records import QUARANTINE_DIR, file_md5, load_records

LOCK_FILE = ".dvc/tmp/nht-publish.lock"
DVC_LOCK_RETRY_S = 120

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

@contextmanager
def file_lock(path: str | Path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

def quarantine(paths: list[str], root: Path, why: str) -> list[str]:
    """Move files out of the way, keeping their relative paths under a timestamped folder."""
    moved = []
    dest_root = root / QUARANTINE_DIR / time.strftime("%Y%m%dT%H%M%S")
    for p in paths:
        src = root / p
        if not src.is_file():
            continue
        dest = dest_root / p
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dest))
        moved.append(p)
    if moved:
        print(f"nht: moved {len(moved)} file(s) that are not current ({why}) to {dest_root}/: "
              + ", ".join(moved[:5]) + (" ..." if len(moved) > 5 else ""), file=sys.stderr)
    return moved

def not_current(decisions: dict, records_dirs: list[str], started: float, root: Path) -> list[str]:
    """Outputs of this run's jobs that are stale (decided stale, and neither recomputed nor
    restored in this run) or differ from their record (partial files)."""
    records = {}
    for d in records_dirs:
        records.update(load_records(root / d))
    out = []
    for stage, d in decisions.items():
        rec = records.get(stage)
        outputs = (rec or {}).get("outputs") or {}
        existing = [p for p in outputs if (root / p).exists()]
        renewed = any((root / p).stat().st_mtime >= started for p in existing)
        if d.status == "stale" and not renewed:
            out += existing
        else:
            out += [p for p in existing if file_md5(root / p) != outputs[p]]
    return sorted(set(out))


def _dvc() -> str:
    here = Path(sys.executable).parent / "dvc"
    return str(here) if here.exists() else (shutil.which("dvc") or "dvc")

def dvc(*args: str, root: Path) -> subprocess.CompletedProcess:
    """Run the DVC CLI, waiting (up to DVC_LOCK_RETRY_S) while another DVC process holds its lock."""
    deadline = time.monotonic() + DVC_LOCK_RETRY_S
    while True:
        proc = subprocess.run([_dvc(), *args], cwd=root, capture_output=True, text=True)
        if proc.returncode == 0 or "lock" not in (proc.stderr + proc.stdout).lower() \
                or time.monotonic() > deadline:
            return proc
        time.sleep(1.0)

def tracked_dirs(config: dict, root: Path) -> list[str]:
    dirs = [config.get("data_dir", "data"), config.get("results_dir", "results"), "logs"]
    return [d for d in dict.fromkeys(dirs) if (root / d).is_dir()]

def newest_record(records_dirs: list[Path]) -> float:
    """mtime of the newest record (0 when there is none)."""
    return max((p.stat().st_mtime for d in records_dirs if d.is_dir() for p in d.glob("*.json")), default=0.0)


def snapshot_time(config: dict, root: Path) -> float:
    """When DVC last snapshotted the results (mtime of ``<results_dir>.dvc``; 0 if never)."""
    p = root / (config.get("results_dir", "results").rstrip("/") + ".dvc")
    return p.stat().st_mtime if p.exists() else 0.0


def finish(config: dict, decisions: dict, records_dirs: list[str], started: float, root: str | Path = ".") -> None:
    """See the module doc. A failure to publish is reported with what to do; the results stay."""
    root = Path(root)
    try:
        newest = newest_record([root / d for d in records_dirs])
        dvc_on = is_enabled(config, root)
        planned = newest >= started or any(d.status in ("stale", "restore") for d in decisions.values())
        if not planned and not (dvc_on and newest > snapshot_time(config, root)):
            return                                  # nothing ran, nothing left to snapshot
        with file_lock(root / LOCK_FILE) if (root / ".dvc").is_dir() else _nolock():
            if planned:
                quarantine(not_current(decisions, records_dirs, started, root), root, "stale or partial")
            if not dvc_on:
                return
            from nht.recompute.dvc_yaml import write_top_level
            write_top_level(root, config)
            t0 = time.perf_counter()
            targets = tracked_dirs(config, root)
            proc = dvc("add", "--quiet", *targets, root=root)
            if proc.returncode != 0:
                print(f"nht: WARNING: `dvc add {' '.join(targets)}` failed ({proc.returncode}): "
                      f"{(proc.stderr or proc.stdout).strip()[-2000:]}\nThe results are in place; run "
                      f"`dvc add {' '.join(targets)}` by hand before `dvc push`.", file=sys.stderr)
                return
            print(f"nht: DVC snapshot of {', '.join(targets)} in {time.perf_counter() - t0:.1f} s "
                  f"(`dvc push` shares it)", file=sys.stderr)
    except Exception as err:   # noqa: BLE001 - the run's results stay; say what to do
        print(f"nht: WARNING: publishing the run failed: {err!r}", file=sys.stderr)


@contextmanager
def _nolock():
    yield

