"""Code fingerprints and stage code sets (nht.core.fingerprint): what reruns a stage when edited."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nht.core.fingerprint import code_fingerprint, code_set
from nht.recompute.decide import rule_code_set

from conftest import rule_sources

REPO = Path(__file__).resolve().parent.parent
# analysis: every module of the science layer, the event extraction and the figure modules
ANALYSIS = {f"nht.science.{p.stem}" for p in (REPO / "nht" / "science").glob("*.py") if p.stem != "__init__"} | {
    "nht.core.events", "nht.domains.modular.figures", "nht.domains.images.figures", "nht.domains.images.summary"}


@pytest.fixture
def pkg(tmp_path):
    shutil.copytree(REPO / "nht", tmp_path / "nht", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_comments_docstrings_and_formatting_do_not_change_the_fingerprint(pkg):
    before = code_fingerprint("nht.stages.fit", root=pkg)
    f = pkg / "nht" / "science" / "delay_law.py"
    text = f.read_text()
    body = text.split('"""', 2)[2]                      # drop the module docstring
    f.write_text('"""A different docstring."""\n# a comment\n' + body.replace("\n\n", "\n\n\n", 3) + "\n# end\n")
    assert code_fingerprint("nht.stages.fit", root=pkg) == before


def test_a_real_change_changes_the_fingerprint_of_importers_only(pkg):
    fit, train = code_fingerprint("nht.stages.fit", root=pkg), code_fingerprint("nht.stages.train", root=pkg)
    (pkg / "nht" / "science" / "delay_law.py").write_text((pkg / "nht" / "science" / "delay_law.py").read_text() + "\nX = 1\n")
    assert code_fingerprint("nht.stages.fit", root=pkg) != fit
    assert code_fingerprint("nht.stages.train", root=pkg) == train


def test_each_stage_code_set_and_training_never_imports_analysis():
    files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    sources = rule_sources(files)
    sets = {name: rule_code_set(src) for name, src in sources.items() if "python -m nht" in src}
    print(json.dumps(sets, indent=1))                   # the listing, in the test log
    assert {"train_modular", "extract_norms", "fit_modular", "science", "figures_modular",
            "image_train", "image_figures", "image_experiment_summary"} <= set(sets)
    assert len(ANALYSIS) > 10
    for training in ("train_modular", "image_train", "make_modular_data", "image_fetch", "image_shortcut"):
        assert not ANALYSIS & set(sets[training]), (training, ANALYSIS & set(sets[training]))
    assert "nht.domains.modular.train" in sets["train_modular"] and "nht.domains.modular.models" in sets["train_modular"]
    assert "nht.domains.modular.figures" in sets["figures_modular"] and "nht.domains.modular.figures" not in sets["fit_modular"]
    assert "nht.domains.images.train" in sets["image_train"]
    for rule, mods in sets.items():                     # image stages never run modular domain code
        if rule.startswith("image_"):
            assert not {m for m in mods if m.startswith("nht.domains.modular")}, rule
    # one per-cell events rule and one science path for both domains
    assert "nht.core.events" in sets["extract_norms"] and "image_norms" not in sets
    assert "nht.science.analyse" in sets["science"]


@pytest.mark.parametrize("stage", ["nht.stages.train", "nht.stages.make_data"])
def test_training_import_closure_at_run_time(stage):
    code = f"import sys, {stage}; print([m for m in sys.modules if m.startswith('nht')])"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code.replace("print(", "import json; print(json.dumps(")
                                            + ")"], capture_output=True, text=True, check=True, cwd=REPO).stdout))
    assert loaded and not ANALYSIS & loaded, ANALYSIS & loaded
    assert set(code_set(stage)) >= loaded - {"nht.__main__"}
