"""Models for modular arithmetic, written as plain ``nn.Module``s.

Both read a pair of tokens ``x`` of shape (batch, 2) with values in [0, p) and return logits of
shape (batch, p). The ``nn.Module`` classes define each model (names, shapes, initialisation)
and are the single-cell reference. Many-cell training stacks their parameters along a leading
*cell* dimension C and calls :func:`stacked_forward`, which computes the same function for all C
cells at once with batched matrix products (``baddbmm``) and row gathers; tests check it against
the modules, output and gradient, cell by cell.

The transformer's default is the companion code's model (ClevixLab/grokking-norm-separation,
``scripts/shared_v2.py``): ``nn.Embedding`` tokens and positions (N(0, 1)), one post-LN
``nn.TransformerEncoderLayer(d, heads, d_ff, dropout=0, activation="gelu")``, a final LayerNorm
and a linear readout at the last position. :class:`CompanionTransformer` is that model written
with torch's own layer; :class:`OneLayerTransformer` holds the same parameters under nht's names
and computes the same function (tested), and with ``init="companion"`` it draws its initial
weights by building a :class:`CompanionTransformer`, so a seed gives exactly the companion's
initial weights.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Defaults of the model keys (the schema, workflow/schemas/modular_experiment.schema.yaml,
# fills the same values into every config).
MLP_DEFAULTS = {"embed_dim": 32, "hidden": 128, "embed_init": "normal"}
TRANSFORMER_DEFAULTS = {"d_model": 128, "n_heads": 4, "d_ff": 512, "norm_first": False,
                        "init": "companion", "pos_init_std": None}
EMBED_INITS = ("normal", "scaled")
TRANSFORMER_INITS = ("companion", "legacy")
LEGACY_POS_STD = 0.02


class GrokkingMLP(nn.Module):
    """Two embeddings -> concat -> one hidden ReLU layer -> readout (``out``).

    ``embed_init``: ``"normal"`` keeps ``nn.Embedding``'s N(0, 1) entries (PyTorch's default, the
    same convention as the companion transformer's embeddings); ``"scaled"`` multiplies them by
    1/sqrt(embed_dim) (N(0, 1/embed_dim), the same random draws). With the default sizes (p 31,
    embed_dim 32, hidden 128) V_init is about 2,040 with ``normal`` and about 115 with ``scaled``
    (V squared norm); the embeddings hold 1,984 of ``normal``'s 2,040.

    The hidden pre-activation ``W [E_a[a]; E_b[b]] + c`` is computed as
    ``(E_a W_a^T)[a] + (E_b W_b^T)[b] + c``: the same function and gradients, but the matrix
    products run over the p vocabulary rows instead of every example (about 3x fewer FLOPs per
    full-batch step at p = 31).
    """

    def __init__(self, p: int, embed_dim: int = 32, hidden: int = 128, embed_init: str = "normal"):
        super().__init__()
        if embed_init not in EMBED_INITS:
            raise ValueError(f"unknown embed_init '{embed_init}', expected one of {EMBED_INITS}")
        self.embed_a = nn.Embedding(p, embed_dim)
        self.embed_b = nn.Embedding(p, embed_dim)
        self.hidden = nn.Linear(2 * embed_dim, hidden)
        self.out = nn.Linear(hidden, p)
        if embed_init == "scaled":
            with torch.no_grad():
                self.embed_a.weight.mul_(embed_dim ** -0.5)
                self.embed_b.weight.mul_(embed_dim ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_a, w_b = self.hidden.weight.split(self.embed_a.embedding_dim, dim=1)
        table_a = self.embed_a.weight @ w_a.T          # (p, hidden): every a's contribution
        table_b = self.embed_b.weight @ w_b.T
        pre = table_a[x[..., 0]] + table_b[x[..., 1]] + self.hidden.bias
        return self.out(F.relu(pre))


class CompanionTransformer(nn.Module):
    """The companion's ``Model`` (scripts/shared_v2.py), built from torch's own layers.

    ``tok``/``pos``: ``nn.Embedding`` (N(0, 1)); ``tf``: ``nn.TransformerEncoder`` of one
    ``nn.TransformerEncoderLayer(d_model, n_heads, d_ff, 0.0, activation="gelu", batch_first=True)``
    (post-LN unless ``norm_first``); ``norm``: final LayerNorm; ``head``: readout of the last
    position. Modules are created in the companion's order, so after ``torch.manual_seed(s)`` the
    initial weights are the companion's for seed s. Reference only; training uses
    :class:`OneLayerTransformer` / :func:`stacked_forward` (same function, tested).
    """

    def __init__(self, p: int, d_model: int = 128, n_heads: int = 4, d_ff: int = 512, norm_first: bool = False):
        super().__init__()
        self.tok = nn.Embedding(p, d_model)
        self.pos = nn.Embedding(2, d_model)
        enc = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, 0.0, activation="gelu", batch_first=True,
                                         norm_first=norm_first)
        self.tf = nn.TransformerEncoder(enc, 1, enable_nested_tensor=not norm_first)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(x) + self.pos(torch.arange(2, device=x.device).unsqueeze(0).expand(x.size(0), -1))
        return self.head(self.norm(self.tf(h)[:, -1, :]))


# nht parameter name -> CompanionTransformer parameter name (the same tensors, renamed).
COMPANION_NAMES = {
    "tok.weight": "tok.weight", "pos": "pos.weight",
    "ln1.weight": "tf.layers.0.norm1.weight", "ln1.bias": "tf.layers.0.norm1.bias",
    "attn.qkv.weight": "tf.layers.0.self_attn.in_proj_weight", "attn.qkv.bias": "tf.layers.0.self_attn.in_proj_bias",
    "attn.proj.weight": "tf.layers.0.self_attn.out_proj.weight", "attn.proj.bias": "tf.layers.0.self_attn.out_proj.bias",
    "ln2.weight": "tf.layers.0.norm2.weight", "ln2.bias": "tf.layers.0.norm2.bias",
    "ff_in.weight": "tf.layers.0.linear1.weight", "ff_in.bias": "tf.layers.0.linear1.bias",
    "ff_out.weight": "tf.layers.0.linear2.weight", "ff_out.bias": "tf.layers.0.linear2.bias",
    "ln_f.weight": "norm.weight", "ln_f.bias": "norm.bias",
    "head.weight": "head.weight", "head.bias": "head.bias",
}


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
    """1-layer transformer on tokens [a, b]: attention + GELU FFN block, final LayerNorm,
    readout (``head``) at the last position.

    ``norm_first=False`` (default, the companion's and ``nn.TransformerEncoderLayer``'s default):
    post-LN, ``h = ln1(x + SA(x)); h = ln2(h + FF(h))``. ``norm_first=True``: pre-LN,
    ``h = x + SA(ln1(x)); h = h + FF(ln2(h))``. Either way ``ln_f`` and ``head`` follow.

    ``init="companion"`` (default): the weights of a freshly built :class:`CompanionTransformer`
    (``nn.Embedding`` N(0, 1) tokens and positions; ``nn.MultiheadAttention``'s xavier-uniform
    q/k/v and zero q/k/v and output biases; ``nn.Linear`` defaults elsewhere), drawn in the
    companion's order. ``init="legacy"``: nht's earlier init (``nn.Linear`` defaults for q/k/v
    and output projection, positions N(0, 0.02^2)), kept to reproduce earlier results.
    ``pos_init_std`` (None = the init's own, 1 or 0.02) rescales the position embedding's
    standard-normal draws without changing any other weight.

    Two exact shortcuts make it cheap (same function and gradients as the textbook version):
    nothing reads the first position after attention (the FFN and LayerNorms act per position),
    so only the last position's residual stream is computed; and everything up to the q/k/v
    projection depends only on (position, token), so it is computed once per vocabulary entry
    (2 x p rows) and gathered, instead of once per example. Both hold for pre- and post-LN.
    """

    def __init__(self, p: int, d_model: int = 128, n_heads: int = 4, d_ff: int = 512,
                 norm_first: bool = False, init: str = "companion", pos_init_std: float | None = None):
        super().__init__()
        if init not in TRANSFORMER_INITS:
            raise ValueError(f"unknown transformer init '{init}', expected one of {TRANSFORMER_INITS}")
        self.norm_first = bool(norm_first)
        if init == "companion":
            ref = CompanionTransformer(p, d_model, n_heads, d_ff, norm_first)
            rng_after_ref = torch.get_rng_state()     # the global generator as the companion leaves it
        self.tok = nn.Embedding(p, d_model)
        self.pos = nn.Parameter(torch.randn(2, d_model) * LEGACY_POS_STD)
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff_in = nn.Linear(d_model, d_ff)
        self.ff_out = nn.Linear(d_ff, d_model)
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, p)
        with torch.no_grad():
            if init == "companion":
                self.load_state_dict(from_companion_state(ref.state_dict()))
                torch.set_rng_state(rng_after_ref)    # the draws of the overwritten modules are undone
            if pos_init_std is not None:
                std_now = 1.0 if init == "companion" else LEGACY_POS_STD
                self.pos.mul_(float(pos_init_std) / std_now)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H = x.shape[0], self.tok.embedding_dim, self.attn.n_heads
        D = C // H
        emb = self.tok.weight.unsqueeze(0) + self.pos.unsqueeze(1)     # (2, p, C): position x token
        qkv = self.attn.qkv(self.ln1(emb) if self.norm_first else emb)  # (2, p, 3C)
        a, b = x[:, 0], x[:, 1]
        q = qkv[1, :, :C][b].view(B, H, 1, D)                          # query: last position only
        k = torch.stack([qkv[0, :, C:2 * C][a], qkv[1, :, C:2 * C][b]], dim=1)   # (B, 2, C)
        v = torch.stack([qkv[0, :, 2 * C:][a], qkv[1, :, 2 * C:][b]], dim=1)
        k, v = (t.view(B, 2, H, D).transpose(1, 2) for t in (k, v))    # (B, H, 2, D)
        att = ((q @ k.transpose(-2, -1)) / math.sqrt(D)).softmax(dim=-1)
        h = emb[1][b] + self.attn.proj((att @ v).reshape(B, C))        # residual, last position
        if self.norm_first:
            h = h + self.ff_out(F.gelu(self.ff_in(self.ln2(h))))
        else:
            h = self.ln1(h)
            h = self.ln2(h + self.ff_out(F.gelu(self.ff_in(h))))
        return self.head(self.ln_f(h))


def from_companion_state(state: dict) -> dict:
    """A :class:`CompanionTransformer` state dict renamed to :class:`OneLayerTransformer`'s names."""
    return {mine: state[theirs] for mine, theirs in COMPANION_NAMES.items()}


def to_companion_state(state: dict) -> dict:
    """An :class:`OneLayerTransformer` state dict renamed to :class:`CompanionTransformer`'s names."""
    return {theirs: state[mine] for mine, theirs in COMPANION_NAMES.items()}


# --------------------------------------------------------------------------- stacked (many-cell)

@functools.lru_cache(maxsize=64)
def _row_offsets(cells: int, rows: int, device: torch.device) -> torch.Tensor:
    """``[[0], [rows], [2 rows], ...]`` (cells, 1): cell c's first row in a (cells * rows, D) table.
    Cached: a step builds it once per shape, not at every call (and a CUDA graph reads it in place)."""
    return torch.arange(cells, device=device).mul_(rows).unsqueeze(1)


@functools.lru_cache(maxsize=64)
def _constant(value: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A 0-dim tensor holding ``value``: dividing by it is the same arithmetic as dividing by the
    Python number, without a host-side number-to-tensor conversion at every call."""
    return torch.tensor(value, device=device, dtype=dtype)


def _gather_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``out[c, i] = table[c, idx[c, i]]`` (or ``idx[i]`` when ``idx`` is shared by all cells).

    ``table`` is (C, R, D), ``idx`` (B,) or (C, B); returns (C, B, D). One ``index_select`` over
    the flattened table: its backward is an ``index_add`` (deterministic on the CPU).
    """
    C, R, D = table.shape
    offsets = _row_offsets(C, R, idx.device)
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


def transformer_stacked(params: dict, x: torch.Tensor, n_heads: int, norm_first: bool = False) -> torch.Tensor:
    """:class:`OneLayerTransformer` for C cells: params (C, ...) by module name, x (B, 2) or (C, B, 2).

    The same two exact shortcuts as the module (only the last position after attention;
    per-(position, token) tables up to the q/k/v projection); attention over the two keys is
    written out elementwise instead of as thousands of 1x2 matrix products.
    """
    tok = params["tok.weight"]                                           # (C, p, D)
    C, p, D = tok.shape
    H, Dh = n_heads, D // n_heads
    emb = tok.unsqueeze(1) + params["pos"].unsqueeze(2)                  # (C, 2, p, D)
    attn_in = _layer_norm(emb, params, "ln1") if norm_first else emb
    qkv = _linear(attn_in.reshape(C, 2 * p, D), params, "attn.qkv").view(C, 2, p, 3 * D)
    table_b = torch.cat([qkv[:, 1], emb[:, 1]], dim=-1)                  # q, k, v, residual of token b
    g_b = _gather_rows(table_b, x[..., 1])                               # (C, B, 4D)
    g_a = _gather_rows(qkv[:, 0, :, D:].contiguous(), x[..., 0])         # k, v of token a: (C, B, 2D)
    B = g_b.shape[1]
    q, k_b, v_b, resid = g_b.split(D, dim=-1)
    k_a, v_a = g_a.split(D, dim=-1)
    heads = (C, B, H, Dh)
    q = q.reshape(heads)
    scores = torch.stack([(q * k_a.reshape(heads)).sum(-1), (q * k_b.reshape(heads)).sum(-1)], -1)
    att = (scores / _constant(math.sqrt(Dh), scores.device, torch.float32)).softmax(dim=-1)   # (C, B, H, 2)
    mixed = att[..., :1] * v_a.reshape(heads) + att[..., 1:] * v_b.reshape(heads)
    h = resid + _linear(mixed.reshape(C, B, D), params, "attn.proj")
    if norm_first:
        h = h + _linear(F.gelu(_linear(_layer_norm(h, params, "ln2"), params, "ff_in")), params, "ff_out")
    else:
        h = _layer_norm(h, params, "ln1")
        h = _layer_norm(h + _linear(F.gelu(_linear(h, params, "ff_in")), params, "ff_out"), params, "ln2")
    return _linear(_layer_norm(h, params, "ln_f"), params, "head")


def stacked_forward(model_cfg: dict):
    """The many-cell forward ``f(params, x) -> logits (C, B, p)`` for the model named in ``model_cfg``."""
    name = model_cfg["name"]
    if name == "mlp":
        return mlp_stacked
    if name == "transformer":
        n_heads = int(model_cfg.get("n_heads", TRANSFORMER_DEFAULTS["n_heads"]))
        norm_first = bool(model_cfg.get("norm_first", TRANSFORMER_DEFAULTS["norm_first"]))
        return lambda params, x: transformer_stacked(params, x, n_heads, norm_first)
    raise ValueError(f"unknown model '{name}'")


READOUT = {"mlp": "out", "transformer": "head"}


def build_model(model_cfg: dict, p: int) -> nn.Module:
    """Instantiate the model named by ``model_cfg['name']``; missing keys take the schema defaults."""
    name = model_cfg["name"]
    if name == "mlp":
        c = {**MLP_DEFAULTS, **{k: v for k, v in model_cfg.items() if k in MLP_DEFAULTS}}
        return GrokkingMLP(p, c["embed_dim"], c["hidden"], c["embed_init"])
    if name == "transformer":
        c = {**TRANSFORMER_DEFAULTS, **{k: v for k, v in model_cfg.items() if k in TRANSFORMER_DEFAULTS}}
        return OneLayerTransformer(p, c["d_model"], c["n_heads"], c["d_ff"], c["norm_first"], c["init"],
                                   c["pos_init_std"])
    raise ValueError(f"unknown model '{name}'")
