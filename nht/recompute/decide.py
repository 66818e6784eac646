"""DAG-time decisions: is a job clean, stale, or restorable? (read-only; see :mod:`nht.recompute`).

The Snakefile makes one :class:`Recompute` and registers every rule through :meth:`Recompute.rule`,
which returns the rule's input function, params and outputs::

    FIT = RC.rule("fit_modular", inputs=lambda w: {...}, outputs={"fit": ...})

    rule fit_modular:
        input: unpack(FIT.input)
        output: **FIT.output
        params: **FIT.params
        shell: JOB + "python -m nht fit ..."

Snakemake calls ``FIT.input`` while it builds the DAG; that call decides the job's status from
its record (:mod:`.records`) and nothing is written:

==========  ===============================================================  ======================
status      when                                                             inputs returned
==========  ===============================================================  ======================
clean       record matches definition, code, input md5s; outputs match       all ``ancient()``
restore     as clean, but an output is missing/corrupt and DVC's cache has   + a force stamp
            its recorded version (the job wrapper copies it back)
stale       definition, code or an input changed, an upstream job reruns,    + a force stamp
            the record is unreadable, or outputs exist with no record
new         no record and no output yet                                      as they are
==========  ===============================================================  ======================

The force stamp ``.nht/force/<stage>/<digest>`` is made by the rule ``nht_force``; its digest is
new each time the job may have changed since its last stamp (:meth:`Recompute._stamp`), because
Snakemake ignores a stamp older than the job's outputs. Snakemake builds a missing file only when
a target or a job that must run needs it, so the force stamps are also inputs of the target rule ``all`` (:meth:`Recompute.force_targets`, which decides
every recorded job of the current config up front). With an explicit target instead of ``all``,
a stale job is reported with the ``--forcerun`` that reruns it.

Records of a job live next to its outputs' tree: ``<data_dir>/.records`` for jobs writing under
the data directory (datasets are shared by configs), ``<results_dir>/.records`` otherwise.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nht.core.fingerprint import code_set, entry_fingerprint, module_hashes, rule_sources
from nht.recompute.records import (FORCE_DIR, Unreadable, cache_object, dvc_cache_dir, file_md5,
                                   load_records, stage_name)

_COMMAND = re.compile(r"python -m (nht(?:\.\w+)*) ([\w-]+)")


@dataclass
class Decision:
    stage: str
    status: str                  # clean | restore | stale | new
    reason: str
    inputs: dict = field(default_factory=dict)
    stamp: str = ""              # force stamp of a stale/restore job (unique per decision), else ""


def _paths(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _call(fn_or_value, wildcards):
    return fn_or_value(wildcards) if callable(fn_or_value) else fn_or_value


def rule_code_set(source: str) -> list[str]:
    """The nht modules a rule's shell command runs (from its ``python -m nht...`` command)."""
    m = _COMMAND.search(source)
    if m is None:
        return []
    module, command = m.groups()
    if module != "nht":
        raise ValueError(f"a rule's command must be `python -m nht <stage>`, not `python -m {module}`")
    from nht.cli import STAGES
    return code_set("nht.__main__", "nht.cli", STAGES[command])


class Wildcards(dict):
    """Wildcard values as a dict that also reads as attributes (like Snakemake's)."""

    __getattr__ = dict.__getitem__


class RuleHandle:
    """What a rule takes from :class:`Recompute`: ``input`` (for ``unpack``), ``output``, ``params``."""

    def __init__(self, rc: "Recompute", name: str, inputs: Callable, outputs: dict, params: dict,
                 exists: Callable, scheduling: dict | None = None):
        self.rc, self.name, self.inputs, self.outputs, self.user_params = rc, name, inputs, outputs, params
        self.exists = exists
        self.scheduling = dict(scheduling or {})
        for key, value in list(params.items()) + list(self.scheduling.items()) + [("inputs", inputs)]:
            if callable(value) and len(inspect.signature(value).parameters) != 1:
                raise ValueError(f"rule {name}: {key} must be a value or a function of the wildcards only")

    @property
    def input(self):
        return lambda wildcards: self.rc.input_files(self.name, Wildcards(wildcards.items()))

    @property
    def output(self) -> dict:
        return self.outputs

    @property
    def params(self) -> dict:
        tag = lambda wildcards: self.rc.tag(self.name, Wildcards(wildcards.items()))  # noqa: E731
        return dict(self.user_params, **self.scheduling, nht=tag)


class Recompute:
    """Registry of the workflow's rules and the decisions about their jobs (one per Snakemake run)."""

    def __init__(self, records_dir: str, rule_files: list[str], root: str | Path = ".",
                 data_records_dir: str | None = None):
        self.records_dir = records_dir
        self.data_records_dir = data_records_dir or records_dir
        self._data_root = str(Path(self.data_records_dir).parent) + "/"
        self._targets_evaluated = False
        self._warned: set[str] = set()
        self.root = Path(root)
        self.rule_files = list(rule_files)
        self.rules: dict[str, RuleHandle] = {}
        self._sources: dict[str, str] | None = None
        self._code: dict[str, tuple[str, list[str]]] = {}
        self._records: dict[str, dict] | None = None
        self._producer: dict[str, str] = {}
        self._md5: dict[str, str | None] = {}
        self._decisions: dict[str, Decision] = {}
        self._patterns: list | None = None
        self._cache = dvc_cache_dir(self.root)

    # -- registration ---------------------------------------------------------------------------
    def rule(self, name: str, inputs: Callable | dict, outputs: dict, params: dict | None = None,
             exists: Callable | None = None, scheduling: dict | None = None) -> RuleHandle:
        """Register a rule. ``exists(wildcards)``: whether a recorded job of this rule is part of
        the current config (default: always). ``scheduling``: more params that only tune how the
        job runs (threads, chunk sizes, checkpoint interval; nht.config.SCHEDULING_KEYS), never what
        it computes; they reach the job like ``params`` but are not part of its definition."""
        fn = inputs if callable(inputs) else _constant(inputs)
        handle = RuleHandle(self, name, fn, outputs, params or {}, exists or _constant(True), scheduling)
        self.rules[name] = handle
        return handle

    # -- lazily loaded state --------------------------------------------------------------------
    @property
    def sources(self) -> dict[str, str]:
        if self._sources is None:
            self._sources = rule_sources(self.rule_files)
        return self._sources

    def code(self, rule: str) -> tuple[str, list[str]]:
        """(fingerprint, module list) of the code a rule runs."""
        if rule not in self._code:
            mods = rule_code_set(self.sources.get(rule, ""))
            self._code[rule] = (entry_fingerprint(mods) if mods else "", mods)
        return self._code[rule]

    @property
    def records(self) -> dict[str, dict]:
        if self._records is None:
            self._records = load_records(self.data_records_dir)
            self._records.update(load_records(self.records_dir))
            for stage, rec in self._records.items():
                for path in (rec.get("outputs") or {}):
                    self._producer[path] = stage
        return self._records

    def md5(self, path: str) -> str | None:
        if path not in self._md5:
            self._md5[path] = file_md5(self.root / path)
        return self._md5[path]

    # -- a job's identity -----------------------------------------------------------------------
    def outputs_of(self, rule: str, w: dict) -> list[str]:
        return [p for v in self.rules[rule].outputs.values() for p in _paths_format(v, w)]

    def definition(self, rule: str, w: dict) -> str:
        """Hash of what defines a job besides content and code: its rule's source, params values
        (not its ``scheduling`` params), input and output paths and wildcards."""
        h = self.rules[rule]
        doc = {"rule": self.sources.get(rule, ""),
               "params": {k: _call(v, w) for k, v in sorted(h.user_params.items())},
               "inputs": {k: _paths(v) for k, v in sorted(h.inputs(w).items())},
               "outputs": self.outputs_of(rule, w), "wildcards": dict(w)}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def records_dir_of(self, rule: str, w: dict) -> str:
        outs = self.outputs_of(rule, w)
        return self.data_records_dir if outs and outs[0].startswith(self._data_root) else self.records_dir

    def tag(self, rule: str, w: dict) -> str:
        """The ``nht`` param of a job: what its wrapper needs to record it (constant per definition):
        its stage name, definition hash, records directory and output paths (the inputs, which can
        be thousands, follow as separate arguments: one argument may hold at most 128 KiB)."""
        return json.dumps({"stage": stage_name(rule, w), "rule": rule, "wildcards": dict(w),
                           "definition": self.definition(rule, w), "records": self.records_dir_of(rule, w),
                           "outputs": self.outputs_of(rule, w)}, sort_keys=True)

    # -- decisions ------------------------------------------------------------------------------
    def decide(self, rule: str, w: dict) -> Decision:
        stage = stage_name(rule, w)
        if stage in self._decisions:
            return self._decisions[stage]
        self._decisions[stage] = Decision(stage, "stale", "dependency cycle")   # guard
        inputs = self.rules[rule].inputs(w)
        status, reason = self._judge(rule, w, stage, inputs)
        stamp = self._stamp(rule, w, stage) if status in ("stale", "restore") else ""
        d = self._decisions[stage] = Decision(stage, status, reason, inputs, stamp)
        return d

    def _stamp(self, rule: str, w: dict, stage: str) -> str:
        """The force stamp of a stale or restorable job: ``.nht/force/<stage>/<digest>``.

        Snakemake reruns a job only while its stamp is *missing or newer* than the job's outputs,
        and a stamp, once made, stays (rule ``all`` consumes it, so ``temp()`` never removes it).
        So the name must be new whenever the job may have run or been touched since its last
        stamp: the digest covers the job's definition and code, its record file and the state of
        its outputs (md5, size, mtime_ns, inode). A successful run or restore rewrites the record
        or the outputs (new files) and an edit or damage of an output changes that output's state,
        so a job that goes stale again after it ran gets a new stamp. Nothing in it depends on
        other jobs, so every process of one run (a remote job's own Snakemake included) computes
        the same stamp for a job until that job runs. File times only make the *name* unique;
        whether a job is stale is decided by content (:meth:`_judge`).
        """
        state = {"definition": self.definition(rule, w), "code": self.code(rule)[0],
                 "record": _file_state(self.root / self.records_dir_of(rule, w) / f"{stage}.json"),
                 "outputs": {p: [self.md5(p), _file_state(self.root / p)] for p in self.outputs_of(rule, w)}}
        digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]
        return f"{FORCE_DIR}/{stage}/{digest}"

    def _judge(self, rule: str, w: dict, stage: str, inputs: dict) -> tuple[str, str]:
        rec = self.records.get(stage)
        if rec is None:
            existing = [p for p in self.outputs_of(rule, w) if (self.root / p).exists()]
            if existing:
                return "stale", f"{existing[0]} exists but no record says how it was made"
            return "new", "not run yet"
        if isinstance(rec, Unreadable):
            return "stale", "its record is unreadable"
        if rec["definition"] != self.definition(rule, w):
            return "stale", "its rule, params or input/output list changed"
        fingerprint, mods = self.code(rule)
        if rec["code"] != fingerprint:
            old, new = rec.get("code_modules") or {}, module_hashes(mods)
            changed = sorted(m for m in set(old) | set(new) if old.get(m) != new.get(m)) or mods
            return "stale", f"its code changed ({', '.join(changed)})"
        for path in (p for v in inputs.values() for p in _paths(v)):
            producer = self._producer.get(path)
            prec = self.records.get(producer) if producer else None
            if prec is not None and not isinstance(prec, Unreadable) and prec.get("rule") in self.rules:
                up = self.decide(prec["rule"], Wildcards(prec.get("wildcards") or {}))
                if up.status in ("stale", "new"):
                    return "stale", f"upstream {up.stage} is {up.status}"
                expected = prec["outputs"].get(path)
            else:
                expected = self.md5(path)
            if rec["inputs"].get(path) != expected:
                return "stale", f"input {path} changed"
        bad = [p for p, m in rec["outputs"].items() if self.md5(p) != m]
        if not bad:
            return "clean", "up to date"
        if all(cache_object(self._cache, rec["outputs"][p]) for p in bad):
            return "restore", f"{bad[0]} is missing or corrupt; its recorded version is in the DVC cache"
        return "stale", f"{bad[0]} is missing or corrupt and not in the DVC cache"

    def input_files(self, rule: str, w: dict) -> dict:
        """Snakemake's input function of ``rule`` (see the module doc's table)."""
        from snakemake.io import ancient

        d = self.decide(rule, w)
        out: dict[str, Any] = {}
        for key, value in d.inputs.items():
            wrap = ancient if d.status == "clean" else str
            out[key] = [wrap(p) for p in value] if isinstance(value, (list, tuple)) else wrap(str(value))
        if d.status in ("stale", "restore"):
            out["nht_force"] = d.stamp
            if not self._targets_evaluated and d.stage not in self._warned:
                self._warned.add(d.stage)
                import sys
                print(f"nht: {d.stage} is {d.status} ({d.reason}); with an explicit target it reruns only "
                      f"with `--forcerun {rule}` (or run the default target)", file=sys.stderr)
        return out

    def producer_of(self, path: str) -> tuple[str, Wildcards] | None:
        """(rule, wildcards) of the registered rule whose output pattern matches ``path`` and whose
        ``exists`` accepts the wildcards (the job Snakemake would pick), or None."""
        if self._patterns is None:
            self._patterns = [(name, _pattern_regex(str(pat))) for name, h in self.rules.items()
                              for pat in h.outputs.values()]
        for name, regex in self._patterns:
            m = regex.fullmatch(path)
            if m:
                w = Wildcards(m.groupdict())
                try:
                    if self.rules[name].exists(w):
                        return name, w
                except (KeyError, AttributeError, TypeError):
                    continue
        return None

    def force_targets(self, targets: list[str]) -> list[str]:
        """Force stamps of every job upstream of ``targets`` that must rerun or be restored.

        Inputs of the target rule ``all``, so Snakemake builds them (see the module doc). Walks
        the jobs from the targets through the registered rules' input functions (the same jobs
        Snakemake will build), deciding each one.
        """
        self._targets_evaluated = True
        stamps, seen, todo = [], set(), list(targets)
        while todo:
            path = todo.pop()
            if path in seen:
                continue
            seen.add(path)
            found = self.producer_of(path)
            if found is None:
                continue
            d = self.decide(*found)
            if d.status in ("stale", "restore"):
                stamps.append(d.stamp)
            todo.extend(p for v in d.inputs.values() for p in _paths(v))
        return sorted(set(stamps))

    @property
    def decisions(self) -> dict[str, Decision]:
        """Every job decided in this Snakemake process, by stage name."""
        return self._decisions

    def reason(self, stage: str) -> str:
        d = self._decisions.get(stage)
        return f"{stage}: {d.status}, {d.reason}" if d else f"{stage}: forced"


def _pattern_regex(pattern: str):
    """A Snakemake output pattern as a regex with one named group per wildcard."""
    parts = re.split(r"\{(\w+)\}", pattern)
    rx = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)" for i, p in enumerate(parts))
    return re.compile(rx)


def _file_state(path: Path) -> list | None:
    """(size, mtime_ns, inode) of a file, or None when it does not exist (see :meth:`Recompute._stamp`)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _constant(value):
    return lambda wildcards: value


def _paths_format(pattern, w: dict) -> list[str]:
    return [str(p).format(**w) for p in (pattern if isinstance(pattern, (list, tuple)) else [pattern])]
