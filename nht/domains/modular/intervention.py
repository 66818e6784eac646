"""A function-preserving norm intervention for modular cells (issue 17, item 2).

The network's parameters are rescaled along an exact symmetry of the model: every logit is the
same function of the input before and after (up to float rounding), but the squared norm
V = ||theta||^2 (the history's ``V``, :mod:`nht.core.norms`) changes by a known amount. The delay
law (V decays ~ exp(-2 eta lambda t)) then predicts, before training goes on, a shift of the
delay of about ``ln(V_after / V_before) / (2 eta lambda)`` steps; a 1/(eta lambda) account
predicts none.

Every intervention is a per-tensor-entry multiplication ``theta <- s * theta`` (``s`` > 0),
built from *groups*. A group with factor c multiplies its "in" tensors by c and its "out" tensors
by 1/c; with several groups the multipliers of a tensor multiply. The groups (only exact ones):

MLP (:class:`~nht.domains.modular.models.GrokkingMLP`: embeddings -> hidden Linear -> ReLU -> out)

* ``embed``  in: ``embed_a.weight``, ``embed_b.weight``; out: ``hidden.weight``. The embeddings
  enter the model only through the linear map ``hidden.weight`` (no bias or nonlinearity in
  between), so ``(c E) (W / c)^T = E W^T``.
* ``relu``   in: ``hidden.weight``, ``hidden.bias``; out: ``out.weight``. ReLU is positively
  homogeneous, ``relu(c z) = c relu(z)`` for c > 0 (``out.bias`` unchanged).

  Both together (the default): embeddings x c, ``hidden.weight`` x 1, ``hidden.bias`` x c,
  ``out.weight`` x 1/c: the hidden pre-activation is multiplied by c.

Transformer (:class:`~nht.domains.modular.models.OneLayerTransformer`, the companion's model; the
fused ``attn.qkv`` holds query rows [0, d), key rows [d, 2d), value rows [2d, 3d) of its weight
(3d, d) and bias (3d,))

* ``qk``     in: query rows of ``attn.qkv.weight`` and ``attn.qkv.bias``; out: key rows of both.
  Every score ``q . k`` is unchanged, per head.
* ``vo``     in: value rows of ``attn.qkv.weight`` and ``attn.qkv.bias``; out:
  ``attn.proj.weight``. The attention output is a convex combination of values (weights sum to
  1), so it scales by c and the projection undoes it (``attn.proj.bias`` unchanged).
* ``head``   in: ``ln_f.weight``, ``ln_f.bias``; out: ``head.weight``. The readout is linear in
  the final LayerNorm's affine output.
* pre-LN only (``norm_first: true``): ``ln1_qkv`` (in: ``ln1.weight``, ``ln1.bias``; out: all of
  ``attn.qkv.weight``: ln1's output feeds only the q/k/v projection there) and ``ln2_ff`` (in:
  ``ln2.weight``, ``ln2.bias``; out: ``ff_in.weight``). Not in the default set.

  Default: ``qk``, ``vo``, ``head`` (exact in both layouts).

Not used, because they are not exact: the feed-forward block (``ff_in`` x c, ``ff_out`` x 1/c)
needs a positively homogeneous activation and the model's is GELU (``gelu(c z) != c gelu(z)``);
scaling the input of a LayerNorm is exact only up to its ``eps`` (1e-5); the token and position
embeddings also feed the residual stream directly. In post-LN, ln1's output feeds the residual
too, so ``ln1_qkv``/``ln2_ff`` are not exact there.

V after the intervention is ``sum_k s_k^2 theta_k^2`` exactly (float64 sums); note that c and 1/c
both raise V when a group is balanced (in and out squared norms equal, as weight decay tends to
leave them): the norm on a symmetry orbit is smallest at the balanced point.

Optimizer state (choice): the symmetry maps gradients contravariantly. From ``L(s*theta) =
L(theta)`` for all theta follows ``grad L(s*theta) = grad L(theta) / s``. So the moments are
transformed as the gradient history would be in the new coordinates: AdamW ``exp_avg`` x 1/s and
``exp_avg_sq`` x 1/s^2 (SGD momentum x 1/s). This keeps Adam's normalised update ``m / sqrt(v)``
per entry (up to eps) and keeps the new gradients commensurate with the history they are averaged
into. Factor 1 is the identity (every multiplier 1.0, the state bit for bit unchanged; tested).

Configuration (``intervention`` key of a modular experiment; null = none)::

    intervention: {at: fit | <step>, factor: c, groups: [..] (default: the model's default set),
                   fit_threshold: 0.99}

``at: fit`` applies it once per cell at the first evaluation whose train accuracy is at least
``fit_threshold`` (a training setting, separate from the event rule's ``train_threshold``);
``at: <step>`` at the first evaluation at or after that step (evaluations are every
``eval_every`` steps). The evaluation row of that step shows the state *before*; training
continues from the rescaled state. :class:`Hook` records per cell ``{step, V_before, V_after,
predicted_shift_steps, ...}`` (V squared norm, steps) and prints it to the job's log when applied.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch

from nht.config import INTERVENTION_GROUPS, intervention_layout

MLP_GROUPS = INTERVENTION_GROUPS["mlp"]
TRANSFORMER_GROUPS = INTERVENTION_GROUPS["transformer"]
PRE_LN_GROUPS = tuple(g for g in INTERVENTION_GROUPS["transformer_pre_ln"] if g not in TRANSFORMER_GROUPS)
DEFAULT_FIT_THRESHOLD = 0.99


def available_groups(model_cfg: dict) -> tuple[str, ...]:
    """The exact symmetry groups of the model named in ``model_cfg`` (module docstring; the names
    per model layout are :data:`nht.config.INTERVENTION_GROUPS`, so the config is checked without torch)."""
    if model_cfg["name"] not in ("mlp", "transformer"):
        raise ValueError(f"unknown model '{model_cfg['name']}'")
    return INTERVENTION_GROUPS[intervention_layout(model_cfg)]


def default_groups(model_cfg: dict) -> tuple[str, ...]:
    """The groups used when ``intervention.groups`` is not given."""
    return MLP_GROUPS if model_cfg["name"] == "mlp" else TRANSFORMER_GROUPS


def check_groups(model_cfg: dict, groups) -> tuple[str, ...]:
    """``groups`` (None = the default set) as a tuple, or ValueError naming a group the model lacks."""
    if groups is None:
        return default_groups(model_cfg)
    have = available_groups(model_cfg)
    for g in groups:
        if g not in have:
            layout = " (exact only with norm_first: true)" if g in PRE_LN_GROUPS else ""
            raise ValueError(f"group '{g}' is not an exact symmetry of model '{model_cfg['name']}'{layout}; "
                             f"available: {', '.join(have)}")
    return tuple(groups)


#: group -> (tensor, rows, power): the tensor (``rows`` 0/1/2: only the query/key/value rows of the
#: fused ``attn.qkv``) is multiplied by c**power ("in" +1, "out" -1); see the module docstring.
SYMMETRIES = {
    "embed": [("embed_a.weight", None, 1), ("embed_b.weight", None, 1), ("hidden.weight", None, -1)],
    "relu": [("hidden.weight", None, 1), ("hidden.bias", None, 1), ("out.weight", None, -1)],
    "qk": [("attn.qkv.weight", 0, 1), ("attn.qkv.bias", 0, 1), ("attn.qkv.weight", 1, -1), ("attn.qkv.bias", 1, -1)],
    "vo": [("attn.qkv.weight", 2, 1), ("attn.qkv.bias", 2, 1), ("attn.proj.weight", None, -1)],
    "head": [("ln_f.weight", None, 1), ("ln_f.bias", None, 1), ("head.weight", None, -1)],
    "ln1_qkv": [("ln1.weight", None, 1), ("ln1.bias", None, 1), ("attn.qkv.weight", None, -1)],
    "ln2_ff": [("ln2.weight", None, 1), ("ln2.bias", None, 1), ("ff_in.weight", None, -1)],
}


def multipliers(model_cfg: dict, shapes: dict[str, tuple], factor: float, groups=None) -> dict[str, torch.Tensor]:
    """Per-tensor multipliers ``{name: float64 tensor of the tensor's per-cell shape}`` of the
    intervention with ``factor`` c on ``groups`` (None = default). ``shapes`` are per cell (no cell
    dimension), by the model's parameter names. Tensors no group touches get all ones."""
    c = float(factor)
    if not (c > 0 and math.isfinite(c)):
        raise ValueError(f"intervention factor must be a finite number > 0, got {factor!r}")
    groups = check_groups(model_cfg, groups)
    s = {k: torch.ones(tuple(sh), dtype=torch.float64) for k, sh in shapes.items()}

    def need(*names):
        missing = [n for n in names if n not in s]
        if missing:
            raise ValueError(f"model parameters {missing} not found (have {sorted(s)})")

    for g in groups:
        if g not in SYMMETRIES:  # check_groups refused it already
            raise ValueError(f"unknown group '{g}'")
        names = [name for name, _, _ in SYMMETRIES[g]]
        need(*dict.fromkeys(names))
        for name, rows, power in SYMMETRIES[g]:
            tensor = s[name]
            if rows is not None:                      # a third of the fused q/k/v rows
                d = tensor.shape[0] // 3
                tensor = tensor[rows * d:(rows + 1) * d]
            tensor *= c ** power
    return s


def flat_multiplier(model_cfg: dict, names: list[str], shapes: list[tuple], factor: float, groups=None) -> torch.Tensor:
    """The multipliers as one float64 vector over a cell's parameters laid out flat, tensor after
    tensor in ``names`` order (the modular trainer's ``flat`` row layout)."""
    per = multipliers(model_cfg, dict(zip(names, shapes)), factor, groups)
    return torch.cat([per[k].reshape(-1) for k in names])


@torch.no_grad()
def apply_to_params(params: dict[str, torch.Tensor], model_cfg: dict, factor: float, groups=None) -> dict[str, torch.Tensor]:
    """A new dict of stacked tensors ``{name: (C, ...)}`` with the intervention applied to every
    cell (for tests and offline use; the trainer uses :class:`Hook`)."""
    per = multipliers(model_cfg, {k: tuple(v.shape[1:]) for k, v in params.items()}, factor, groups)
    return {k: v * per[k].to(v.device, v.dtype).unsqueeze(0) for k, v in params.items()}


def squared_norm_after(params: dict[str, torch.Tensor], model_cfg: dict, factor: float, groups=None) -> torch.Tensor:
    """Per cell, V after the intervention computed from the parameters before it:
    ``sum_k s_k^2 theta_k^2`` in float64, shape (C,) (V squared norm)."""
    per = multipliers(model_cfg, {k: tuple(v.shape[1:]) for k, v in params.items()}, factor, groups)
    return sum((v.detach().double() * per[k].to(v.device)).pow(2).flatten(1).sum(dim=1) for k, v in params.items())


def predicted_shift_steps(v_before: float, v_after: float, lr: float, weight_decay: float) -> float | None:
    """The delay law's shift of the delay, ``ln(V_after / V_before) / (2 eta lambda)`` steps; None
    when eta * lambda is 0 (no decay: the law predicts no transition) or a V is not positive."""
    if lr * weight_decay <= 0 or not (v_before > 0 and v_after > 0):
        return None
    return math.log(v_after / v_before) / (2.0 * lr * weight_decay)


@dataclass(frozen=True)
class Spec:
    """A validated ``intervention`` setting: ``at`` is "fit" or a step (int >= 0)."""

    at: str | int
    factor: float
    groups: tuple[str, ...]
    fit_threshold: float = DEFAULT_FIT_THRESHOLD

    @classmethod
    def from_settings(cls, settings: dict) -> "Spec | None":
        """The cell settings' ``intervention`` (None when absent or null); ValueError on a bad one."""
        iv = settings.get("intervention")
        if iv is None:
            return None
        if not isinstance(iv, dict) or "at" not in iv or "factor" not in iv:
            raise ValueError(f"intervention must be null or {{at: fit | <step>, factor: c}}, got {iv!r}")
        at = iv["at"]
        if not (at == "fit" or (isinstance(at, int) and not isinstance(at, bool) and at >= 0)):
            raise ValueError(f"intervention.at must be 'fit' or a step >= 0, got {at!r}")
        groups = check_groups(settings["model"], iv.get("groups"))
        thr = float(iv.get("fit_threshold", DEFAULT_FIT_THRESHOLD))
        factor = float(iv["factor"])
        if not (factor > 0 and math.isfinite(factor)):
            raise ValueError(f"intervention.factor must be a finite number > 0, got {iv['factor']!r}")
        return cls(at, factor, groups, thr)

    def due(self, step: int, train_acc: float) -> bool:
        """Whether a cell not yet intervened on gets it at this evaluation."""
        if self.at == "fit":
            return train_acc >= self.fit_threshold
        return step >= self.at


class Hook:
    """The intervention in a modular training job: called after every evaluation, it rescales the
    trainer's ``flat`` rows (and the optimizer moments ``m``, ``v``) of each cell that is due, once
    per cell, and keeps the per-cell records (:meth:`record`). Reads only the trainer's public
    attributes: ``flat``, ``m``, ``v`` (slots, parameters), ``slots``, ``active``, ``step``,
    ``opt``, ``hp``, ``names``, ``shapes``, ``s``."""

    def __init__(self, spec: Spec | None, settings: dict, names: list[str], shapes: list[tuple]):
        self.spec = spec
        self.records: dict[str, dict] = {}
        self._mult = None if spec is None else flat_multiplier(settings["model"], names, shapes, spec.factor,
                                                               spec.groups)

    @classmethod
    def for_trainer(cls, trainer) -> "Hook":
        return cls(Spec.from_settings(trainer.s), trainer.s, trainer.layout.names, trainer.layout.shapes)

    @torch.no_grad()
    def after_evaluate(self, trainer, rows: list[dict], log_name: str = "train") -> None:
        """Apply the intervention to every active cell due at this evaluation (``rows`` in
        ``trainer.active`` order, the evaluation's history rows: state before the intervention)."""
        if self.spec is None:
            return
        for cell, row in zip(trainer.active, rows):
            if cell in self.records or not self.spec.due(trainer.step, row["train_acc"]):
                continue
            pos = trainer.slots.index(cell)
            p, m, v = trainer.flat[pos], trainer.m[pos], trainer.v[pos]
            mult = self._mult.to(p.device)
            v_before = float(p.double().pow(2).sum())
            v_expected = float((p.double() * mult).pow(2).sum())
            p.mul_(mult.to(p.dtype))
            m.div_(mult.to(m.dtype))
            if trainer.opt["name"] == "adamw":
                v.div_(mult.pow(2).to(v.dtype))
            v_after = float(p.double().pow(2).sum())
            hp = trainer.hp[cell]
            shift = predicted_shift_steps(v_before, v_after, hp["lr"], hp["weight_decay"])
            self.records[cell] = {
                "step": trainer.step, "at": self.spec.at, "factor": self.spec.factor,
                "groups": list(self.spec.groups), "train_acc": row["train_acc"], "test_acc": row["test_acc"],
                "V_before": v_before, "V_after": v_after, "V_after_expected": v_expected,
                "predicted_shift_steps": shift,
            }
            shift_txt = "none (eta*lambda = 0)" if shift is None else f"{shift:+.1f} steps"
            print(f"[{log_name}] intervention on {cell} at step {trainer.step}: factor {self.spec.factor:g} "
                  f"on {','.join(self.spec.groups)}, V {v_before:.6g} -> {v_after:.6g}; predicted delay shift "
                  f"{shift_txt}", file=sys.stderr, flush=True)

    def record(self, cell: str) -> dict:
        """``{"intervention": ...}`` for the cell's meta: {} when no intervention is configured;
        the applied record, or ``{"step": None, ...}`` when it was never due (e.g. never fitted)."""
        if self.spec is None:
            return {}
        rec = self.records.get(cell) or {"step": None, "at": self.spec.at, "factor": self.spec.factor,
                                         "groups": list(self.spec.groups), "V_before": None, "V_after": None,
                                         "predicted_shift_steps": None}
        return {"intervention": rec}

    def state(self) -> dict:
        """Plain values for the trainer's checkpoint (a resumed run applies nothing twice)."""
        return {k: dict(v) for k, v in self.records.items()}

    def load(self, state: dict | None) -> None:
        self.records = {k: dict(v) for k, v in (state or {}).items()}
