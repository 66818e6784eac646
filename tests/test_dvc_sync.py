"""Unit tests of nht.dvc_sync (no Snakemake): the switch, code deps, hashes equal to DVC's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nht import dvc_sync as ds

REPO = Path(__file__).resolve().parent.parent


def test_switch(tmp_path):
    assert not ds.is_enabled({}, tmp_path)                       # auto, no .dvc/
    assert not ds.is_enabled({"dvc": {"enabled": False}}, tmp_path)
    with pytest.raises(RuntimeError, match="dvc init"):
        ds.is_enabled({"dvc": {"enabled": True}}, tmp_path)
    (tmp_path / ".dvc").mkdir()
    assert ds.is_enabled({}, tmp_path)
    assert ds.is_enabled({"dvc": {"enabled": "auto"}}, tmp_path)
    assert not ds.is_enabled({"dvc": {"enabled": False}}, tmp_path)


def test_schema_accepts_dvc_block():
    from nht.config import ConfigError, validate_config
    base = {"experiments": {"e": {"kind": "modular", "p": 7}}}
    assert validate_config(json.loads(json.dumps(base)))["dvc"] == {"enabled": "auto", "verbose": False}
    cfg = dict(base, dvc={"enabled": True})
    assert validate_config(cfg)["dvc"]["enabled"] is True
    with pytest.raises(ConfigError, match="dvc"):
        validate_config(dict(base, dvc={"enabled": "yes"}))


def test_code_deps_follow_imports_of_each_stage():
    code = ds.CodeIndex(REPO)
    train = code.for_command("{PY} -m nht train --job x")
    data = code.for_command("{PY} -m nht make-data --op add")
    figures = code.for_command("{PY} -m nht figures --x")
    assert {"nht/train.py", "nht/models.py", "nht/cli.py", "nht/pipeline.py"} <= set(train)
    assert "nht/figures.py" not in train and "nht/train.py" not in figures
    assert "nht/figures.py" in figures
    assert "nht/train.py" not in data and "nht/models.py" not in data
    assert "nht/dvc_sync.py" not in set(train) | set(data) | set(figures)
    assert code.for_command("echo no python here") == []
    # an unknown subcommand: the whole package, to be safe
    assert set(code.for_command("-m nht no-such-stage")) == set(code.all_files())


def test_hashes_equal_dvcs(tmp_path):
    """File and directory md5s as DVC computes them (checked against `dvc add`)."""
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("alpha\n")
    (tmp_path / "d" / "sub" / "b.bin").write_bytes(os.urandom(3000))
    (tmp_path / "f.txt").write_text("file\r\nwith crlf\n")
    bindir = Path(sys.executable).parent
    for cmd in (["git", "init", "-q"], [str(bindir / "dvc"), "init", "-q"],
                [str(bindir / "dvc"), "add", "-q", "d", "f.txt"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    import yaml
    hc = ds.HashCache(tmp_path)
    for name in ("d", "f.txt"):
        out = yaml.safe_load((tmp_path / f"{name}.dvc").read_text())["outs"][0]
        info = hc.info(name)
        assert info["md5"] == out["md5"] and info["size"] == out["size"]
        if "nfiles" in out:
            assert info["nfiles"] == out["nfiles"]


def test_stage_names_are_valid_for_dvc():
    name = ds.stage_name("extract_norms", {"experiment": "mlp", "cell": "add_p7_f0.6_lr0.01-1a2b3c4d"})
    assert name == "extract_norms-add_p7_f0_6_lr0_01-1a2b3c4d-mlp"
    from dvc.stage.utils import is_valid_name
    assert is_valid_name(name)
    assert ds.stage_name("summary", {}) == "summary"


def test_toposort_puts_producers_first():
    stages = {
        "c": {"deps": [{"path": "b.txt"}], "outs": [{"path": "c.txt"}]},
        "a": {"outs": [{"path": "a.txt"}]},
        "b": {"deps": [{"path": "a.txt"}, {"path": "src.txt"}], "outs": [{"path": "b.txt"}]},
    }
    order = ds._toposort(stages)
    assert order.index("a") < order.index("b") < order.index("c")
