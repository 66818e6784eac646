"""DAG-time decisions: is a job clean, stale, or restorable? (read-only; see :mod:`nht.recompute`).

The one place where nht decides what reruns. A rule declares what it reads, writes and is run
with, literally, as any Snakemake rule does; the decision enters in two places, its input
function and one param::

    rule fit_modular:
        input:
            unpack(RC.inputs("fit_modular", norms=lambda w: cell_files(w.experiment, "norms.json"))),
        output:
            fit=f"{R}/{{experiment}}/fit.json",
        params:
            nht=RC.tag,
        shell:
            "python -m nht.recompute {params.nht:q} {log:q} {input:q} -- python -m nht fit ..."

:meth:`Recompute.inputs` returns the rule's input function: Snakemake calls it while it builds the
DAG, it evaluates the rule's own inputs and decides the job's status from its record
(:mod:`.records`); nothing is written. Everything else about the job is read from the rule as
Snakemake holds it, through its ``rules.<name>`` object: the output paths (``rules.x.output``),
the params (``rules.x.params``) and the shell command (``rules.x.rule.shellcmd``); which rule
makes a file is matched with Snakemake's ``glob_wildcards`` on the rule's output patterns, which
carry its ``wildcard_constraints``. ``RC.tag`` (the ``nht`` param) hands the job's identity to
the job wrapper (:mod:`.job`), which records what the job read, ran and wrote.

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

A job's *definition* is its shell command (whitespace-normalised), its params values except
``nht`` and the ``scheduling`` ones (:data:`SCHEDULING_PARAMS`: they tune how a job runs, never
what it computes), its input and output paths and its wildcards. Its *code* is the fingerprint of
the modules its ``python -m nht <stage>`` runs (:mod:`nht.core.fingerprint`).

The force stamp ``.nht/force/<stage>/<digest>`` is made by the rule ``nht_force``; its digest is
new each time the job may have changed since its last stamp (:meth:`Recompute._stamp`), because
Snakemake ignores a stamp older than the job's outputs. Snakemake builds a missing file only when
a target or a job that must run needs it, so the force stamps are also inputs of the target rule
``all`` (:meth:`Recompute.force_targets`, which decides every job upstream of the target, going
through the rules' own input functions). With an explicit target instead of ``all``, a stale job
is reported with the ``--forcerun`` that reruns it.

Records of a job live next to its outputs' tree: ``<data_dir>/.records`` for jobs writing under
the data directory (datasets are shared by configs), ``<results_dir>/.records`` otherwise.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nht.core.fingerprint import code_set, entry_fingerprint, module_hashes
from nht.recompute.records import FORCE_DIR, DvcSnapshot, Unreadable, file_md5, load_records, stage_name

_COMMAND = re.compile(r"python -m (nht(?:\.\w+)*) ([\w-]+)")
#: params that tune how a job runs (threads, chunk sizes, checkpoint interval; nht.config.SCHEDULING_KEYS),
#: never what it computes: they reach the job, but are not part of its definition
SCHEDULING_PARAMS = frozenset({"scheduling"})
#: the job's identity for its wrapper (:meth:`Recompute.tag`), which holds the definition itself
TAG_PARAM = "nht"


@dataclass
class Decision:
    stage: str
    status: str                  # clean | restore | stale | new
    reason: str
    inputs: dict = field(default_factory=dict)
    stamp: str = ""              # force stamp of a stale/restore job (unique per decision), else ""


def _paths(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _of_wildcards(name: str, what: str, value) -> Callable:
    """``value`` as a function of the wildcards (a value stands for itself); a function that
    takes anything more than the wildcards cannot be part of a job's definition."""
    if not callable(value):
        return lambda wildcards: value
    if len(inspect.signature(value).parameters) != 1:
        raise ValueError(f"rule {name}: {what} must be a value or a function of the wildcards only")
    return value


def rule_code_set(source: str) -> list[str]:
    """The nht modules a rule's shell command runs (from its ``python -m nht <stage>``)."""
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


def _match(pattern: str, path: str) -> dict | None:
    """The wildcards with which a Snakemake output pattern (its constraints included) makes
    ``path``, or None (Snakemake's ``glob_wildcards`` on that one file)."""
    from snakemake.io import glob_wildcards

    if "{" not in pattern:
        return {} if os.path.normpath(pattern) == os.path.normpath(path) else None
    values = glob_wildcards(pattern, files=[path])._asdict()
    if not all(values.values()):
        return None
    return {k: v[0] for k, v in values.items()}


class Recompute:
    """The decisions about the jobs of one Snakemake run (see the module doc).

    ``rules``: Snakemake's ``rules`` object of the workflow (``rules.<name>``: a rule as declared),
    read when the first job is decided, after every rule is defined."""

    def __init__(self, rules, records_dir: str, data_records_dir: str | None = None, root: str | Path = "."):
        self.declared = rules
        self.records_dir = records_dir
        self.data_records_dir = data_records_dir or records_dir
        self._data_root = str(Path(self.data_records_dir).parent) + "/"
        self.root = Path(root)
        self._inputs: dict[str, Callable] = {}          # rule -> its own input function (a dict)
        self._targets_evaluated = False
        self._warned: set[str] = set()
        self._code: dict[str, tuple[str, list[str]]] = {}
        self._definitions: dict[str, str] = {}
        self._records: dict[str, dict] | None = None
        self._producer: dict[str, str] = {}
        self._md5: dict[str, str | None] = {}
        self._decisions: dict[str, Decision] = {}
        self._patterns: list | None = None
        self._snapshot: DvcSnapshot | None = None

    # -- what a rule declares ---------------------------------------------------------------------
    def inputs(self, rule: str, fn: Callable | None = None, /, **named) -> Callable:
        """The input function of ``rule`` (for ``unpack``): the rule's own inputs, by name (values,
        or functions of the wildcards), or one function of the wildcards returning them as a dict,
        with the job's decision added (see the module doc's table)."""
        if fn is not None and named:
            raise ValueError(f"rule {rule}: RC.inputs takes one input function or named inputs, not both")
        if rule in self._inputs:
            raise ValueError(f"RC.inputs({rule!r}, ...) is used twice: each rule names itself, once")
        if fn is not None:
            own = _of_wildcards(rule, "its input function", fn)
        else:
            fns = {k: _of_wildcards(rule, f"input {k}", v) for k, v in named.items()}
            own = lambda w: {k: f(w) for k, f in fns.items()}  # noqa: E731
        self._inputs[rule] = own
        return lambda wildcards: self.input_files(rule, Wildcards(wildcards.items()))

    def _declared(self, rule: str):
        return getattr(self.declared, rule)

    def outputs_of(self, rule: str, w: dict) -> list[str]:
        """The job's output paths, from the rule's declared ``output:`` (``rules.<rule>.output``)."""
        return [str(p).format(**w) for p in self._declared(rule).output]

    def params_of(self, rule: str, w: dict) -> dict:
        """The job's params values that define it (``rules.<rule>.params``, less ``nht`` and the
        scheduling params)."""
        skip, w = {TAG_PARAM} | SCHEDULING_PARAMS, Wildcards(w)
        return {k: _of_wildcards(rule, f"param {k}", v)(w)
                for k, v in sorted(self._declared(rule).params.items()) if k not in skip}

    def shell_of(self, rule: str) -> str:
        """The rule's shell command as written (``rules.<rule>.rule.shellcmd``), whitespace-normalised."""
        return " ".join((self._declared(rule).rule.shellcmd or "").split())

    def code(self, rule: str) -> tuple[str, list[str]]:
        """(fingerprint, module list) of the code a rule runs."""
        if rule not in self._code:
            mods = rule_code_set(self.shell_of(rule))
            self._code[rule] = (entry_fingerprint(mods) if mods else "", mods)
        return self._code[rule]

    # -- lazily loaded state --------------------------------------------------------------------
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

    def restorable(self, path: str, md5: str) -> bool:
        """Whether DVC can put back this version of ``path`` (asked only when an output is bad)."""
        if self._snapshot is None:
            self._snapshot = DvcSnapshot(self.root)
        return self._snapshot.restorable(path, md5)

    # -- a job's identity -----------------------------------------------------------------------
    def definition(self, rule: str, w: dict) -> str:
        """Hash of what defines a job besides content and code (see the module doc)."""
        stage = stage_name(rule, w)
        if stage not in self._definitions:
            doc = {"shell": self.shell_of(rule), "params": self.params_of(rule, w),
                   "inputs": {k: _paths(v) for k, v in sorted(self._inputs[rule](w).items())},
                   "outputs": self.outputs_of(rule, w), "wildcards": dict(w)}
            self._definitions[stage] = hashlib.sha256(
                json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self._definitions[stage]

    def records_dir_of(self, rule: str, w: dict) -> str:
        outs = self.outputs_of(rule, w)
        return self.data_records_dir if outs and outs[0].startswith(self._data_root) else self.records_dir

    def tag(self, wildcards, output) -> str:
        """The ``nht`` param of every job (``params: nht=RC.tag``): what its wrapper needs to
        record it (constant per definition): stage name, definition hash, records directory and
        output paths (the inputs, which can be thousands, follow as separate arguments: one
        argument may hold at most 128 KiB). The job's rule is the one whose declared outputs,
        filled with its wildcards, are its outputs."""
        w, outs = Wildcards(wildcards.items()), [str(o) for o in output]
        rules = [r for r in self._inputs if self._outputs_or_none(r, w) == outs]
        if len(rules) > 1:
            rules = [r for r in rules if any(rule == r for rule, _w in self._producers(outs[0]))] or rules
        if not rules:
            raise ValueError(f"nht: no rule declared with RC.inputs writes {outs}")
        rule = rules[0]
        return json.dumps({"stage": stage_name(rule, w), "rule": rule, "wildcards": dict(w),
                           "definition": self.definition(rule, w), "records": self.records_dir_of(rule, w),
                           "outputs": outs}, sort_keys=True)

    def _outputs_or_none(self, rule: str, w: dict) -> list[str] | None:
        try:
            return self.outputs_of(rule, w)
        except (KeyError, IndexError):
            return None

    # -- which job makes a file (Snakemake's matching) ------------------------------------------
    def _producers(self, path: str):
        """(rule, wildcards) of every rule whose declared outputs (``rules.<rule>.rule.output``,
        with the rule's and the workflow's ``wildcard_constraints``) make ``path``, in rule order."""
        if self._patterns is None:
            self._patterns = [(name, str(p), *_literal_ends(str(p)))
                              for name in self._inputs for p in self._declared(name).rule.output]
        for name, pattern, head, tail in self._patterns:
            if path.startswith(head) and path.endswith(tail):
                w = _match(pattern, path)
                if w is not None:
                    yield name, Wildcards(w)

    def producer_of(self, path: str) -> tuple[str, Wildcards] | None:
        """(rule, wildcards) of the job that makes ``path``: the first rule whose declared outputs
        match it, or None."""
        return next(self._producers(path), None)

    # -- decisions ------------------------------------------------------------------------------
    def decide(self, rule: str, w: dict) -> Decision:
        stage = stage_name(rule, w)
        if stage in self._decisions:
            return self._decisions[stage]
        self._decisions[stage] = Decision(stage, "stale", "dependency cycle")   # guard
        inputs = self._inputs[rule](w)
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
            if prec is not None and not isinstance(prec, Unreadable) and prec.get("rule") in self._inputs:
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
        if all(self.restorable(p, rec["outputs"][p]) for p in bad):
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
                print(f"nht: {d.stage} is {d.status} ({d.reason}); with an explicit target it reruns only "
                      f"with `--forcerun {rule}` (or run the default target)", file=sys.stderr)
        return out

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



def _literal_ends(pattern: str) -> tuple[str, str]:
    """The fixed text before the first and after the last wildcard of a pattern (a quick filter)."""
    if "{" not in pattern:
        return pattern, pattern
    return pattern[:pattern.index("{")], pattern[pattern.rindex("}") + 1:]


def _file_state(path: Path) -> list | None:
    """(size, mtime_ns, inode) of a file, or None when it does not exist (see :meth:`Recompute._stamp`)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]
