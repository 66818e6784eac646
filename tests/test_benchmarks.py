"""Every benchmark script runs (issue 18: unexercised code rots).

Convention: every ``benchmarks/*.py`` with a ``__main__`` entry accepts ``--smoke`` (tiny inputs,
seconds to a minute on 2 cores, nothing written into the repository: temp dirs or stdout). This
test DISCOVERS the scripts (a new one is picked up without editing this file), runs each with
``--smoke`` in a subprocess from the repository root, and asserts exit status 0, that no file of
the repository appeared or changed (``git status``; code files excepted, see :data:`CODE`), and a
sanity check of its output
(:data:`CHECKS`; a script without an entry there must at least print something).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
MAIN = re.compile(r"^if __name__ == [\"']__main__[\"']\s*:", re.M)
#: scripts that run the real snakemake / dvc (the suite's ``slow`` marker)
SLOW = {"default_run.py", "images_harness.py", "recompute_overhead.py"}


def scripts() -> list[str]:
    """Names of the benchmarks/*.py files with a ``__main__`` entry."""
    return sorted(p.name for p in BENCH.glob("*.py") if MAIN.search(p.read_text()))


def _json_after(text: str, marker: str = "{") -> dict:
    """The JSON object that starts at the first line beginning with ``marker``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(marker))
    return json.loads("\n".join(lines[start:]))


def _gpu_check(out: str) -> None:
    doc = json.loads(out)
    assert doc["device"]["device"] == "cpu", doc["device"]     # smoke mode runs on the CPU, GPU or not
    assert doc["adamw_vs_torch"]["max_abs_diff_params"] < 1e-4, doc["adamw_vs_torch"]
    for name, d in doc["stacked_vs_modules"].items():
        assert d["max_abs_diff_output"] < 1e-3, (name, d)
    assert all(v["cell_steps_per_s"] > 0 for v in doc["speed"].values()), doc["speed"]


def _batched(out: str) -> None:
    values = dict(parts for parts in (line.split(None, 1) for line in out.splitlines()) if len(parts) == 2)
    assert int(values["cells"]) >= 1 and int(values["steps_per_cell"]) >= 1, values
    assert float(values["batched_cell_steps_per_s"]) > 0 and float(values["flops_per_cell_step"]) > 0, values


def _companion(out: str) -> None:
    assert "| 1 | nht | 42 | 40 |" in out, out
    assert re.search(r"\| 1 \| companion \| 42–51 \| 80,000 \| 10/10 \| 1,100 ± 211 \|", out), out
    assert "| 1 | 42 |" in out, out                       # the per-seed table pairs seed 42 of both codes


def _default_run(out: str) -> None:
    assert "smoke (modular): cells 2" in out, out
    assert re.search(r"peak RSS \(one process\)\s+[0-9.]+ GiB", out), out
    assert "| `smoke` | 2: " in out and "by `benchmarks/default_run.py` on" in out, out   # the science table


def _epoch_time(out: str) -> None:
    doc = json.loads(out)
    assert doc["device"] == "cpu" and doc["s_per_epoch"] > 0 and doc["params"] > 0, doc


def _harness(out: str) -> None:
    assert "snakemake exit 0" in out, out[-3000:]
    assert '"experiment": "smoke"' in out.split("snakemake exit 0", 1)[1], out[-3000:]   # its summary, printed


def _search(out: str) -> None:
    rows = [line for line in out.splitlines() if line.startswith("smoke,")]
    assert len(rows) == 1, out
    assert "protocol,cell,weight_decay" in out, out


def _recompute(out: str) -> None:
    r = _json_after(out)["results"][0]
    assert r["cells"] == 10 and r["files"] > 10 and r["noop_s"] > 0, r


CHECKS = {"gpu_check.py": _gpu_check, "batched_training.py": _batched, "companion_comparison.py": _companion,
          "default_run.py": _default_run, "images_epoch_time.py": _epoch_time, "images_harness.py": _harness,
          "image_transition_search.py": _search, "recompute_overhead.py": _recompute}


#: code files are left out of the "wrote nothing" check: no benchmark writes code, and in a shared
#: working tree other people edit code while the suite runs
CODE = (".py", ".smk", ".toml", ".cfg", "Makefile", "Snakefile", ".schema.yaml")


def _repo_state() -> set[str]:
    """``git status`` entries (modified or untracked, not ignored) of the repository's non-code files,
    each with the file's size and modification time (so a second write to a modified file shows)."""
    proc = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return set()
    state = set()
    for line in proc.stdout.splitlines():
        path = REPO / line[3:].split(" -> ")[-1].strip('"')
        if not path.name.endswith(CODE):
            st = path.stat() if path.exists() else None
            state.add(f"{line} {st.st_size if st else '-'} {st.st_mtime_ns if st else '-'}")
    return state


def test_every_script_is_discovered():
    found = scripts()
    assert set(CHECKS) <= set(found), f"a checked script lost its __main__ entry: {set(CHECKS) - set(found)}"


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in scripts()])
def test_script_runs_with_smoke(name):
    env = dict(os.environ, PYTHONUNBUFFERED="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("OUT", None)                                   # gpu_check.py writes $OUT/gpu_check.json when set
    before = _repo_state()
    proc = subprocess.run([sys.executable, str(BENCH / name), "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{name} --smoke exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert proc.stdout.strip(), f"{name} --smoke printed nothing"
    CHECKS.get(name, lambda out: None)(proc.stdout)
    changed = _repo_state() - before
    assert not changed, f"{name} --smoke wrote into the repository: {sorted(changed)}"


def test_companion_rows_of_the_docs_are_regenerated():
    """The companion side of docs/companion_comparison.md (the README's companion table) comes out of
    docs/reference/companion_summary2.json again (main raised KeyError 'T_fit' there: the reference
    names it T_mem). Every companion row of the doc must be in a freshly built table."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("companion_comparison", BENCH / "companion_comparison.py")
    cc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cc)
    comp, source = cc.load_companion(cc.REFERENCE)
    assert len(comp) == 80 and sum(r["T_fit"] is not None for r in comp) >= 60   # the companion's T_mem
    doc_rows = [line for line in (REPO / "docs" / "companion_comparison.md").read_text().splitlines()
                if "| companion |" in line and "not in the companion" not in line]
    assert doc_rows
    lams = sorted({float(line.split("|")[1]) for line in doc_rows})
    nht = [{"experiment": "x", "cell": f"c{lam}", "lam": lam, "seed": 0, "T_fit": 1, "T_grok": 1, "V_fit": 1.0,
            "V_final": 1.0, "provenance": {}, "on_grid": True} for lam in lams]
    table = cc.build_table(nht, comp, source, {"x": 1}, 500, [])
    missing = [row for row in doc_rows if row not in table.splitlines()]
    assert not missing, missing


def test_gpu_check_images_mode_runs_with_smoke():
    """``gpu_check.py --images --smoke``: every image setup (resnet18 fp32/bf16, one and stacked
    simple_cnn cells) times on the CPU, and the preset estimates come out (issue 21)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("OUT", None)
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--images", "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["device"]["device"] == "cpu"
    setups = doc["images"]
    for key in ("resnet18/fp32", "resnet18/bf16", "simple_cnn/1/fp32", "simple_cnn/2/bf16"):
        assert setups[key]["seconds_per_epoch"] > 0 and setups[key]["cell_epochs_per_s"] > 0, key
    assert setups["simple_cnn/2/fp32"]["throughput_over_one_cell"] > 0
    assert setups["estimate"]["paper_cifar10_39_cells_min"] > 0 and setups["estimate"]["paper_resnet18_9_cells_min"] > 0
