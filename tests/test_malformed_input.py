"""Malformed cell records, histories and training metas are clear errors naming the file and what
is wrong (issue 18, item 4): never a cell counted as regime 'strong', never a bare KeyError."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from nht.config import expand_cells, validate_config
from nht.core.history import HistoryError, check_history, read_history
from nht.science.cellrecords import RecordError, check_record, read_record
from nht.stages import norms as norms_stage
from nht.stages import science as science_stage

from conftest import tiny_modular


def history(n: int = 12) -> pd.DataFrame:
    """A modular history that fits at step 20 and generalises at step 60 (V falls after the fit)."""
    steps = [10 * i for i in range(n)]
    return pd.DataFrame({"step": steps, "Lambda": [0.01 * s for s in steps],
                         "train_acc": [min(1.0, 0.5 * i) for i in range(n)],
                         "test_acc": [1.0 if s >= 60 else 0.1 for s in steps],
                         "phi": [0.0 if s >= 60 else 0.9 for s in steps],
                         "loss": [1.0 / (i + 1) for i in range(n)],
                         "V": [100.0 + 10 * i if s <= 20 else 130.0 - i for i, s in enumerate(steps)]})


@pytest.fixture
def cell_dir(tmp_path) -> tuple[Path, dict]:
    """One cell's history.csv, meta.json and a norms.json made by the real norms stage."""
    cell = expand_cells(validate_config({"experiments": {"e": tiny_modular(weight_decay=1.0, init_scale=1)}}))[0]
    d = tmp_path / "e" / "cells" / cell.id
    d.mkdir(parents=True)
    history().to_csv(d / "history.csv", index=False)
    (d / "meta.json").write_text(json.dumps({"experiment": "e", "cells": {cell.id: {"status": "finished"}},
                                             "provenance": {}}))
    norms_stage.main(["--history", str(d / "history.csv"), "--meta", str(d / "meta.json"), "--cell", cell.id,
                      "--kind", "modular", "--settings", json.dumps(cell.run_settings),
                      "--out-norms", str(d / "norms.json")])
    return d, json.loads((d / "norms.json").read_text())


def science_error(d: Path, tmp_path: Path) -> str:
    with pytest.raises(SystemExit) as info:
        science_stage.main(["--norms", str(d / "norms.json"), "--histories", str(d / "history.csv"),
                            "--out", str(tmp_path / "science.json"), "--figure-dir", str(tmp_path / "fig"),
                            "--n-boot", "10"])
    assert not (tmp_path / "science.json").exists()
    return str(info.value)


def test_a_record_of_the_norms_stage_passes(cell_dir):
    d, rec = cell_dir
    assert check_record(rec, "x") is rec and read_record(d / "norms.json") == rec
    assert rec["T_fit"] == 20 and rec["T_transition"] == 60 and rec["regime"] == "immediate"   # delay 40 <= 100


@pytest.mark.parametrize("change, says", [
    (lambda r: {"corrupt": 1}, "'kind' is None, not one of image, modular (missing)"),
    (lambda r: {k: v for k, v in r.items() if k != "T_fit"}, "missing field(s) T_fit"),
    (lambda r: {k: v for k, v in r.items() if k not in ("V_final", "weight_decay")}, "V_final, weight_decay"),
    (lambda r: dict(r, regime="bogus"), "'regime' is 'bogus'"),
    (lambda r: dict(r, T_fit="20"), "'T_fit' is '20', not a number or null"),
    (lambda r: [r], "a cell record is a JSON object, not list"),
])
def test_a_malformed_cell_record_stops_science_naming_the_file(cell_dir, tmp_path, change, says):
    d, rec = cell_dir
    (d / "norms.json").write_text(json.dumps(change(rec)))
    message = science_error(d, tmp_path)
    assert message.startswith(f"nht science: {d / 'norms.json'}: ") and says in message, message


def test_a_record_that_is_not_json_stops_science(cell_dir, tmp_path):
    d, _ = cell_dir
    (d / "norms.json").write_text('{"cell": ')
    assert f"{d / 'norms.json'}: not a JSON cell record" in science_error(d, tmp_path)
    with pytest.raises(RecordError, match="not a JSON cell record"):
        read_record(d / "norms.json")


@pytest.mark.parametrize("damage, says", [
    (lambda h: h.drop(columns="V"), "missing column(s) V"),
    (lambda h: h.iloc[:0], "no rows"),
    (lambda h: h.assign(V="big"), "column(s) V hold non-numbers"),
])
def test_a_malformed_history_stops_science_naming_the_file(cell_dir, tmp_path, damage, says):
    d, _ = cell_dir
    damage(history()).to_csv(d / "history.csv", index=False)
    message = science_error(d, tmp_path)
    assert f"{d / 'history.csv'}: " in message and says in message, message


def test_an_empty_history_file_is_named(tmp_path):
    (tmp_path / "history.csv").write_text("")
    with pytest.raises(HistoryError, match=r"history\.csv: not a readable CSV table"):
        read_history(tmp_path / "history.csv")
    with pytest.raises(HistoryError, match="missing column"):
        check_history(pd.DataFrame({"step": [0]}), "x")


def norms_error(d: Path, *extra: str) -> str:
    cell = d.name
    settings = json.dumps(expand_cells(validate_config({"experiments": {"e": tiny_modular(
        weight_decay=1.0, init_scale=1)}}))[0].run_settings)
    with pytest.raises(SystemExit) as info:
        norms_stage.main([*extra, "--meta", str(d / "meta.json"), "--cell", cell, "--kind", "modular",
                          "--settings", settings, "--out-norms", str(d / "new_norms.json")])
    assert not (d / "new_norms.json").exists()
    return str(info.value)


def test_the_norms_stage_names_a_bad_history_or_meta(cell_dir):
    d, _ = cell_dir
    history().drop(columns="V").to_csv(d / "bad.csv", index=False)
    assert f"nht norms: {d / 'bad.csv'}: missing column(s) V" in norms_error(d, "--history", str(d / "bad.csv"))
    (d / "meta.json").write_text(json.dumps({"provenance": {}}))
    assert f"{d / 'meta.json'}: no entry for cell {d.name} under 'cells'" in norms_error(
        d, "--history", str(d / "history.csv"))
    (d / "meta.json").write_text(json.dumps({"cells": {d.name: {}}, "provenance": {}}))
    assert f"{d / 'meta.json'}: missing field(s) status" in norms_error(d, "--history", str(d / "history.csv"))
    (d / "meta.json").write_text("not json")
    assert f"{d / 'meta.json'}: not JSON" in norms_error(d, "--history", str(d / "history.csv"))
    # a job's long table without this cell's rows
    (d / "meta.json").write_text(json.dumps({"cells": {d.name: {"status": "finished"}}, "provenance": {}}))
    history().assign(cell="other").to_csv(d / "job.csv", index=False)
    message = norms_error(d, "--job-history", str(d / "job.csv"), "--out-history", str(d / "out.csv"))
    assert f"{d / 'job.csv'} (cell {d.name}): no rows" in message, message
    (d / "meta.json").write_text(json.dumps({"cells": {}, "provenance": {}}))
    history().assign(cell=d.name).to_csv(d / "job.csv", index=False)
    message = norms_error(d, "--job-history", str(d / "job.csv"), "--out-history", str(d / "out.csv"))
    assert f"no entry for cell {d.name} under 'cells'" in message, message
