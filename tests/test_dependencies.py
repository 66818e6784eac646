"""Declared dependencies (issue 18): every third-party import is declared in pyproject.toml, and
every declared minimum is at least the version that introduced each feature nht uses.

* :func:`test_every_imported_module_is_declared`: the top-level imports of nht/, workflow/ (rules and
  the Snakefile) and benchmarks/ must come from ``project.dependencies``; those of tests/ from the
  dependencies or the ``test`` extra (module -> distribution through the installed metadata).
* :func:`test_declared_minimums_cover_the_features_used`: :data:`FEATURES` lists, per distribution,
  the version that introduced each feature nht relies on; the declared minimum must not be lower,
  and the installed version must have the feature (a probe per feature, so the table cannot name a
  feature that does not exist).
* :func:`test_installed_versions_satisfy_the_declarations`: the environment running the suite is
  inside the declared ranges.

The minimums themselves are RUN by ``.ci/min_versions.sh`` (called by the slow test at the end; the scientific-Python stack installed at
exactly the declared minimums; torch, torchvision, snakemake and dvc are too large to install twice
and rely on :data:`FEATURES`).
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
#: this repository's own modules: the package, and the scripts of tests/ and benchmarks/ (which
#: import each other's helpers, e.g. benchmarks/step_ops.count_ops)
LOCAL = {"nht"} | {p.stem for d in ("tests", "benchmarks") for p in (REPO / d).glob("*.py")}
#: distributions imported by the tests that a declared one brings as its own requirement (moto
#: requires boto3); declaring boto3 too makes pip backtrack for minutes in a fresh environment
PROVIDED_BY = {"boto3": "moto"}


def _requirements() -> tuple[dict[str, Requirement], dict[str, Requirement]]:
    """(project dependencies, test extra) by canonical distribution name."""
    try:
        import tomllib
    except ModuleNotFoundError:                       # Python 3.10
        tomllib = pytest.importorskip("tomli")
    doc = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    canon = lambda reqs: {_canonical(Requirement(r).name): Requirement(r) for r in reqs}  # noqa: E731
    return canon(doc["dependencies"]), canon(doc.get("optional-dependencies", {}).get("test", []))


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports(paths: list[Path]) -> dict[str, set[str]]:
    """Top-level imported module -> files importing it (absolute imports; .smk files line by line)."""
    found: dict[str, set[str]] = {}
    for path in paths:
        text = path.read_text()
        try:
            trees = [ast.parse(text)]
        except SyntaxError:                           # Snakemake syntax: parse the import lines alone
            trees = []
            for line in text.splitlines():
                if re.match(r"\s*(import|from)\s+\w", line):
                    try:
                        trees.append(ast.parse(line.strip()))
                    except SyntaxError:
                        pass
        for tree in trees:
            for node in ast.walk(tree):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                         else [])
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


def _third_party(found: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: f for m, f in found.items() if m not in sys.stdlib_module_names and m not in LOCAL}


def _sources(*dirs: str) -> list[Path]:
    out = []
    for d in dirs:
        p = REPO / d
        out += [p] if p.is_file() else [*p.rglob("*.py"), *p.rglob("*.smk")]
    return [p for p in out if "__pycache__" not in p.parts]


def test_every_imported_module_is_declared():
    deps, test_extra = _requirements()
    dists = md.packages_distributions()
    problems = []
    for where, allowed in (((("nht", "workflow", "benchmarks", "Snakefile")), deps),
                           ((("tests",)), {**deps, **test_extra})):
        for module, files in sorted(_third_party(_imports(_sources(*where))).items()):
            names = {_canonical(d) for d in dists.get(module, [])}
            if not names:
                problems.append(f"{module} (imported by {sorted(files)[:3]}) is not installed: no distribution known")
            elif not names & set(allowed) and not (allowed is not deps and
                                                   {PROVIDED_BY.get(n) for n in names} & set(allowed)):
                problems.append(f"{module} (distribution {sorted(names)}, imported by {sorted(files)[:3]}) is not "
                                f"declared in pyproject.toml {'dependencies' if allowed is deps else '[test]'}")
    assert not problems, "\n".join(problems)


def _has_kwarg(func, name: str) -> bool:
    return name in inspect.signature(func).parameters


def _probe(module: str, attr: str):
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


#: distribution -> [(version that introduced it, feature, probe on the installed version)]
FEATURES = {
    "scipy": [("1.15", "stats.bootstrap(rng=...) (nht/science/stats.py)",
               lambda: _has_kwarg(_probe("scipy.stats", "bootstrap"), "rng")),
              ("1.11", "stats.ecdf of CensoredData (nht/science/delay_law.py)",
               lambda: callable(_probe("scipy.stats", "ecdf")) and callable(_probe("scipy.stats", "CensoredData"))),
              ("1.7", "stats.binomtest", lambda: callable(_probe("scipy.stats", "binomtest")))],
    "jsonschema": [("4.0", "Draft202012Validator (nht/config.py)",
                    lambda: callable(_probe("jsonschema", "Draft202012Validator")))],
    "pyyaml": [("5.1", "yaml.safe_dump(sort_keys=...) (tests, benchmarks)",
                lambda: _probe("yaml", "safe_dump")({"b": 1, "a": 2}, sort_keys=False).startswith("b"))],
    "snakemake": [("9.0", 'min_version("9.0") in the Snakefile',
                   lambda: 'min_version("9.0")' in (REPO / "Snakefile").read_text())],
    "torch": [("2.1", "torch.utils.flop_counter.FlopCounterMode (benchmarks/batched_training.py)",
               lambda: callable(_probe("torch.utils.flop_counter", "FlopCounterMode"))),
              ("2.0", "torch.func.stack_module_state / functional_call (many-cell models)",
               lambda: callable(_probe("torch.func", "stack_module_state"))),
              ("2.0", "torch.backends.cpu.get_cpu_capability (tests/test_golden.py)",
               lambda: callable(_probe("torch.backends.cpu", "get_cpu_capability")))],
    "numpy": [("1.17", "numpy.random.default_rng", lambda: callable(_probe("numpy.random", "default_rng")))],
}


def test_declared_minimums_cover_the_features_used():
    deps, test_extra = _requirements()
    problems = []
    for dist, features in FEATURES.items():
        req = deps.get(dist) or test_extra.get(dist)
        assert req is not None, f"{dist} is used but not declared"
        lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
        assert lows, f"{req}: no minimum declared"
        for since, what, probe in features:
            if max(lows) < Version(since):
                problems.append(f"{req}: {what} needs {dist}>={since}")
            assert probe(), f"the installed {dist} {md.version(dist)} lacks {what}: the FEATURES table is wrong"
    assert not problems, "\n".join(problems)


def test_installed_versions_satisfy_the_declarations():
    deps, test_extra = _requirements()
    problems = []
    for name, req in {**deps, **test_extra}.items():
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            problems.append(f"{req} is declared but not installed")
            continue
        if not SpecifierSet(str(req.specifier)).contains(have, prereleases=True):
            problems.append(f"{req}: installed {have}")
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_the_suite_passes_at_the_declared_minimum_versions():
    """The scientific stack at exactly its declared minimums (.ci/min_versions.sh: a fresh venv,
    ~2 min) passes the tests that exercise it."""
    proc = subprocess.run(["bash", str(REPO / ".ci" / "min_versions.sh")], cwd=REPO, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "passed" in proc.stdout or "skipped" in proc.stdout
