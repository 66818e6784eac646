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
    """Two embeddings -> concat -> one hidden ReLU layer -> readout (``out``).

    The hidden pre-activation ``W [E_a[a]; E_b[b]] + c`` is computed as
    ``(E_a W_a^T)[a] + (E_b W_b^T)[b] + c``: the same function and gradients, but the matrix
    products run over the p vocabulary rows instead of every example (about 3x fewer FLOPs per
    full-batch step at p = 31).
    """

    def __init__(self, p: int, embed_dim: int = 32, hidden: int = 128):
        super().__init__()
        self.embed_a = nn.Embedding(p, embed_dim)
        self.embed_b = nn.Embedding(p, embed_dim)
        self.hidden = nn.Linear(2 * embed_dim, hidden)
        self.out = nn.Linear(hidden, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_a, w_b = self.hidden.weight.split(self.embed_a.embedding_dim, dim=1)
        table_a = self.embed_a.weight @ w_a.T          # (p, hidden): every a's contribution
        table_b = self.embed_b.weight @ w_b.T
        pre = table_a[x[..., 0]] + table_b[x[..., 1]] + self.hidden.bias
        return self.out(F.relu(pre))


class Attention(nn.Module):
    """Parameters of multi-head self-attention (fused q/k/v projection and output projection).

    The computation lives in :meth:`OneLayerTransformer.forward`, which needs only the last
    position's output.
    """

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)


class OneLayerTransformer(nn.Module):
    """The companion code's 1-layer transformer: tokens [a, b], pre-LN block (attention + GELU
    FFN), final LayerNorm, readout (``head``) at the last position.

    Two exact shortcuts make it cheap (same function and gradients as the textbook version):
    nothing reads the other position after attention, so only the last position's residual
    stream is computed; and everything before attention depends only on (position, token), so
    LayerNorm and the q/k/v projections are computed once per vocabulary entry (2 x p rows)
    and gathered, instead of once per example.
    """

    def __init__(self, p: int, d_model: int = 128, n_heads: int = 4, d_ff: int = 512):
        super().__init__()
        self.tok = nn.Embedding(p, d_model)
        self.pos = nn.Parameter(torch.randn(2, d_model) * 0.02)
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff_in = nn.Linear(d_model, d_ff)
        self.ff_out = nn.Linear(d_ff, d_model)
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H = x.shape[0], self.tok.embedding_dim, self.attn.n_heads
        D = C // H
        emb = self.tok.weight.unsqueeze(0) + self.pos.unsqueeze(1)     # (2, p, C): position x token
        qkv = self.attn.qkv(self.ln1(emb))                             # (2, p, 3C)
        a, b = x[:, 0], x[:, 1]
        q = qkv[1, :, :C][b].view(B, H, 1, D)                          # query: last position only
        k = torch.stack([qkv[0, :, C:2 * C][a], qkv[1, :, C:2 * C][b]], dim=1)   # (B, 2, C)
        v = torch.stack([qkv[0, :, 2 * C:][a], qkv[1, :, 2 * C:][b]], dim=1)
        k, v = (t.view(B, 2, H, D).transpose(1, 2) for t in (k, v))    # (B, H, 2, D)
        att = ((q @ k.transpose(-2, -1)) / math.sqrt(D)).softmax(dim=-1)
        h = emb[1][b] + self.attn.proj((att @ v).reshape(B, C))        # residual, last position
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
