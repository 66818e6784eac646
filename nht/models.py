"""Models for modular arithmetic, written as plain ``nn.Module``s.

Both read a pair of tokens ``x`` of shape (batch, 2) with values in [0, p) and return logits of
shape (batch, p). Batched (many-cell) training stacks their parameters and calls them through
``torch.func.functional_call`` under ``vmap`` (see :mod:`nht.train`), so the code below must stay
free of in-place state and data-dependent control flow.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class GrokkingMLP(nn.Module):
    """Two embeddings -> concat -> one hidden ReLU layer -> readout (``out``)."""

    def __init__(self, p: int, embed_dim: int = 32, hidden: int = 128):
        super().__init__()
        self.embed_a = nn.Embedding(p, embed_dim)
        self.embed_b = nn.Embedding(p, embed_dim)
        self.hidden = nn.Linear(2 * embed_dim, hidden)
        self.out = nn.Linear(hidden, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.embed_a(x[..., 0]), self.embed_b(x[..., 1])], dim=-1)
        return self.out(F.relu(self.hidden(h)))


class LastPositionAttention(nn.Module):
    """Multi-head self-attention that returns only the last position's output.

    With a single layer read out at the last position, the outputs at earlier positions feed
    nothing, so they are not computed: keys and values come from every position, the query from
    the last one. Mathematically identical to full attention followed by ``[:, -1]``.
    """

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        H, D = self.n_heads, C // self.n_heads
        w_q, w_kv = self.qkv.weight.split([C, 2 * C], dim=0)
        b_q, b_kv = self.qkv.bias.split([C, 2 * C], dim=0)
        q = F.linear(x[:, -1], w_q, b_q).view(B, H, 1, D)
        k, v = F.linear(x, w_kv, b_kv).split(C, dim=-1)
        k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D)           # (B, H, 1, T)
        y = (att.softmax(dim=-1) @ v).reshape(B, C)              # last position only
        return self.proj(y)


class OneLayerTransformer(nn.Module):
    """The companion code's 1-layer transformer: tokens [a, b], pre-LN block (attention + GELU
    FFN), final LayerNorm, readout (``head``) at the last position.

    Only the last position's residual stream is computed after attention (nothing reads the
    others), which gives the same function and gradients as computing all positions.
    """

    def __init__(self, p: int, d_model: int = 128, n_heads: int = 4, d_ff: int = 512):
        super().__init__()
        self.tok = nn.Embedding(p, d_model)
        self.pos = nn.Parameter(torch.randn(2, d_model) * 0.02)
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = LastPositionAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff_in = nn.Linear(d_model, d_ff)
        self.ff_out = nn.Linear(d_ff, d_model)
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(x) + self.pos                     # (B, 2, d_model)
        h = h[:, -1] + self.attn(self.ln1(h))          # residual stream at the last position
        h = h + self.ff_out(F.gelu(self.ff_in(self.ln2(h))))
        return self.head(self.ln_f(h))


READOUT = {"mlp": "out", "transformer": "head"}


def build_model(model_cfg: dict, p: int) -> nn.Module:
    """Instantiate the model named by ``model_cfg['name']`` with the config's sizes."""
    name = model_cfg["name"]
    if name == "mlp":
        return GrokkingMLP(p, model_cfg.get("embed_dim", 32), model_cfg.get("hidden", 128))
    if name == "transformer":
        return OneLayerTransformer(p, model_cfg.get("d_model", 128), model_cfg.get("n_heads", 4),
                                   model_cfg.get("d_ff", 512))
    raise ValueError(f"unknown model '{name}'")


@torch.no_grad()
def scale_init(model: nn.Module, alpha: float) -> nn.Module:
    """Multiply every parameter by ``alpha`` (so V_init = alpha^2 * V_init(alpha=1) exactly)."""
    for param in model.parameters():
        param.mul_(alpha)
    return model


def squared_norm(model: nn.Module) -> float:
    """V = sum of squares of all parameters (the squared L2 norm, not the norm)."""
    return float(sum(p.detach().double().pow(2).sum() for p in model.parameters()))
