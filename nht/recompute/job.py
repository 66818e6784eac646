"""The job wrapper: ``python -m nht.recompute TAG LOG INPUT... -- COMMAND`` (TAG: the job's ``nht`` param).

Every rule's shell command starts with it. It

1. takes the job's provenance *before* the command starts: md5 of every input, the fingerprint of
   the code the command runs (:mod:`nht.core.fingerprint`);
2. if the job's record already matches that provenance and DVC's cache holds every recorded
   output, restores the missing or corrupt outputs from the cache and stops (no recomputation);
3. otherwise runs COMMAND (signals are passed on to it) and, when it succeeded and wrote every
   output, writes the job's record atomically.

Everything the command prints goes to LOG, its progress lines (``[...] step``
or ``[...] epoch``) also reach the terminal, at most one per job every PROGRESS_EVERY_S seconds,
and when it fails the last lines of LOG are printed, so the error is seen without hunting for logs.

A failed or killed command writes no record, so the previous record (if any) still describes the
outputs it made, and the next run sees any difference.
"""

from __future__ import annotations

import collections
import datetime as _dt
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from nht.core.fingerprint import entry_fingerprint, module_hashes
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


PROGRESS = re.compile(r"^\[[^\]]+\] (step|epoch) ")
PROGRESS_EVERY_S = 20.0
TAIL_LINES = 25


def run(command: list[str], log, label: str) -> int:
    """Run ``command``, passing SIGINT/SIGTERM on to it; its exit status. With ``log`` (a text
    file), its output goes there and progress lines also to stderr (throttled)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE if log else None,
                            stderr=subprocess.STDOUT if log else None, text=True, bufsize=1)

    def forward(signum, _frame):
        proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    if log is not None:
        last = 0.0
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if PROGRESS.match(line) and time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                print(f"  {label}: {line.rstrip()}", file=sys.stderr, flush=True)
    return proc.wait()


def _tail(path: str, n: int = TAIL_LINES) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(collections.deque(fh, maxlen=n))
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv or argv.index("--") < 2 or argv.index("--") == len(argv) - 1:
        print("usage: python -m nht.recompute TAG LOG [INPUT ...] -- COMMAND", file=sys.stderr)
        return 2
    cut = argv.index("--")
    tag, log_path, command = json.loads(argv[0]), argv[1], argv[cut + 1:]
    started = _now()
    inputs = {p: file_md5(p) for p in argv[2:cut] if not p.startswith(FORCE_DIR + "/")}
    code, mods = _code_of(command)
    path = record_path(tag["records"], tag["stage"])
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")
    sys.stdout = log                      # this wrapper's own messages go to the log too
    label = tag["stage"].split("@")[0] + " " + ",".join(str(v) for v in tag["wildcards"].values())[:60]
    if try_restore(read_record(path), tag, inputs, code):
        return 0
    status = run(command, log, label)
    if status != 0:
        log.close()
        print(f"nht: {tag['stage']} failed (exit {status}); last lines of {log_path}:\n{_tail(log_path)}",
              file=sys.stderr)
        return status
    missing = [p for p in tag["outputs"] if not Path(p).exists()]
    if missing:
        print(f"nht: {tag['stage']} did not write {', '.join(missing)}; no record written", file=sys.stderr)
        return 1
    write_record(path, {
        "stage": tag["stage"], "rule": tag["rule"], "wildcards": tag["wildcards"],
        "definition": tag["definition"], "code": code, "code_set": mods, "code_modules": module_hashes(mods),
        "inputs": inputs, "outputs": {p: file_md5(p) for p in tag["outputs"]},
        "started": started, "finished": _now(), "host": socket.gethostname(),
    })
    return 0
