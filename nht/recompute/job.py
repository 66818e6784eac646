"""The job wrapper: ``python -m nht.recompute job --tag JSON --inputs ... --outputs ... -- COMMAND``.

Every rule's shell command starts with it. It

1. takes the job's provenance *before* the command starts: md5 of every input, the fingerprint of
   the code the command runs (:mod:`nht.fingerprint`);
2. if the job's record already matches that provenance and DVC's cache holds every recorded
   output, restores the missing or corrupt outputs from the cache and stops (no recomputation);
3. otherwise runs COMMAND (signals are passed on to it) and, when it succeeded and wrote every
   output, writes the job's record atomically.

A failed or killed command writes no record, so the previous record (if any) still describes the
outputs it made, and the next run sees any difference.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

from nht.fingerprint import entry_fingerprint, module_hashes
from nht.recompute.decide import rule_code_set
from nht.recompute.records import (FORCE_DIR, Unreadable, dvc_cache_dir, file_md5, read_record,
                                   record_path, restore_file, write_record)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _code_of(command: list[str]) -> tuple[str, list[str]]:
    mods = rule_code_set(" ".join(command))
    return (entry_fingerprint(mods) if mods else ""), mods


def try_restore(rec: dict | None, tag: dict, inputs: dict, code: str) -> bool:
    """Restore a job's outputs from DVC's cache if its record still describes this job."""
    if rec is None or isinstance(rec, Unreadable):
        return False
    if rec["definition"] != tag["definition"] or rec["code"] != code or rec["inputs"] != inputs:
        return False
    cache = dvc_cache_dir(".")
    bad = [p for p, m in rec["outputs"].items() if file_md5(p) != m]
    restored = [p for p in bad if restore_file(cache, rec["outputs"][p], p)]
    if len(restored) != len(bad):
        return False
    for p in restored:
        print(f"nht: restored {p} from the DVC cache (md5 {rec['outputs'][p]})")
    return True


def run(command: list[str]) -> int:
    """Run ``command``, passing SIGINT/SIGTERM on to it; its exit status."""
    proc = subprocess.Popen(command)

    def forward(signum, _frame):
        proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    return proc.wait()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: python -m nht.recompute job --tag JSON --inputs ... --outputs ... -- COMMAND",
              file=sys.stderr)
        return 2
    cut = argv.index("--")
    ap = argparse.ArgumentParser(prog="python -m nht.recompute job")
    ap.add_argument("--tag", type=json.loads, required=True)
    ap.add_argument("--inputs", nargs="*", default=[])
    ap.add_argument("--outputs", nargs="+", required=True)
    a = ap.parse_args(argv[:cut])
    command = argv[cut + 1:]
    tag = a.tag
    started = _now()
    inputs = {p: file_md5(p) for p in a.inputs if not p.startswith(FORCE_DIR + "/")}
    code, mods = _code_of(command)
    path = record_path(tag["records"], tag["stage"])
    if try_restore(read_record(path), tag, inputs, code):
        return 0
    status = run(command)
    if status != 0:
        return status
    missing = [p for p in a.outputs if not Path(p).exists()]
    if missing:
        print(f"nht: {tag['stage']} did not write {', '.join(missing)}; no record written", file=sys.stderr)
        return 1
    write_record(path, {
        "stage": tag["stage"], "rule": tag["rule"], "wildcards": tag["wildcards"],
        "definition": tag["definition"], "code": code, "code_set": mods, "code_modules": module_hashes(mods),
        "inputs": inputs, "outputs": {p: file_md5(p) for p in a.outputs},
        "started": started, "finished": _now(), "host": socket.gethostname(),
    })
    return 0
