"""Fingerprints of code: what a stage's result depends on in nht's own source and in its rule.

A fingerprint changes when the code *does* something different, not when it is reformatted:

* :func:`code_fingerprint` hashes the syntax tree (``ast.dump`` without line numbers) of a module
  and of every ``nht`` module it imports, at any depth and from anywhere in the file (function-local
  imports included), with docstrings removed. Comments, blank lines, formatting and docstrings do
  not change it; any change to what the code executes does.
It is a pure function of the files on disk (no imports are executed), cheap enough to run for
every stage at DAG time. (A rule's own definition comes from Snakemake's view of the rule,
:mod:`nht.recompute.decide`.)
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "nht"
ROOT = Path(__file__).resolve().parents[2]      # the directory holding the nht package


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The source file of a dotted ``nht`` module name, or None when there is none."""
    base = root / module.replace(".", "/")
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@functools.lru_cache(maxsize=None)
def _parsed(path: str, module: str, mtime_ns: int, size: int) -> tuple[str, frozenset[str]]:
    """(normalised dump, imported module names) of one file; cached by its stat."""
    text = Path(path).read_text()
    tree = ast.parse(text, path)
    imports = set()
    is_pkg = path.endswith("__init__.py")
    pkg_parts = module.split(".") if is_pkg else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[:len(pkg_parts) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            imports.add(mod)
            imports.update(f"{mod}.{a.name}" for a in node.names)   # `from nht import train`
    dump = ast.dump(_strip_docstrings(tree), include_attributes=False)
    return dump, frozenset(m for m in imports if m.split(".")[0] == PACKAGE)


def _parse(module: str, root: Path) -> tuple[str, frozenset[str]] | None:
    f = module_file(module, root)
    if f is None:
        return None
    st = f.stat()
    return _parsed(str(f), module, st.st_mtime_ns, st.st_size)


def code_set(*modules: str, root: Path = ROOT) -> list[str]:
    """Sorted names of the ``nht`` modules that ``modules`` run: themselves, their parent
    packages and everything they import, transitively."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        mod = todo.pop()
        if mod in seen or module_file(mod, root) is None:
            continue
        seen.add(mod)
        parts = mod.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        parsed = _parse(mod, root)
        if parsed is not None:
            todo.extend(parsed[1])
    return sorted(seen)


def code_fingerprint(*modules: str, root: Path = ROOT) -> str:
    """Hex digest of the code set of ``modules`` (see module doc): equal iff the code is."""
    return _digest(code_set(*modules, root=root), root)


def _digest(mods, root: Path) -> str:
    h = hashlib.sha256()
    for mod in mods:
        h.update(mod.encode() + b"\0" + _parse(mod, root)[0].encode() + b"\0")
    return h.hexdigest()[:16]


def module_hashes(mods: list[str], root: Path = ROOT) -> dict[str, str]:
    """Per-module digests of a code set (to say which module changed)."""
    return {m: hashlib.sha256(_parse(m, root)[0].encode()).hexdigest()[:12] for m in sorted(mods)}


def entry_fingerprint(mods: list[str], root: Path = ROOT) -> str:
    """Hex digest of an explicit, already closed code set (see :func:`code_set`)."""
    return _digest(sorted(mods), root)
