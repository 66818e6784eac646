"""The single place where the compute device, dtype, threads and determinism are decided."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import random

import numpy as np
import torch

DTYPE = torch.float32


def resolve_device(preference: str = "auto") -> torch.device:
    """Map a config value (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``) to a torch device.

    ``auto`` picks CUDA when it is available and the CPU otherwise. Asking for CUDA on a
    machine without it is an error rather than a silent fallback.
    """
    env = os.environ.get("NHT_DEVICE")
    if env:
        preference = env
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{preference}' requested but CUDA is not available on this machine")
    return torch.device(preference)


PRECISIONS = ("auto", "fp32", "tf32", "bf16")


def resolve_precision(precision: str, device: torch.device, cuda_default: str = "fp32") -> str:
    """The precision a run uses: ``auto`` is fp32 on the CPU (the bitwise-deterministic reference)
    and the domain's ``cuda_default`` on CUDA (images: ``bf16``, the fast path; modular: ``fp32``);
    any other value is used as given. Results record the resolved value (provenance)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    return cuda_default if device.type == "cuda" else "fp32"


def configure(threads: int | None = None, deterministic: bool = True, precision: str = "fp32") -> None:
    """Set torch's CPU threads, determinism and matmul precision for this process.

    On the CPU, training is bitwise deterministic for a given seed and thread count. On CUDA
    ``deterministic`` asks cuBLAS/cuDNN for deterministic kernels; ``precision='tf32'`` allows
    TF32 matmuls (faster on Ampere and later, lower precision). ``bf16`` is applied by
    :func:`autocast` around forward/backward passes.
    """
    if precision not in PRECISIONS or precision == "auto":
        raise ValueError(f"precision must be resolved (resolve_precision) to one of {PRECISIONS[1:]}, "
                         f"got {precision!r}")
    keep_freed_memory()
    tf32 = precision == "tf32"
    # Strong weight decay drives weights towards zero; denormal floats there slow CPU arithmetic
    # by several times. Values below ~1e-38 carry nothing these measurements use.
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(int(threads))
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory a training step frees for the next step (``mallopt``:
    no ``mmap`` for large blocks, no trimming of the heap), instead of returning it to the system
    and faulting fresh pages in at every step. A transformer step of 8 cells allocates ~12 MB of
    large temporaries: ~1,000-5,000 page faults per step without this, none with it; a step 3-9 %
    faster at 8 cells, 14 % at 80 (2 Xeon cores, 1 thread; ``benchmarks/batched_training.py``
    prints the faults per step). The process keeps its peak memory until it exits (what a
    training job needs anyway). Called by :func:`configure`; a no-op returning False where the C
    library is not glibc (tests/test_cpu_step.py)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4        # <malloc.h>
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch global generators (used for model initialisation)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def describe(device: torch.device) -> dict:
    """Provenance record of the device and library versions, stored with every result."""
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def autocast(device: torch.device, precision: str):
    """Context manager for a forward/backward pass: bfloat16 autocast when ``precision='bf16'``."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
