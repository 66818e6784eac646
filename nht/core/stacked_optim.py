"""AdamW and SGD over stacked parameters: the cells of a job held in one tensor ``flat`` of shape
(slots, parameters per slot), updated in place with per-slot learning rate, weight decay, step
count and update mask, in a handful of elementwise operations whatever the number of cells or
parameter tensors (the cost of a step does not grow with the cells trained together).

Per slot the update is torch's single-tensor ``torch.optim.AdamW`` (decoupled decay) or
``torch.optim.SGD`` (``weight_decay`` added to the gradient, optional momentum), checked against
them per cell in tests/test_train.py and tests/test_step.py. The coefficients are computed in
float64, like torch's Python floats, then rounded to the parameters' dtype.

A slot whose ``alive`` is False (a stopped cell kept in place, or one whose loss was NaN/Inf)
gets decay 1 and step size 0: a stopped cell's parameters do not move (its moments do, unused),
a diverged cell's may turn NaN (its state no longer matters: its history ended at its last
finite evaluation), and the other slots are untouched, since every operation is per slot. Nothing is read back to the host: the mask, the step counts and the coefficients stay
on the device, so a step can be captured in a CUDA graph (the tensors keep their addresses; only
:meth:`StackedOptimizer.set_hparams` and :meth:`StackedOptimizer.install` make new ones).

``lr_factor`` (optional): a learning-rate schedule shared by the slots, a tensor indexed by the
update number t = 1, 2, ... (entry 0 unused): update t uses ``lr * lr_factor[t]``. It must be
positive for every update (the cosine schedule of the image domain is: its zero lies after the
last update). Without it the learning rate is constant and the coefficients are precomputed.

``kernel`` (:func:`resolve_kernel`): the same update run ``eager`` (seven elementwise passes over
the stacked tensors for AdamW, each a torch kernel; the only choice under a CUDA graph) or
``compiled`` (``torch.compile`` of the same function: one fused pass, CPU only; it needs a C++
compiler, costs ~2 s per process with a warm cache and ~12 s cold). On 2 Xeon cores (AVX-512, 1
thread), at 8 transformer cells (224k parameters each) an AdamW update takes 4.8-7.5 ms eager and
1.2-1.3 ms compiled (torch's fused kernel over the same tensors: 1.3 ms); at 80 cells 77-99 ms and
21 ms (fused: 21.5 ms). The two agree to rounding, not bitwise (the compiled kernel may round
differently), so results record the kernel used.

Inductor's on-disk cache does not tell CPU instruction sets apart: on torch 2.14.1 a kernel cached
in a process with the native ISA (AVX-512) and loaded in one with ``ATEN_CPU_CAPABILITY=avx2``
produced wrong updates (|Δθ| up to 2.2 after 200 steps), and one loaded with ``=default`` failed to
build. :func:`compiled` therefore keeps one cache per ISA: ``$TORCHINDUCTOR_CACHE_DIR`` (or
inductor's default directory) ``/nht-isa-<AVX512|AVX2|DEFAULT...>`` (tests/test_cpu_step.py).
"""

from __future__ import annotations

import functools
import getpass
import os
import tempfile
import warnings

import torch

NAMES = ("adamw", "sgd")
KERNELS = ("auto", "eager", "compiled")
# "auto" compiles on the CPU when a job makes at least this many parameter updates (slots x
# parameters per slot x max_steps): compiling costs ~2-12 s, and saves ~3.5 ns per update (above)
COMPILE_MIN_UPDATES = 4e9


class StackedOptimizer:
    """The optimizer state of ``slots`` stacked cells: moments ``m``, ``v`` (SGD: momentum ``m``;
    ``v`` unused), per-slot update counts ``t`` (steps) and update mask ``alive``.

    ``spec``: the experiment's optimizer block ({name: adamw, betas, eps} or {name: sgd,
    momentum}); ``max_steps``: the most updates a slot will make (sizes the per-step tables);
    ``kernel``: ``eager`` or ``compiled`` (resolved: :func:`resolve_kernel`)."""

    def __init__(self, spec: dict, max_steps: int, device: torch.device, dtype: torch.dtype = torch.float32,
                 lr_factor: torch.Tensor | None = None, kernel: str = "eager"):
        if spec["name"] not in NAMES:
            raise ValueError(f"unknown optimizer '{spec['name']}', expected adamw or sgd")
        if kernel not in KERNELS[1:]:
            raise ValueError(f"kernel must be resolved (resolve_kernel) to eager or compiled, got {kernel!r}")
        if kernel == "compiled" and device.type != "cpu":
            raise ValueError("the compiled optimizer kernel is CPU-only (on CUDA the step is one CUDA graph)")
        self.spec, self.name, self.device, self.dtype, self.kernel = spec, spec["name"], device, dtype, kernel
        update = adamw_update if self.name == "adamw" else sgd_update
        self._update = compiled(update) if kernel == "compiled" else update
        f64 = dict(dtype=torch.float64, device=device)
        self._one = torch.ones((), dtype=torch.long, device=device)
        if lr_factor is not None:
            lr_factor = torch.as_tensor(lr_factor, **f64)
            if lr_factor.shape != (max_steps + 2,) or not bool((lr_factor[1:max_steps + 1] > 0).all()):
                raise ValueError(f"lr_factor must have shape ({max_steps + 2},) and be > 0 for updates 1..{max_steps}")
        self.lr_factor = lr_factor
        if self.name == "adamw":
            b1, b2 = (float(b) for b in spec["betas"])
            t = torch.arange(max_steps + 2, dtype=torch.float64).clamp(min=1)
            # row t: (1, (1 - b1^t) / sqrt(1 - b2^t), 1 - b1^t), the bias corrections of update t
            self._bias = torch.stack([torch.ones_like(t), (1.0 - b1 ** t) / (1.0 - b2 ** t).sqrt(),
                                      1.0 - b1 ** t], 1).to(device)
            self._b2 = torch.tensor(b2, dtype=dtype, device=device)
            self._one_minus_b = (1.0 - b1, 1.0 - b2)            # the moments' lerp weights
        else:
            self._mu = torch.tensor(float(spec.get("momentum", 0.0)), dtype=dtype, device=device)

    # ------------------------------------------------------------------ state
    def install(self, m: torch.Tensor, v: torch.Tensor, t: torch.Tensor, alive: torch.Tensor) -> None:
        """Install the state: ``m``, ``v`` shaped like ``flat``, ``t`` (slots,) long, ``alive``
        (slots,) bool. Updated in place from here on."""
        self.m, self.v, self.t = m, v, t
        self._alive_col = alive.reshape(-1, 1).clone()            # (slots, 1) bool
        self.alive = self._alive_col[:, 0]                          # (slots,) view of it
        C = m.shape[0]
        self._coef64 = torch.empty(C, 3, dtype=torch.float64, device=self.device)
        self._coef = torch.empty(C, 3, dtype=self.dtype, device=self.device)
        self._c0, self._c1, self._c2 = (self._coef[:, i:i + 1] for i in range(3))   # (slots, 1) views
        # eager AdamW's denominator (the compiled kernel keeps it in registers)
        self._den = torch.empty_like(m) if self.name == "adamw" and self.kernel == "eager" else None

    def fresh(self, like: torch.Tensor) -> None:
        """Install the state of slots that have not updated yet (``like``: the stacked parameters)."""
        C = like.shape[0]
        self.install(torch.zeros_like(like), torch.zeros_like(like),
                     torch.zeros(C, dtype=torch.long, device=self.device),
                     torch.ones(C, dtype=torch.bool, device=self.device))

    def state(self) -> tuple[torch.Tensor, ...]:
        """(m, v, t, alive): what :meth:`install` takes back (select rows with ``index_select``)."""
        return self.m, self.v, self.t, self.alive

    def set_hparams(self, lr: list[float], weight_decay: list[float]) -> None:
        """Per-slot learning rate and weight decay (Λ per update = lr * weight_decay), in slot order.

        ``_live``/``_dead`` (slots, 3), float64: the coefficients of an updated and of a masked slot
        before the step-dependent factor (AdamW: 1 - lr wd, -1/lr, -eps/lr; SGD: wd, -lr, 0)."""
        f64 = dict(dtype=torch.float64, device=self.device)
        self.lr = torch.tensor([float(x) for x in lr], **f64)
        self.wd = torch.tensor([float(x) for x in weight_decay], **f64)
        if self.lr_factor is None:
            self._live = self._coefficients(self.lr)
        if self.name == "adamw":
            self._dead = torch.stack([torch.ones_like(self.lr), torch.zeros_like(self.lr),
                                      torch.full_like(self.lr, float("inf"))], 1)
        else:
            self._dead = torch.zeros(len(self.lr), 3, **f64)

    def _coefficients(self, lr: torch.Tensor) -> torch.Tensor:
        if self.name == "adamw":
            neg_inv_lr = -1.0 / lr
            return torch.stack([1.0 - lr * self.wd, neg_inv_lr, float(self.spec["eps"]) * neg_inv_lr], 1)
        return torch.stack([self.wd, -lr, torch.zeros_like(lr)], 1)

    # ------------------------------------------------------------------ one update
    @torch.no_grad()
    def step(self, flat: torch.Tensor, grad: torch.Tensor, loss: torch.Tensor) -> None:
        """One update of every slot, in place on ``flat`` (``grad`` is read only). ``loss`` (slots,): a slot whose loss is NaN/Inf is masked from this update on."""
        d = loss - loss                            # 0 where finite, NaN where NaN/Inf
        self.alive.logical_and_(d == d)
        self.t.add_(self._one)
        live = self._live if self.lr_factor is None else self._coefficients(self.lr * self.lr_factor[self.t])
        if self.name == "adamw":
            live = live * self._bias[self.t]
        torch.where(self._alive_col, live, self._dead, out=self._coef64)
        self._coef.copy_(self._coef64)             # columns: see set_hparams
        if self.name == "adamw":
            self._adamw(flat, grad)
        else:
            self._sgd(flat, grad)

    def _adamw(self, p: torch.Tensor, g: torch.Tensor) -> None:
        self._update(p, g, self.m, self.v, self._c0, self._c1, self._c2, self._b2, *self._one_minus_b, self._den)

    def _sgd(self, p: torch.Tensor, g: torch.Tensor) -> None:
        self._update(p, g, self.m, self._c0, self._c1, self._mu, bool(self.spec.get("momentum", 0.0)))


# ---------------------------------------------------------------------- the update, eager or compiled

def adamw_update(p, g, m, v, c0, c1, c2, b2, one_minus_b1: float, one_minus_b2: float, den=None) -> None:
    """``p *= 1 - lr wd``; ``m = lerp(m, g, 1 - b1)``; ``v = b2 v + (1 - b2) g^2``;
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``, written as
    ``p += m / (k1 sqrt(v) + k2)`` with k1 = -(1-b1^t)/(lr sqrt(1-b2^t)), k2 = -eps (1-b1^t)/lr
    (``c0``, ``c1``, ``c2``: (slots, 1) columns 1 - lr wd, k1, k2; a masked slot: 1, 0, inf, so
    m / inf = 0). Eager: seven passes over memory (``den``, preallocated, takes sqrt(v): no new
    buffer, hence no page faults, per step); compiled: one."""
    p.mul_(c0)
    m.lerp_(g, one_minus_b1)
    v.mul_(b2).addcmul_(g, g, value=one_minus_b2)
    if den is None:
        den = torch.addcmul(c2, torch.sqrt(v), c1)
    else:
        torch.addcmul(c2, torch.sqrt(v, out=den), c1, out=den)
    p.addcdiv_(m, den)


def sgd_update(p, g, m, c0, c1, mu, momentum: bool) -> None:
    """SGD on L + wd/2 ||theta||^2: ``d = g + wd p`` (momentum: ``m = mu m + d``, d = m);
    ``p -= lr d`` (``c0``, ``c1``: (slots, 1) columns wd, -lr; a masked slot: wd = lr = 0)."""
    d = torch.addcmul(g, p, c0)
    if momentum:
        m.mul_(mu).add_(d)
        d = m
    p.addcmul_(d, c1)


def resolve_kernel(choice: str, device: torch.device, updates: float) -> str:
    """``auto``: ``compiled`` on the CPU for a job of at least ``COMPILE_MIN_UPDATES`` parameter
    updates (``updates`` = slots x parameters per slot x max_steps) when :func:`compiler_works`,
    else ``eager``; ``eager``/``compiled``: as given (``compiled`` fails where it cannot run)."""
    if choice not in KERNELS:
        raise ValueError(f"optimizer kernel must be one of {KERNELS}, got {choice!r}")
    if choice != "auto":
        return choice
    if device.type != "cpu" or updates < COMPILE_MIN_UPDATES:
        return "eager"
    problem = compiler_works()
    if problem:
        warnings.warn(f"optimizer kernel: eager, since compiling failed ({problem})", stacklevel=2)
        return "eager"
    return "compiled"


@functools.lru_cache(maxsize=None)
def compiled(update):
    """``torch.compile`` of an update function (one fused CPU kernel for any shape), with
    inductor's cache kept per CPU instruction set (module docstring)."""
    base = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not base:                                   # inductor's default directory
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = f"uid_{os.getuid()}"
        base = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")
    if os.path.basename(base).startswith("nht-isa-"):
        base = os.path.dirname(base)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(base, f"nht-isa-{torch.backends.cpu.get_cpu_capability()}")
    return torch.compile(update, dynamic=True, fullgraph=True)


@functools.lru_cache(maxsize=None)
def compiler_works() -> str:
    """'' when a compiled update runs in this process (tried once on tiny tensors), else why not."""
    p, g, m, v = (torch.ones(4, 7) for _ in range(4))   # sizes unlike the table's stride (3): no duck sizing
    coef = torch.ones(4, 3)                        # columns of one table, as in a step
    try:
        with torch.no_grad():                      # as in a step: no recompilation at the first one
            compiled(adamw_update)(p, g, m, v, coef[:, :1], coef[:, 1:2], coef[:, 2:], torch.tensor(0.5), 0.5, 0.5)
    except Exception as e:  # noqa: BLE001 - any failure means: run eager
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
    return ""
