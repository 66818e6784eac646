"""Behaviour preserved (issue 11): per-cell values of a small committed config of every domain,
recorded in tests/golden/expected.json, must come out the same after a refactor.

Modular cells: T_mem, T_gen (steps, exact), V_mem, V_final (relative 1e-5), regime, from the job's
history through today's one event extraction (:func:`modular_record`), so the check covers training
and the event rule. Image cell: per-epoch train accuracy, clean test accuracy and shortcut
reliance (absolute 1e-6; the history's ``train_acc``, ``test_acc``, ``phi``) and V (relative 1e-5).
CPU, 1 thread, deterministic. Cells are matched by the readable part of their id (the hash suffix
also covers analysis-only settings). An intended change regenerates the file
(``python tests/test_golden.py --write``) in a commit that says why.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent / "golden"
MODULAR_KEYS = ("T_mem", "T_gen", "V_mem", "V_final", "regime")
IMAGE_COLUMNS = {"train_acc": "train_acc", "clean_acc": "test_acc", "reliance": "phi", "V": "V"}  # key: column


#: the recorded regime names (before the one vocabulary of nht.core.events) -> today's names
RECORDED_REGIME = {"delayed": "intermediate", "shortcut_persists": "weak", "no_fit": "strong",
                   "immediate": "immediate", "diverged": "diverged"}


def modular_record(h: pd.DataFrame, s: dict, status: str) -> dict:
    """The recorded keys from today's one event extraction (:func:`nht.core.events.extract_events`):
    T_mem = T_fit and T_gen = T_transition (steps), V_mem = V_fit, V_final (squared norms), and the
    regime in the recorded vocabulary (:data:`RECORDED_REGIME`, an intended renaming)."""
    from nht.core.events import extract_events

    rec = extract_events(h, s, status)
    back = {new: old for old, new in RECORDED_REGIME.items()}
    return {"T_mem": rec["T_fit"], "T_gen": rec["T_transition"], "V_mem": rec["V_fit"],
            "V_final": rec["V_final"], "regime": back[rec["regime"]]}


def readable(cell_id: str) -> str:
    return cell_id.rsplit("-", 1)[0]


def measure(tmp: Path) -> dict:
    from nht.domains.modular import data as mdata
    from nht.config import group_jobs, expand_cells, load_config
    from nht.domains.images import data as idata, shortcuts
    from nht.domains.images.train import train_cell
    from nht.domains.modular.train import train_job

    config = load_config(HERE / "config.yaml")
    out: dict = {}
    cells = expand_cells(config)
    for job in group_jobs([c for c in cells if c.kind == "modular"]):
        c0 = job.cells[0]
        ds = mdata.make_modular_dataset(c0["op"], c0["p"], c0["train_frac"], c0["split_seed"])
        hist, meta = tmp / f"{job.id}.csv", tmp / f"{job.id}.json"
        train_job(list(job.cells), ds, hist, meta, device="cpu", threads=1, job_id=job.id)
        h = pd.read_csv(hist)
        status = json.loads(meta.read_text())["cells"]
        for c in job.cells:
            rec = modular_record(h[h["cell"] == c.id].drop(columns="cell").reset_index(drop=True), c.settings,
                                 status[c.id]["status"])
            out[c.id] = {k: rec[k] for k in MODULAR_KEYS}
    for c in (c for c in cells if c.kind == "image"):
        d = shortcuts.inject(idata.load_digits(), c["rho"], c["border"], c["seed"],
                             n_train=c["dataset"]["n_train"], n_test=c["dataset"]["n_test"])
        path = tmp / f"{c.id}.npz"
        idata.save_npz(d, path)
        train_cell(c.settings, path, tmp / c.id, device="cpu", threads=1, cell_id=c.id)
        h = pd.read_csv(tmp / c.id / "history.csv")
        out[c.id] = {key: [float(x) for x in h[col]] for key, col in IMAGE_COLUMNS.items()}
    return out


def _close(a, b, rel=1e-5, abs_=1e-6) -> bool:
    if a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return a == b
    if math.isnan(float(a)) or math.isnan(float(b)):
        return math.isnan(float(a)) and math.isnan(float(b))
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=abs_)


def test_golden_values_are_preserved(tmp_path):
    expected = {readable(k): v for k, v in json.loads((HERE / "expected.json").read_text()).items()}
    got = {readable(k): v for k, v in measure(tmp_path).items()}
    assert set(got) == set(expected), "the golden config's cells changed (ids)"
    for cell, values in expected.items():
        for key, want in values.items():
            have = got[cell][key]
            if isinstance(want, list):
                assert len(have) == len(want), (cell, key)
                tol = {"rel": 1e-5} if key == "V" else {"rel": 0, "abs_": 1e-6}
                assert all(_close(h, w, **tol) for h, w in zip(have, want)), (cell, key, have, want)
            elif key in ("T_mem", "T_gen"):
                assert have == want, (cell, key, have, want)
            else:
                assert _close(have, want), (cell, key, have, want)


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    sys.path.insert(0, str(HERE.parent.parent))
    with tempfile.TemporaryDirectory() as tmp:
        values = measure(Path(tmp))
    (HERE / "expected.json").write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    print(f"wrote {HERE / 'expected.json'} ({len(values)} cells)")
