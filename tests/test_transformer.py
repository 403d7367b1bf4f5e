"""minildm.nn's spatial transformer: attention on tokens, GEGLU, the transformer block, parity with diffusers."""

import math

import pytest
import torch
import torch.nn.functional as F

from minildm import nn as blocks
from minildm.unet import UNet


@pytest.fixture(autouse=True)
def seeded():
    """Every test draws the same random inputs on every run."""
    torch.manual_seed(0)


def test_attention_uses_diffusers_parameter_names_without_qkv_bias():
    # LoRA files and diffusers checkpoints address layers by these names
    block = blocks.BasicTransformerBlock(16, heads=2, dim_head=8, context_dim=6)
    keys = set(block.state_dict())
    for name in ("attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight", "attn1.to_out.0.weight",
                 "attn1.to_out.0.bias", "attn2.to_k.weight", "attn2.to_out.0.weight", "norm1.weight", "norm2.bias",
                 "norm3.weight", "ff.net.0.proj.weight", "ff.net.0.proj.bias", "ff.net.2.weight", "ff.net.2.bias"):
        assert name in keys, name
    assert not any(k.endswith(("to_q.bias", "to_k.bias", "to_v.bias")) for k in keys)
    assert block.state_dict()["attn2.to_k.weight"].shape == (16, 6)  # keys read the context's 6 features
    assert block.state_dict()["ff.net.0.proj.weight"].shape == (2 * 4 * 16, 16)  # value and gate, mult 4


def test_attention_matches_diffusers_attention():
    diffusers_attention = pytest.importorskip("diffusers.models.attention_processor")
    for context_dim, M in ((None, 7), (6, 5)):
        theirs = diffusers_attention.Attention(12, cross_attention_dim=context_dim, heads=3, dim_head=5).eval()
        ours = blocks.Attention(12, context_dim, heads=3, dim_head=5).eval()
        ours.load_state_dict(theirs.state_dict(), strict=True)
        x = torch.randn(2, 7, 12)
        context = None if context_dim is None else torch.randn(2, M, context_dim)
        with torch.no_grad():
            assert torch.allclose(ours(x, context), theirs(x, encoder_hidden_states=context), atol=1e-5)


def test_attention_by_hand_per_head():
    # out = W_o [softmax(Q_h K_h^T / sqrt(d)) V_h]_h, one head at a time with explicit loops
    attn = blocks.Attention(8, context_dim=6, heads=2, dim_head=3)
    x, c = torch.randn(1, 4, 8), torch.randn(1, 5, 6)
    q, k, v = x[0] @ attn.to_q.weight.T, c[0] @ attn.to_k.weight.T, c[0] @ attn.to_v.weight.T  # (4, 6), (5, 6), (5, 6)
    heads = []
    for h in range(2):
        cols = slice(3 * h, 3 * h + 3)
        scores = q[:, cols] @ k[:, cols].T / math.sqrt(3)  # (4, 5)
        heads.append(scores.exp() / scores.exp().sum(1, keepdim=True) @ v[:, cols])  # (4, 3)
    expected = torch.cat(heads, dim=1) @ attn.to_out[0].weight.T + attn.to_out[0].bias  # (4, 8)
    assert torch.allclose(attn(x, c)[0], expected, atol=1e-5)


def test_manual_fused_and_map_storing_paths_agree():
    attn = blocks.Attention(16, context_dim=10, heads=4)
    x, c = torch.randn(3, 9, 16), torch.randn(3, 5, 10)
    fused = attn(x, c)
    attn.manual = True
    assert torch.allclose(attn(x, c), fused, atol=1e-5)
    attn.manual, attn.store_maps = False, True
    assert torch.allclose(attn(x, c), fused, atol=1e-5)
    assert attn.maps.shape == (3, 4, 9, 5)


def test_geglu_is_first_half_times_gelu_of_second_half():
    geglu = blocks.GEGLU(5, 3)
    x = torch.randn(4, 5)
    W, b = geglu.proj.weight, geglu.proj.bias  # (6, 5), (6,)
    value, gate = x @ W[:3].T + b[:3], x @ W[3:].T + b[3:]
    # GELU(g) = g Phi(g), Phi the standard normal CDF
    expected = value * gate * 0.5 * (1 + torch.erf(gate / math.sqrt(2)))
    assert torch.allclose(geglu(x), expected, atol=1e-6)
    assert not torch.allclose(geglu(x), gate * F.gelu(value), atol=1e-3)  # swapping value and gate is wrong


def test_feed_forward_is_geglu_up_then_linear_down():
    ff = blocks.FeedForward(6, mult=2).eval()
    x = torch.randn(2, 3, 6)
    assert torch.allclose(ff(x), ff.net[2](ff.net[0](x)), atol=1e-6)
    assert ff.net[0].proj.out_features == 2 * 2 * 6 and ff.net[2].in_features == 12 and ff(x).shape == x.shape


@pytest.mark.parametrize("context_dim, with_context", [
    (6, True),      # the usual cross-attention block
    (None, False),  # no attn2: self-attention and feed-forward only
    (16, False),    # context_dim == dim and no context: attn2 attends to the tokens, as in diffusers
])
def test_basic_transformer_block_matches_diffusers(context_dim, with_context):
    diffusers_attention = pytest.importorskip("diffusers.models.attention")
    theirs = diffusers_attention.BasicTransformerBlock(16, 2, 8, cross_attention_dim=context_dim,
                                                       activation_fn="geglu").eval()
    with torch.no_grad():  # LayerNorms away from (1, 0) so that a swapped norm would show
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = blocks.BasicTransformerBlock(16, heads=2, dim_head=8, context_dim=context_dim).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 10, 16)
    context = torch.randn(2, 5, context_dim) if with_context else None
    with torch.no_grad():
        expected = theirs(x, encoder_hidden_states=context)
        assert torch.allclose(ours(x, context), expected, atol=1e-5)
        assert not torch.allclose(expected, x, atol=1e-2)


@pytest.mark.parametrize("context_dim, depth", [(6, 1), (6, 2), (None, 1)])
def test_spatial_transformer_matches_diffusers_transformer2d(context_dim, depth):
    transformers = pytest.importorskip("diffusers.models")
    # inner width 3 * 4 = 12 differs from the 8 channels, so proj_in / proj_out really change the width
    theirs = transformers.Transformer2DModel(num_attention_heads=3, attention_head_dim=4, in_channels=8,
                                             num_layers=depth, norm_num_groups=4,
                                             cross_attention_dim=context_dim).eval()
    ours = blocks.SpatialTransformer(8, context_dim, heads=3, dim_head=4, depth=depth, groups=4).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    # H != W, so a transposed reshape would show; channel scales down to 0.01 make GroupNorm's eps (1e-6) matter
    x = torch.randn(2, 8, 3, 5) * torch.logspace(-2, 0, 8)[None, :, None, None]
    context = None if context_dim is None else torch.randn(2, 7, context_dim)
    with torch.no_grad():
        expected = theirs(x, encoder_hidden_states=context, return_dict=False)[0]
        assert torch.allclose(ours(x, context), expected, atol=1e-5)
        assert not torch.allclose(expected, x, atol=1e-2)


def test_spatial_transformer_is_the_identity_at_init_yet_learns():
    # proj_out starts at zero: out = x + 0, but d out / d proj_out = the blocks' output is not zero
    st = blocks.SpatialTransformer(8, context_dim=6, heads=2, groups=4)
    x, c = torch.randn(2, 8, 4, 4), torch.randn(2, 3, 6)
    out = st(x, c)
    assert torch.equal(out, x)
    out.square().sum().backward()
    assert st.proj_out.weight.grad.abs().sum() > 0
    assert st.proj_in.weight.grad is None or st.proj_in.weight.grad.abs().sum() == 0  # nothing upstream moves yet


def test_cross_attention_maps_are_distributions_over_the_context_tokens():
    st = blocks.SpatialTransformer(8, context_dim=6, heads=2, groups=4)
    attn2 = st.transformer_blocks[0].attn2
    attn2.store_maps = True
    x, c = torch.randn(3, 8, 4, 5), torch.randn(3, 7, 6)
    st(x, c)
    maps = attn2.maps
    assert maps.shape == (3, 2, 4 * 5, 7)  # (B, heads, HW, L): one distribution over the words per pixel
    assert (maps >= 0).all() and torch.allclose(maps.sum(-1), torch.ones(3, 2, 20), atol=1e-6)
    assert maps.std() > 0.01  # random keys: not uniform
    assert st.transformer_blocks[0].attn1.maps is None  # only the layer asked keeps its maps


def test_equal_keys_give_uniform_maps_and_one_token_gets_all_the_attention():
    attn = blocks.Attention(8, context_dim=6, heads=2)
    attn.store_maps = True
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        attn.to_k.weight.zero_()  # every key is 0, so every score is 0: softmax is uniform
    attn(x, torch.randn(2, 4, 6))
    assert torch.allclose(attn.maps, torch.full((2, 2, 5, 4), 0.25), atol=1e-7)
    attn(x, torch.randn(2, 1, 6))  # a single token: weight 1 everywhere
    assert torch.allclose(attn.maps, torch.ones(2, 2, 5, 1))


def test_context_unet_uses_spatial_transformers_that_ignore_the_context_until_trained():
    model = UNet(in_channels=4, base=8, mults=(1, 2), attn_levels=(1,), num_res_blocks=1, heads=2, groups=4,
                 context_dim=6)
    transformers = [m for m in model.modules() if isinstance(m, blocks.SpatialTransformer)]
    assert len(transformers) == 3  # down 1, middle, up 1
    assert not any(isinstance(m, blocks.SelfAttention) for m in model.modules())
    x, c1, c2 = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    out = model(x, 10, context=c1)
    assert out.shape == (2, 4, 8, 8)
    assert torch.equal(out, model(x, 10, context=c2))  # zero proj_out: the context cannot matter yet
    # one training step moves proj_out, and from then on the prompt changes the prediction
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    F.mse_loss(model(x, 10, context=c1), torch.randn(2, 4, 8, 8)).backward()
    opt.step()
    assert not torch.allclose(model(x, 10, context=c1), model(x, 10, context=c2), atol=1e-4)


def test_unet_cross_attention_maps_have_one_row_per_pixel_at_each_level():
    model = UNet(in_channels=4, base=8, mults=(1, 2), attn_levels=(0, 1), num_res_blocks=1, heads=2, groups=4,
                 context_dim=6)
    cross = {n: m for n, m in model.named_modules() if isinstance(m, blocks.Attention) and m.is_cross_attention}
    for m in cross.values():
        m.store_maps = True
    model(torch.randn(1, 4, 8, 8), 3, context=torch.randn(1, 5, 6))
    sizes = {n: m.maps.shape for n, m in cross.items()}
    assert sizes["down.0.1.transformer_blocks.0.attn2"] == (1, 2, 64, 5)  # 8x8 pixels, 5 tokens
    assert sizes["mid.1.transformer_blocks.0.attn2"] == (1, 2, 16, 5)  # 4x4 pixels


@pytest.mark.parametrize("call, match", [
    (lambda: blocks.SpatialTransformer(8, 6, heads=2, groups=4)(torch.randn(1, 8, 4, 4), torch.randn(1, 3, 5)),
     r"context must have shape \(1, M, 6\)"),
    (lambda: blocks.SpatialTransformer(8, 6, heads=2, groups=4)(torch.randn(1, 8, 4, 4), torch.randn(2, 3, 6)),
     r"context must have shape \(1, M, 6\)"),
    (lambda: blocks.SpatialTransformer(8, 6, heads=2, groups=4)(torch.randn(1, 4, 4, 4), torch.randn(1, 3, 6)),
     r"x must have shape \(B, 8, H, W\)"),
    (lambda: blocks.SpatialTransformer(8, 6, heads=2, groups=4)(torch.randn(1, 8, 4, 4)), "context is required"),
    (lambda: blocks.BasicTransformerBlock(8, heads=2)(torch.randn(1, 3, 8), torch.randn(1, 2, 8)),
     r"context_dim=None"),
    (lambda: blocks.Attention(8, heads=2)(torch.randn(1, 8, 3)), r"x must have shape \(B, N, 8\)"),
    (lambda: blocks.SpatialTransformer(10, 6, heads=2, groups=4), "groups"),
    (lambda: blocks.SpatialTransformer(8, 6, heads=3, groups=4), "ch=8 must be a multiple of heads=3"),
    (lambda: blocks.Attention(8, heads=0), "heads must be a positive int"),
    (lambda: blocks.Attention(8, context_dim=0), "context_dim must be a positive int"),
    (lambda: blocks.SpatialTransformer(8, 6, depth=0, groups=4), "depth must be a positive int"),
])
def test_bad_inputs_raise_value_errors_that_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
