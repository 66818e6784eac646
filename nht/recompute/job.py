"""The job wrapper: ``python -m nht.recompute TAG LOG INPUT... -- COMMAND`` (TAG: the job's ``nht`` param).

Every rule's shell command starts with it. It

1. takes the job's lock (``.nht/locks/<stage>.lock``, see *Processes* below);
2. takes the job's provenance *before* the command starts: md5 of every input, the fingerprint of
   the code the command runs (:mod:`nht.core.fingerprint`); inputs whose modification time lies in
   the future are re-dated to now (see *File times* below);
3. if the job's record already matches that provenance and DVC's cache holds every recorded
   output, restores the missing or corrupt outputs from the cache and stops (no recomputation).
   Snakemake removes a job's LOG before the job starts, so the wrapper first puts back the log of
   the run that made the outputs (its md5 is in the record, its bytes in DVC's cache since the
   run's snapshot) and *appends* the restore's own lines to it;
4. otherwise runs COMMAND (signals are passed on to it) with a new LOG, and, when it succeeded
   and wrote every output, writes the job's record atomically (with the md5 of LOG).

Everything the command prints goes to LOG, its progress lines (``[...] step``
or ``[...] epoch``) also reach the terminal, at most one per job every PROGRESS_EVERY_S seconds,
and when it fails the last lines of LOG are printed, so the error is seen without hunting for logs.

A failed or killed command writes no record, so the previous record (if any) still describes the
outputs it made, and the next run sees any difference. A record names the force stamp the job ran
under (``forced_by``; a restore notes it in ``.nht/renewed/<stage>`` and leaves the record as it
is), so the end of the run (:mod:`.publish`) knows by content, not by file times, which stale
jobs were renewed in this run.

**File times.** Whether a job reruns is decided by content (:mod:`.decide`), but Snakemake, after
a job, touches its outputs to the current time and then refuses them ("clock skew") when an input
has a *later* modification time, so one input dated in the future (a copy from a machine whose
clock is ahead, ``touch -d``, an archive) would fail every job reading it until that date. The
outputs cannot be dated ahead instead: Snakemake's touch resets them. So the wrapper re-dates such
an input to now before the command starts (the same "now" Snakemake's touch then uses); its bytes
do not change, so no decision changes either.

**Processes.** No child outlives the wrapper, and one job never runs twice at once:

* COMMAND gets Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``): when the wrapper
  dies, even by ``kill -9``, the kernel kills it.
* The wrapper watches the process that started it (Snakemake, or the shell Snakemake started, and
  then Snakemake too): when that is gone (``kill -9`` of Snakemake), it stops COMMAND (SIGTERM,
  then SIGKILL after STOP_GRACE_S) and exits, and says that Snakemake's lock outlived it
  (``snakemake --unlock``).
* The job lock is an ``flock`` held by the wrapper and inherited by COMMAND, so it is released only
  when both are gone (the kernel releases it, also after ``kill -9``: nothing stale to clean up).
  A second wrapper of the same job waits up to ``NHT_JOB_LOCK_WAIT_S`` seconds (default 60) for it,
  then refuses, naming the process that holds it.
"""

from __future__ import annotations

import collections
import ctypes
import datetime as _dt
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from nht.core.fingerprint import entry_fingerprint, module_hashes
from nht.recompute.decide import rule_code_set
from nht.recompute.records import (FORCE_DIR, DvcSnapshot, Unreadable, file_md5, mark_renewed, read_record,
                                   record_path, write_record)

LOCK_DIR = ".nht/locks"
LOCK_WAIT_S = 60.0          # default of NHT_JOB_LOCK_WAIT_S: how long a second wrapper of a job waits
WATCH_EVERY_S = 0.5         # how often the wrapper checks that the process that started it lives
STOP_GRACE_S = 5.0          # SIGTERM -> SIGKILL delay when the wrapper stops COMMAND itself
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "ash"}
UNLOCK_HINT = ("If the next `snakemake` says \"Directory cannot be locked\", the lock of the killed run "
               "outlived it: run `snakemake --unlock` (once no other snakemake runs in this directory), "
               "then run again.")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _code_of(command: list[str]) -> tuple[str, list[str]]:
    mods = rule_code_set(" ".join(command))
    return (entry_fingerprint(mods) if mods else ""), mods


# ----------------------------------------------------------------------------- file times

def redate_future_inputs(paths: list[str], now: float | None = None) -> list[str]:
    """Set the modification time of every input dated after ``now`` (seconds since the epoch;
    default: the current time) to the current time; the paths re-dated. A symlink and its target
    are checked each (Snakemake reads both). Contents never change. An input that cannot be
    re-dated (not ours) is reported with what to do."""
    now = time.time() if now is None else now
    done = []
    for p in paths:
        try:
            link = os.lstat(p)
        except OSError:
            continue
        targets = [(False, link.st_mtime)]
        if os.path.islink(p):
            try:
                targets.append((True, os.stat(p).st_mtime))
            except OSError:
                pass
        for follow, mtime in targets:
            if mtime <= now:
                continue
            try:
                os.utime(p, None, follow_symlinks=follow)
            except OSError as err:
                print(f"nht: WARNING: input {p} is dated in the future ({_dt.datetime.fromtimestamp(mtime)}) and "
                      f"cannot be re-dated ({err}); Snakemake will refuse this job's outputs (clock skew). "
                      f"Fix: `touch {p}` as its owner, or correct the clock that dated it.", file=sys.stderr)
                continue
            done.append(p)
    return sorted(set(done))


# ----------------------------------------------------------------------------- processes

def _die_with_parent_fn():
    """A ``preexec_fn`` that makes the child get SIGKILL when the wrapper dies (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    PR_SET_PDEATHSIG = 1

    def preexec():
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:          # the wrapper died before the signal was armed
            os._exit(1)
    return preexec


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(command name, parent pid) of a process from ``/proc/<pid>/stat``; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):            # zombie or dead
        return None
    return comm, int(fields[1])


def owner_chain() -> list[tuple[int, int]]:
    """(pid, its parent pid) of the processes the wrapper lives for: its parent and, while that
    is a shell (Snakemake runs commands through bash), the shell's parent too. When one of them is
    gone or has a new parent, whoever started the job is gone."""
    chain, pid = [], os.getpid()
    while True:
        st = _proc_stat(pid)
        if st is None or st[1] <= 1:
            break
        parent = st[1]
        chain.append((pid, parent))
        pst = _proc_stat(parent)
        if pst is None or pst[0] not in SHELLS:
            break
        pid = parent
    return chain


def owner_alive(chain: list[tuple[int, int]]) -> bool:
    for pid, parent in chain:
        st = os.getppid() if pid == os.getpid() else (_proc_stat(pid) or (None, None))[1]
        if st != parent:
            return False
    return True


class JobLock:
    """The job's lock file, ``.nht/locks/<stage>.lock`` (an ``flock``; see the module doc)."""

    def __init__(self, stage: str, root: str | Path = "."):
        self.path = Path(root) / LOCK_DIR / f"{stage}.lock"
        self.fd: int | None = None

    def acquire(self, wait_s: float) -> bool:
        """Take the lock, waiting up to ``wait_s`` seconds; False (and a message) if another
        process still holds it then."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline, said = time.monotonic() + wait_s, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if not isinstance(err, BlockingIOError):     # a file system without flock
                    print(f"nht: WARNING: cannot lock {self.path} ({err}); running without the job lock",
                          file=sys.stderr)
                    break
                holder = self.holder()
                if time.monotonic() >= deadline:
                    os.close(fd)
                    print(f"nht: {self.path.name[:-5]} is already running ({holder}; lock {self.path}). "
                          f"Two runs of one job would write the same files, so this one stops. Wait for "
                          f"that process to end, or stop it (`kill <pid>`), then run again.", file=sys.stderr)
                    return False
                if not said:
                    said = True
                    print(f"nht: {self.path.name[:-5]} is still running elsewhere ({holder}); waiting up "
                          f"to {wait_s:.0f} s for it to end", file=sys.stderr)
                time.sleep(0.2)
        self.fd = fd
        self.note(f"wrapper pid {os.getpid()} on {socket.gethostname()} since {_now()}")
        return True

    def note(self, text: str) -> None:
        data = (text + "\n").encode()
        os.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, len(data))

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "process unknown"
        except OSError:
            return "process unknown"


def run(command: list[str], log, label: str, keep_fds: tuple[int, ...] = (),
        on_start=None, on_orphan=None) -> int:
    """Run ``command``, passing SIGINT/SIGTERM on to it; its exit status. With ``log`` (a text
    file), its output goes there and progress lines also to stderr (throttled). The command dies
    with the wrapper (parent-death signal) and is stopped when whoever started the wrapper is gone
    (then ``on_orphan()`` is called). ``keep_fds`` stay open in the command (the job lock);
    ``on_start(pid)`` is called once it started."""
    chain = owner_chain()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE if log else None,
                            stderr=subprocess.STDOUT if log else None, text=True, bufsize=1,
                            pass_fds=keep_fds, preexec_fn=_die_with_parent_fn())
    if on_start is not None:
        on_start(proc.pid)

    def forward(signum, _frame):
        proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)

    def watch():
        while proc.poll() is None:
            if not owner_alive(chain):
                if on_orphan is not None:
                    on_orphan()
                proc.terminate()
                try:
                    proc.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                return
            time.sleep(WATCH_EVERY_S)

    if chain:
        threading.Thread(target=watch, daemon=True, name="nht-owner-watch").start()
    if log is not None:
        last = 0.0
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if PROGRESS.match(line) and time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                print(f"  {label}: {line.rstrip()}", file=sys.stderr, flush=True)
    return proc.wait()


# ----------------------------------------------------------------------------- restore

def describes(rec: dict | None, tag: dict, inputs: dict, code: str) -> bool:
    """Whether a job's record still describes this job (definition, code and input md5s)."""
    if rec is None or isinstance(rec, Unreadable):
        return False
    return rec["definition"] == tag["definition"] and rec["code"] == code and rec["inputs"] == inputs


def try_restore(rec: dict | None, tag: dict, inputs: dict, code: str, snapshot: DvcSnapshot) -> bool:
    """Restore a job's outputs from DVC's snapshot if its record still describes this job."""
    if not describes(rec, tag, inputs, code):
        return False
    bad = {p: m for p, m in rec["outputs"].items() if file_md5(p) != m}
    restored = snapshot.restore(bad) if bad else []
    if len(restored) != len(bad):
        return False
    for p in restored:
        print(f"nht: {_now()} restored {p} from the DVC cache (md5 {rec['outputs'][p]})")
    if not bad:
        print(f"nht: {_now()} outputs already match the record; nothing to do")
    return True


def restore_log(rec: dict, log_path: str, snapshot: DvcSnapshot) -> str:
    """Put back the log of the run that made a job's outputs (Snakemake removes a job's log
    before the job starts, restores included) from DVC's snapshot, by the md5 its record holds;
    a line saying what happened, for the log."""
    want = (rec.get("log") or {}).get("md5")
    if not want:
        return "nht: (this job's record names no log of the run that made its outputs)"
    if file_md5(log_path) == want or snapshot.restore({log_path: want}):
        return ""
    return (f"nht: the log of the run that made these outputs (md5 {want}) is not in DVC's cache; "
            f"Snakemake removed it before this job, so this log holds only the restore")


PROGRESS = re.compile(r"^\[[^\]]+\] (step|epoch) ")
PROGRESS_EVERY_S = 20.0
TAIL_LINES = 25


def _tail(path: str, n: int = TAIL_LINES) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(collections.deque(fh, maxlen=n))
    except OSError:
        return ""


def _flushed_md5(log, log_path: str) -> str | None:
    log.flush()
    return file_md5(log_path)


def _say_redated(paths: list[str]) -> None:
    for p in paths:
        print(f"nht: re-dated input {p} to now: its modification time lay in the future (content unchanged)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv or argv.index("--") < 2 or argv.index("--") == len(argv) - 1:
        print("usage: python -m nht.recompute TAG LOG [INPUT ...] -- COMMAND", file=sys.stderr)
        return 2
    cut = argv.index("--")
    tag, log_path, command = json.loads(argv[0]), argv[1], argv[cut + 1:]
    try:
        wait_s = float(os.environ.get("NHT_JOB_LOCK_WAIT_S", LOCK_WAIT_S))
    except ValueError:
        print("nht: NHT_JOB_LOCK_WAIT_S must be a number of seconds", file=sys.stderr)
        return 2
    lock = JobLock(tag["stage"])
    if not lock.acquire(wait_s):
        return 1
    started = _now()
    stamps = [p for p in argv[2:cut] if p.startswith(FORCE_DIR + "/")]
    files = [p for p in argv[2:cut] if not p.startswith(FORCE_DIR + "/")]
    redated = redate_future_inputs(argv[2:cut])
    inputs = {p: file_md5(p) for p in files}
    code, mods = _code_of(command)
    path = record_path(tag["records"], tag["stage"])
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    label = tag["stage"].split("@")[0] + " " + ",".join(str(v) for v in tag["wildcards"].values())[:60]
    rec = read_record(path)
    if describes(rec, tag, inputs, code):
        # a restore keeps the log of the run that made the outputs and appends its own lines
        snapshot = DvcSnapshot(".")
        note = restore_log(rec, log_path, snapshot)
        log = open(log_path, "a")
        sys.stdout = log                  # this wrapper's own messages go to the log too
        if note:
            print(note)
        if try_restore(rec, tag, inputs, code, snapshot):
            _say_redated(redated)
            if stamps:
                mark_renewed(tag["stage"], stamps[0])
            return 0
        log.close()
    log = open(log_path, "w")             # a run: the log is this run's output only
    sys.stdout = log
    _say_redated(redated)
    log.flush()
    orphaned = threading.Event()

    def on_orphan():
        orphaned.set()
        msg = (f"nht: the process that started {tag['stage']} is gone (snakemake killed?); stopping the job. "
               + UNLOCK_HINT)
        print(msg, file=sys.stderr, flush=True)
        log.write(msg + "\n")

    holder = lock.holder()
    status = run(command, log, label, keep_fds=(lock.fd,), on_orphan=on_orphan,
                 on_start=lambda pid: lock.note(f"{holder}, command pid {pid}"))
    if status != 0 or orphaned.is_set():
        log.close()
        print(f"nht: {tag['stage']} failed (exit {status}); last lines of {log_path}:\n{_tail(log_path)}",
              file=sys.stderr)
        return status or 1
    missing = [p for p in tag["outputs"] if not Path(p).exists()]
    if missing:
        print(f"nht: {tag['stage']} did not write {', '.join(missing)}; no record written", file=sys.stderr)
        return 1
    write_record(path, {
        "stage": tag["stage"], "rule": tag["rule"], "wildcards": tag["wildcards"],
        "definition": tag["definition"], "code": code, "code_set": mods, "code_modules": module_hashes(mods),
        "inputs": inputs, "outputs": {p: file_md5(p) for p in tag["outputs"]},
        "forced_by": stamps[0] if stamps else "",
        "log": {"path": log_path, "md5": _flushed_md5(log, log_path)},
        "started": started, "finished": _now(), "host": socket.gethostname(),
    })
    return 0
