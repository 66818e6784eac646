#!/usr/bin/env bash
# Declared minimum versions, exercised (issue 18). Installs the scientific-Python stack of
# pyproject.toml at EXACTLY its declared minimums (numpy, scipy, pandas, matplotlib, pillow, pyyaml,
# jsonschema, scikit-learn, pytest) into a fresh virtual environment, borrows the heavy stack (torch,
# torchvision, snakemake, dvc, moto) from the main one (.venv, `make setup`) through a .pth file placed
# after the pinned packages, checks that the pinned versions are the ones imported, and runs the tests
# that exercise that stack (statistics, science layer, config schema, events, scorecard, models, data).
# torch/torchvision/snakemake/dvc minimums are NOT run here: their wheels are GBs (declared minimums
# for them are checked against the features used by tests/test_dependencies.py only).
#
#   bash .ci/min_versions.sh            # ~1 min install (network) + ~1 min tests on 2 cores
#   NHT_MIN_VENV=/tmp/minv bash .ci/min_versions.sh   # keep/reuse the environment
#
# Needs Python <= 3.11 for the minimums' wheels (numpy 1.24 has none for 3.12+); skipped otherwise.
# Measured (2 shared cores, 2026-12-04, Python 3.11): 100 s in all (install ~50 s, tests 47 s,
# 166 passed). With scipy 1.14.1 instead of 1.15.0, 7 statistics and 8 science tests fail
# (bootstrap() has no rng=), which is why scipy>=1.15.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${NHT_VENV:-.venv}/bin/python
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info < (3, 12) else 1)'; then
  echo "min_versions: Python >= 3.12 has no wheels for the declared minimums; skipped"; exit 0
fi
if [ -n "${NHT_MIN_VENV:-}" ]; then
  MINV=$NHT_MIN_VENV
else
  TMP=$(mktemp -d); MINV=$TMP/venv; trap 'rm -rf "$TMP"' EXIT
fi
PINS=$("$PY" - <<'PYEOF'
import re
from pathlib import Path

LIGHT = {"numpy", "scipy", "pandas", "matplotlib", "pillow", "pyyaml", "jsonschema", "scikit-learn", "pytest"}
text = Path("pyproject.toml").read_text()
for name, spec in re.findall(r'^\s*"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*([<>=!~][^"]*)"', text, re.M) + \
        re.findall(r'"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*(>=[^"]*)"', text.split("[project.optional-dependencies]")[1]):
    low = re.search(r">=\s*([0-9][^,\s]*)", spec)
    if name.lower() in LIGHT and low:
        LIGHT.discard(name.lower())
        print(f"{name}=={low.group(1)}")
if LIGHT:
    raise SystemExit(f"no minimum declared for {sorted(LIGHT)}")
PYEOF
)
echo "pins: $(echo $PINS)"
[ -x "$MINV/bin/python" ] || python3 -m venv "$MINV" 2>/dev/null || "$PY" -m venv --without-pip "$MINV"
"$MINV/bin/python" -m pip install -q --disable-pip-version-check $PINS
MAIN_SP=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
MIN_SP=$("$MINV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$MAIN_SP" > "$MIN_SP/zz_nht_main_venv.pth"
PINS="$PINS" "$MINV/bin/python" - <<'PYEOF'
import importlib.metadata as md, os
from packaging.version import Version
pins = [p.split("==") for p in os.environ["PINS"].split()]
bad = [(n, v, md.version(n)) for n, v in pins if Version(md.version(n)) != Version(v)]
assert not bad, f"imported versions differ from the pins: {bad}"
import numpy, scipy, pandas, torch  # noqa: E401  (the pinned stack loads together with torch)
print("imported:", numpy.__version__, scipy.__version__, pandas.__version__, "torch", torch.__version__)
PYEOF
PYTHONPATH="$PWD" "$MINV/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" \
  tests/test_stats.py tests/test_science.py tests/test_config.py tests/test_config_checks.py \
  tests/test_events.py tests/test_scorecard.py tests/test_models.py tests/test_data.py \
  tests/test_images_data.py tests/test_dependencies.py
