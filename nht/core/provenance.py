"""What produced a result: code version, library versions, device. Stored with every output."""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

import nht

REPO = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``git describe``-like id of the code: commit hash, '+dirty' when nht/ has local edits."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "nht", "workflow"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"nht-{nht.__version__} (no git)"
    if not commit:
        return f"nht-{nht.__version__} (no git)"
    return commit + ("+dirty" if dirty else "")


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def record(**extra) -> dict:
    """Provenance dict: nht version, code version, Python, torch, platform and CPU, plus ``extra``."""
    import torch

    info = {"nht": nht.__version__, "code_version": code_version(), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(), "cpu": cpu_model()}
    info.update(extra)
    return info
