"""The one squared-norm computation of the history schema (:mod:`nht.core.history`).

V is always the SQUARED L2 norm, ``V = ||theta||^2`` (sum of squared entries), summed in float64:

* ``V``            all parameters;
* ``V:<tensor>``   one parameter tensor, named as ``named_parameters()`` names it;
* ``V_no_norm``    (plain modules) all parameters except those of normalisation layers
  (BatchNorm, InstanceNorm, GroupNorm, LayerNorm).

:func:`squared_norms` takes one ``nn.Module``; :func:`stacked_squared_norms` takes the stacked
parameters of many cells (a leading *cell* dimension, as the modular trainer keeps them) and gives
one value per cell. :func:`scale_init` scales a model's initial parameters (``init_scale``).
"""

from __future__ import annotations

import torch
from torch import nn

from nht.core.history import tensor_column

NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
               nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm)


def norm_layer_tensors(model: nn.Module) -> list[str]:
    """The names (as ``named_parameters()`` gives them) of the parameters of normalisation layers
    (:data:`NORM_LAYERS`, by type): the one place nht tells them apart. Trainers record it in
    their meta (``norm_layer_tensors``), and the cell records mark those tensors (``norm_layer``)."""
    in_norm_layer = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters()}
    return [name for name, p in model.named_parameters() if id(p) in in_norm_layer]


@torch.no_grad()
def squared_norms(model: nn.Module) -> dict[str, float]:
    """``{"V", "V_no_norm", "V:<tensor>" ...}`` of one model (squared norms, float64 sums)."""
    in_norm_layer = set(norm_layer_tensors(model))
    total = no_norm = 0.0
    per_tensor = {}
    for name, p in model.named_parameters():
        v = float(p.detach().double().pow(2).sum().item())
        per_tensor[tensor_column(name)] = v
        total += v
        if name not in in_norm_layer:
            no_norm += v
    return {"V": total, "V_no_norm": no_norm, **per_tensor}


@torch.no_grad()
def stacked_squared_norms(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{"V": (C,), "V:<tensor>": (C,)}`` of stacked per-cell tensors ``{name: (C, ...)}``
    (squared norms, float64)."""
    per_tensor = {tensor_column(k): v.detach().double().pow(2).flatten(1).sum(dim=1) for k, v in params.items()}
    return {"V": sum(per_tensor.values()), **per_tensor}


@torch.no_grad()
def scale_init(model: nn.Module, factor: float) -> nn.Module:
    """Multiply every parameter by ``factor`` in place, so V_init = factor**2 * V_init(factor 1)
    exactly (the ``init_scale`` of every domain); returns the model."""
    if factor != 1.0:
        for p in model.parameters():
            p.mul_(factor)
    return model
