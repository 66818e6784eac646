import math

import pytest
import torch
import torch.nn.functional as F

from nht.core.norms import scale_init, squared_norms
from nht.domains.modular.models import (COMPANION_NAMES, CompanionTransformer, GrokkingMLP, OneLayerTransformer, build_model,
                        from_companion_state, to_companion_state)


def squared_norm(model) -> float:
    """V of a model (nht.core.norms)."""
    return squared_norms(model)["V"]

TRANSFORMERS = [{"name": "transformer", "d_model": 16, "n_heads": 4, "d_ff": 32},                    # companion
                {"name": "transformer", "d_model": 16, "n_heads": 4, "d_ff": 32, "norm_first": True},
                {"name": "transformer", "d_model": 16, "n_heads": 2, "d_ff": 24, "init": "legacy",
                 "norm_first": True}]                                                              # nht before


@pytest.mark.parametrize("cfg", [{"name": "mlp", "embed_dim": 8, "hidden": 16}] + TRANSFORMERS)
def test_output_shape(cfg):
    model = build_model(cfg, p=13)
    x = torch.randint(0, 13, (7, 2))
    assert model(x).shape == (7, 13)


@pytest.mark.parametrize("name", ["mlp", "transformer"])
@pytest.mark.parametrize("alpha", [0.5, 3.0, 30.0])
def test_init_scale_multiplies_v_init_by_alpha_squared(name, alpha):
    cfg = {"name": name, "embed_dim": 8, "hidden": 16, "d_model": 16, "n_heads": 2, "d_ff": 32}
    torch.manual_seed(0)
    v1 = squared_norm(build_model(cfg, 11))
    torch.manual_seed(0)
    va = squared_norm(scale_init(build_model(cfg, 11), alpha))
    assert va == pytest.approx(alpha ** 2 * v1, rel=1e-6)


def test_mlp_table_trick_equals_textbook_forward():
    torch.manual_seed(1)
    m = GrokkingMLP(31, 8, 16)
    x = torch.randint(0, 31, (64, 2))
    ref = m.out(F.relu(m.hidden(torch.cat([m.embed_a(x[:, 0]), m.embed_b(x[:, 1])], -1))))
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def test_mlp_scaled_embeddings_are_the_same_draws_times_inverse_sqrt_dim():
    torch.manual_seed(3)
    normal = GrokkingMLP(31, 32, 128)
    torch.manual_seed(3)
    scaled = GrokkingMLP(31, 32, 128, embed_init="scaled")
    torch.testing.assert_close(scaled.embed_a.weight, normal.embed_a.weight / math.sqrt(32))
    torch.testing.assert_close(scaled.hidden.weight, normal.hidden.weight, rtol=0, atol=0)
    # the embeddings dominate V_init under N(0, 1): the ratio quoted in the docs (about 18x)
    assert 15 < squared_norm(normal) / squared_norm(scaled) < 21


def _textbook(t: OneLayerTransformer, x: torch.Tensor) -> torch.Tensor:
    """Full two-position self-attention, read at the last position (no shortcuts)."""
    h = t.tok(x) + t.pos
    B, T, C = h.shape
    H = t.attn.n_heads
    D = C // H

    def attention(z):
        q, k, v = t.attn.qkv(z).split(C, -1)
        q, k, v = (u.view(B, T, H, D).transpose(1, 2) for u in (q, k, v))
        y = ((q @ k.transpose(-2, -1)) / math.sqrt(D)).softmax(-1) @ v
        return t.attn.proj(y.transpose(1, 2).reshape(B, T, C))

    def ff(z):
        return t.ff_out(F.gelu(t.ff_in(z)))

    if t.norm_first:
        h = h + attention(t.ln1(h))
        h = h + ff(t.ln2(h))
    else:
        h = t.ln1(h + attention(h))
        h = t.ln2(h + ff(h))
    return t.head(t.ln_f(h))[:, -1]


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_equals_full_attention_read_at_last_position(norm_first):
    torch.manual_seed(2)
    t = OneLayerTransformer(13, d_model=16, n_heads=4, d_ff=32, norm_first=norm_first)
    _perturb(t)
    x = torch.randint(0, 13, (40, 2))
    torch.testing.assert_close(t(x), _textbook(t, x), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def _perturb(module, scale=0.3):
    """Move every parameter off its init (zero biases, unit LayerNorm gains) so no term vanishes."""
    for prm in module.parameters():
        prm.add_(scale * torch.randn_like(prm))


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_is_torch_transformer_encoder_layer_for_the_same_weights(norm_first):
    """Same weights -> same logits and gradients as the companion's nn.TransformerEncoderLayer model."""
    torch.manual_seed(5)
    ref = CompanionTransformer(13, 16, 4, 32, norm_first=norm_first)
    _perturb(ref)
    mine = OneLayerTransformer(13, 16, 4, 32, norm_first=norm_first)
    mine.load_state_dict(from_companion_state(ref.state_dict()))
    x, y = torch.randint(0, 13, (60, 2)), torch.randint(0, 13, (60,))
    out_ref, out_mine = ref(x), mine(x)
    torch.testing.assert_close(out_mine, out_ref, rtol=1e-5, atol=1e-5)
    F.cross_entropy(out_ref, y).backward()
    F.cross_entropy(out_mine, y).backward()
    ref_params = dict(ref.named_parameters())
    for name, prm in mine.named_parameters():
        torch.testing.assert_close(prm.grad, ref_params[COMPANION_NAMES[name]].grad, rtol=1e-4, atol=1e-6)
    ref.eval()                    # torch's inference fast path: the same function again
    with torch.no_grad():
        torch.testing.assert_close(mine(x), ref(x), rtol=1e-5, atol=1e-5)
    # the other layout is a different function: the test can tell them apart
    other = OneLayerTransformer(13, 16, 4, 32, norm_first=not norm_first)
    other.load_state_dict(mine.state_dict())
    assert (other(x) - out_ref).abs().max() > 1e-2


@pytest.mark.parametrize("seed", [42, 7])
def test_companion_init_is_the_companion_models_init_and_leaves_its_rng_state(seed):
    """With a seed, nht's default transformer starts from exactly the companion's weights, and the
    global generator is left where the companion's leaves it (its minibatch draws come next)."""
    torch.manual_seed(seed)
    ref = CompanionTransformer(97, 128, 4, 512)
    after_ref = torch.get_rng_state()
    torch.manual_seed(seed)
    mine = build_model({"name": "transformer"}, 97)
    assert torch.equal(torch.get_rng_state(), after_ref)
    ref_state = ref.state_dict()
    for name, value in mine.state_dict().items():
        assert torch.equal(value, ref_state[COMPANION_NAMES[name]]), name
    assert set(to_companion_state(mine.state_dict())) == set(ref_state)
    assert squared_norm(mine) == pytest.approx(squared_norm(ref), rel=1e-12)
    assert 0.9 < float(mine.pos.detach().std()) < 1.1                       # nn.Embedding: N(0, 1)
    assert float(mine.attn.qkv.bias.detach().abs().max()) == 0.0            # MultiheadAttention zeroes it


def test_legacy_init_and_pos_init_std():
    torch.manual_seed(0)
    legacy = build_model({"name": "transformer", "init": "legacy"}, 97)
    assert 0.015 < float(legacy.pos.detach().std()) < 0.025 and float(legacy.attn.qkv.bias.detach().abs().max()) > 0
    torch.manual_seed(0)
    small = build_model({"name": "transformer", "pos_init_std": 0.02}, 97)
    torch.manual_seed(0)
    default = build_model({"name": "transformer"}, 97)
    torch.testing.assert_close(small.pos, default.pos * 0.02)      # the same draws, rescaled
    for name, value in small.state_dict().items():
        if name != "pos":
            assert torch.equal(value, default.state_dict()[name]), name
    with pytest.raises(ValueError, match="init"):
        build_model({"name": "transformer", "init": "xavier"}, 11)


@pytest.mark.parametrize("cfg,p", [({"name": "mlp", "embed_dim": 8, "hidden": 16}, 31)]
                         + [(c, 13) for c in TRANSFORMERS])
@pytest.mark.parametrize("shared_inputs", [True, False])
def test_stacked_forward_equals_each_module_output_and_gradient(cfg, p, shared_inputs):
    """The many-cell forward used in training computes, cell by cell, the module's function."""
    from torch.func import stack_module_state
    from nht.domains.modular.models import stacked_forward

    modules = []
    for c in range(3):
        torch.manual_seed(c)
        modules.append(scale_init(build_model(cfg, p), 1.0 + c))   # cells differ in init and scale
        _perturb(modules[-1], 0.1)
    stacked, _ = stack_module_state(modules)
    stacked = {k: v.detach().clone().requires_grad_(True) for k, v in stacked.items()}
    x = torch.randint(0, p, (40, 2)) if shared_inputs else torch.randint(0, p, (3, 40, 2))
    y = torch.randint(0, p, (3, 40))
    out = stacked_forward(cfg)(stacked, x)
    assert out.shape == (3, 40, p)
    F.cross_entropy(out.reshape(-1, p), y.reshape(-1), reduction="sum").backward()
    for c, module in enumerate(modules):
        xc = x if shared_inputs else x[c]
        ref = module(xc)
        torch.testing.assert_close(out[c], ref, rtol=1e-5, atol=1e-5)
        F.cross_entropy(ref, y[c], reduction="sum").backward()
        for name, param in module.named_parameters():
            torch.testing.assert_close(stacked[name].grad[c], param.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cfg,p", [({"name": "mlp", "embed_dim": 32, "hidden": 128}, 31),
                                   ({"name": "mlp", "embed_dim": 8, "hidden": 16}, 97),
                                   ({"name": "transformer", "d_model": 128, "n_heads": 4, "d_ff": 512}, 97),
                                   ({"name": "transformer", "d_model": 16, "n_heads": 2, "d_ff": 24}, 13)])
def test_cost_model_parameter_count_matches_the_models(cfg, p):
    from nht.costs import parameter_count

    assert parameter_count(cfg, p) == sum(t.numel() for t in build_model(cfg, p).parameters())
