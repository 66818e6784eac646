import math

import pytest
import torch
import torch.nn.functional as F

from nht.models import GrokkingMLP, OneLayerTransformer, build_model, scale_init, squared_norm


@pytest.mark.parametrize("cfg", [{"name": "mlp", "embed_dim": 8, "hidden": 16},
                                 {"name": "transformer", "d_model": 16, "n_heads": 4, "d_ff": 32}])
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


def test_transformer_equals_full_attention_read_at_last_position():
    torch.manual_seed(2)
    t = OneLayerTransformer(13, d_model=16, n_heads=4, d_ff=32)
    x = torch.randint(0, 13, (40, 2))
    h = t.tok(x) + t.pos
    B, T, C = h.shape
    q, k, v = t.attn.qkv(t.ln1(h)).split(C, -1)
    q, k, v = (z.view(B, T, 4, 4).transpose(1, 2) for z in (q, k, v))
    y = ((q @ k.transpose(-2, -1)) / math.sqrt(4)).softmax(-1) @ v
    h = h + t.attn.proj(y.transpose(1, 2).reshape(B, T, C))
    h = h + t.ff_out(F.gelu(t.ff_in(t.ln2(h))))
    ref = t.head(t.ln_f(h))[:, -1]
    torch.testing.assert_close(t(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg,p", [({"name": "mlp", "embed_dim": 8, "hidden": 16}, 31),
                                   ({"name": "transformer", "d_model": 16, "n_heads": 4, "d_ff": 32}, 13)])
@pytest.mark.parametrize("shared_inputs", [True, False])
def test_stacked_forward_equals_each_module_output_and_gradient(cfg, p, shared_inputs):
    """The many-cell forward used in training computes, cell by cell, the module's function."""
    from torch.func import stack_module_state
    from nht.models import stacked_forward

    modules = []
    for c in range(3):
        torch.manual_seed(c)
        modules.append(scale_init(build_model(cfg, p), 1.0 + c))   # cells differ in init and scale
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
