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
"""

from __future__ import annotations

import torch

NAMES = ("adamw", "sgd")


class StackedOptimizer:
    """The optimizer state of ``slots`` stacked cells: moments ``m``, ``v`` (SGD: momentum ``m``;
    ``v`` unused), per-slot update counts ``t`` (steps) and update mask ``alive``.

    ``spec``: the experiment's optimizer block ({name: adamw, betas, eps} or {name: sgd,
    momentum}); ``max_steps``: the most updates a slot will make (sizes the per-step tables)."""

    def __init__(self, spec: dict, max_steps: int, device: torch.device, dtype: torch.dtype = torch.float32,
                 lr_factor: torch.Tensor | None = None):
        if spec["name"] not in NAMES:
            raise ValueError(f"unknown optimizer '{spec['name']}', expected adamw or sgd")
        self.spec, self.name, self.device, self.dtype = spec, spec["name"], device, dtype
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
        self._den = torch.empty_like(m) if self.name == "adamw" else None         # AdamW's denominator

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
        """``p *= 1 - lr wd``; ``m = lerp(m, g, 1 - b1)``; ``v = b2 v + (1 - b2) g^2``;
        ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``, written as
        ``p += m / (k1 sqrt(v) + k2)`` with k1 = -(1-b1^t)/(lr sqrt(1-b2^t)), k2 = -eps (1-b1^t)/lr:
        four passes over memory fewer, the same update up to rounding (a masked slot: k1 = 0,
        k2 = inf, so m / inf = 0)."""
        b1, b2 = (float(b) for b in self.spec["betas"])
        p.mul_(self._c0)
        self.m.lerp_(g, 1.0 - b1)
        self.v.mul_(self._b2).addcmul_(g, g, value=1.0 - b2)
        den = torch.sqrt(self.v, out=self._den)    # preallocated: no new buffer (page faults) per step
        p.addcdiv_(self.m, torch.addcmul(self._c2, den, self._c1, out=den))

    def _sgd(self, p: torch.Tensor, g: torch.Tensor) -> None:
        """SGD on L + wd/2 ||theta||^2: ``d = g + wd p`` (momentum: ``m = mu m + d``, d = m);
        ``p -= lr d`` (a masked slot: wd = lr = 0)."""
        d = torch.addcmul(g, p, self._c0)
        if self.spec.get("momentum", 0.0):
            self.m.mul_(self._mu).add_(d)
            d = self.m
        p.addcmul_(d, self._c1)
