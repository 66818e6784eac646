"""Models for modular arithmetic, written as plain ``nn.Module``s.

Both read a pair of tokens ``x`` of shape (batch, 2) with values in [0, p) and return logits of
shape (batch, p). The ``nn.Module`` classes define each model (names, shapes, PyTorch's default
initialisation) and are the single-cell reference. Many-cell training stacks their parameters
along a leading *cell* dimension C and calls :func:`stacked_forward`, which computes the same
function for all C cells at once with batched matrix products (``baddbmm``) and row gathers;
tests check it against the modules, output and gradient, cell by cell.
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


# --------------------------------------------------------------------------- stacked (many-cell)

def _gather_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``out[c, i] = table[c, idx[c, i]]`` (or ``idx[i]`` when ``idx`` is shared by all cells).

    ``table`` is (C, R, D), ``idx`` (B,) or (C, B); returns (C, B, D). One ``index_select`` over
    the flattened table: its backward is an ``index_add`` (deterministic on the CPU).
    """
    C, R, D = table.shape
    offsets = torch.arange(C, device=idx.device).mul_(R).unsqueeze(1)
    flat_idx = (idx.unsqueeze(0) + offsets if idx.dim() == 1 else idx + offsets).reshape(-1)
    return table.reshape(C * R, D).index_select(0, flat_idx).view(C, -1, D)


def _linear(x: torch.Tensor, params: dict, name: str) -> torch.Tensor:
    """Per-cell ``nn.Linear``: x (C, B, in) -> (C, B, out), bias fused into ``baddbmm``."""
    return torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), x, params[f"{name}.weight"].transpose(1, 2))


def _layer_norm(x: torch.Tensor, params: dict, name: str, eps: float = 1e-5) -> torch.Tensor:
    """Per-cell ``nn.LayerNorm`` over the last dim; x is (C, ..., D), affine parameters (C, D)."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    return torch.addcmul(params[f"{name}.bias"].view(shape), F.layer_norm(x, x.shape[-1:], eps=eps),
                         params[f"{name}.weight"].view(shape))


def mlp_stacked(params: dict, x: torch.Tensor) -> torch.Tensor:
    """:class:`GrokkingMLP` for C cells: params (C, ...) by module name, x (B, 2) or (C, B, 2)."""
    C, p, E = params["embed_a.weight"].shape
    w_a, w_b = params["hidden.weight"].split(E, dim=2)
    table = torch.cat([params["embed_a.weight"] @ w_a.transpose(1, 2),        # (C, 2p, hidden)
                       params["embed_b.weight"] @ w_b.transpose(1, 2)], dim=1)
    pre = _gather_rows(table, x[..., 0]) + _gather_rows(table, x[..., 1] + p)
    h = F.relu(pre + params["hidden.bias"].unsqueeze(1))
    return _linear(h, params, "out")


def transformer_stacked(params: dict, x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """:class:`OneLayerTransformer` for C cells: params (C, ...) by module name, x (B, 2) or (C, B, 2).

    The same two exact shortcuts as the module (only the last position after attention;
    per-(position, token) tables before it); attention over the two keys is written out
    elementwise instead of as thousands of 1x2 matrix products.
    """
    tok = params["tok.weight"]                                           # (C, p, D)
    C, p, D = tok.shape
    H, Dh = n_heads, D // n_heads
    emb = tok.unsqueeze(1) + params["pos"].unsqueeze(2)                  # (C, 2, p, D)
    qkv = _linear(_layer_norm(emb, params, "ln1").view(C, 2 * p, D), params, "attn.qkv").view(C, 2, p, 3 * D)
    table_b = torch.cat([qkv[:, 1], emb[:, 1]], dim=-1)                  # q, k, v, residual of token b
    g_b = _gather_rows(table_b, x[..., 1])                               # (C, B, 4D)
    g_a = _gather_rows(qkv[:, 0, :, D:].contiguous(), x[..., 0])         # k, v of token a: (C, B, 2D)
    B = g_b.shape[1]
    q, k_b, v_b, resid = g_b.split(D, dim=-1)
    k_a, v_a = g_a.split(D, dim=-1)
    heads = (C, B, H, Dh)
    q = q.reshape(heads)
    scores = torch.stack([(q * k_a.reshape(heads)).sum(-1), (q * k_b.reshape(heads)).sum(-1)], -1)
    att = (scores / math.sqrt(Dh)).softmax(dim=-1)                       # (C, B, H, 2)
    mixed = att[..., :1] * v_a.reshape(heads) + att[..., 1:] * v_b.reshape(heads)
    h = resid + _linear(mixed.reshape(C, B, D), params, "attn.proj")
    h = h + _linear(F.gelu(_linear(_layer_norm(h, params, "ln2"), params, "ff_in")), params, "ff_out")
    return _linear(_layer_norm(h, params, "ln_f"), params, "head")


def stacked_forward(model_cfg: dict):
    """The many-cell forward ``f(params, x) -> logits (C, B, p)`` for the model named in ``model_cfg``."""
    name = model_cfg["name"]
    if name == "mlp":
        return mlp_stacked
    if name == "transformer":
        n_heads = int(model_cfg.get("n_heads", 4))
        return lambda params, x: transformer_stacked(params, x, n_heads)
    raise ValueError(f"unknown model '{name}'")


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
