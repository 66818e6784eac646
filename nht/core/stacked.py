"""The parameters of a job's cells in one tensor: ``flat`` of shape (cells, parameters per cell),
each model tensor a view of it with the cell on dim 0. Both domains' trainers hold their cells
this way; :class:`nht.core.stacked_optim.StackedOptimizer` updates ``flat`` in place."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import stack_module_state


class StackedLayout:
    """Where each model tensor of the cells sits in ``flat``: ``names``, per-cell ``shapes`` and
    ``sizes`` (elements), in the order of ``stack_module_state`` (the modules' parameter order)."""

    def __init__(self, models: list[nn.Module]):
        params, _ = stack_module_state(models)
        self.names = list(params)
        self.shapes = [tuple(v.shape[1:]) for v in params.values()]
        self.sizes = [math.prod(sh) for sh in self.shapes]
        self._initial = [v.detach() for v in params.values()]

    def initial_flat(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The modules' parameters as one (cells, parameters) tensor."""
        C = self._initial[0].shape[0]
        return torch.cat([v.reshape(C, -1) for v in self._initial], dim=1).to(device, dtype)

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: (cells, *shape)}``, views of ``flat``."""
        C = flat.shape[0]
        return {k: part.view(C, *sh) for k, part, sh in zip(self.names, flat.split(self.sizes, dim=1), self.shapes)}

    def leaves(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`views` of (detached) ``flat`` made leaves of autograd: the forward reads them and
        :func:`gradients_into` collects their gradients."""
        return {k: v.requires_grad_(True) for k, v in self.views(flat.detach()).items()}


def gradients_into(grads, out: torch.Tensor) -> None:
    """The gradients of the :meth:`StackedLayout.leaves`, in their order, into ``out`` (cells,
    parameters): the one gradient the optimizer reads."""
    C = out.shape[0]
    torch.cat([g.reshape(C, -1) for g in grads], dim=1, out=out)
