"""minildm.nn: time embedding, ResBlock, resampling, self-/cross-attention, attention gates."""

import math

import pytest
import torch
import torch.nn.functional as F

from minildm import nn as blocks


@pytest.fixture(autouse=True)
def seeded():
    """Every test draws the same random inputs on every run."""
    torch.manual_seed(0)


def test_timestep_embedding_is_cos_then_sin_at_geometric_frequencies():
    t = torch.tensor([0, 1, 17, 999])
    emb = blocks.timestep_embedding(t, 8)
    assert emb.shape == (4, 8)
    for i, ti in enumerate(t.tolist()):
        freqs = [10_000 ** (-k / 4) for k in range(4)]
        expected = [math.cos(ti * f) for f in freqs] + [math.sin(ti * f) for f in freqs]
        assert torch.allclose(emb[i], torch.tensor(expected), atol=1e-5)
    assert blocks.timestep_embedding(t, 7)[:, -1].abs().max() == 0  # odd dim: a zero last column


def test_timestep_embedding_matches_diffusers():
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    t = torch.tensor([0, 3, 250, 999])
    for dim in (32, 33):
        expected = embeddings.get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        assert torch.allclose(blocks.timestep_embedding(t, dim), expected, atol=1e-5)


def test_resblock_is_conv_norm_silu_with_a_per_channel_time_shift():
    block = blocks.ResBlock(8, 16, emb_dim=12, groups=4).eval()
    x, emb = torch.randn(2, 8, 5, 6), torch.randn(2, 12)
    # recompute from the block's own weights with functional ops
    h = F.conv2d(F.silu(F.group_norm(x, 4, block.norm1.weight, block.norm1.bias)), block.conv1.weight,
                 block.conv1.bias, padding=1)
    h = h + F.linear(F.silu(emb), block.emb_proj.weight, block.emb_proj.bias)[:, :, None, None]
    h = F.conv2d(F.silu(F.group_norm(h, 4, block.norm2.weight, block.norm2.bias)), block.conv2.weight,
                 block.conv2.bias, padding=1)
    expected = F.conv2d(x, block.skip.weight, block.skip.bias) + h
    out = block(x, emb)
    assert out.shape == (2, 16, 5, 6)
    assert torch.allclose(out, expected, atol=1e-5)
    # same channels: the skip is the identity, so the block is x + residual
    same = blocks.ResBlock(8, 8, emb_dim=12, groups=4)
    assert isinstance(same.skip, torch.nn.Identity) and same(x, emb).shape == x.shape


def test_resblock_rejects_channels_that_groups_do_not_divide():
    with pytest.raises(ValueError, match="groups"):
        blocks.ResBlock(10, 16, emb_dim=4, groups=4)


def test_downsample_halves_and_upsample_is_nearest_then_conv():
    x = torch.randn(2, 4, 8, 6)
    assert blocks.Downsample(4)(x).shape == (2, 4, 4, 3)
    up = blocks.Upsample(4)
    nearest = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # each pixel copied to a 2x2 patch
    assert torch.allclose(up(x), up.conv(nearest), atol=1e-6)
    assert up(x).shape == (2, 4, 16, 12)


def test_manual_attention_equals_sdpa_and_a_per_query_loop():
    q, k, v = torch.randn(2, 3, 7, 5), torch.randn(2, 3, 9, 5), torch.randn(2, 3, 9, 5)
    manual = blocks.attention(q, k, v, manual=True)
    assert torch.allclose(manual, blocks.attention(q, k, v), atol=1e-5)
    b, h, n = 1, 2, 4  # one query by hand: weights proportional to exp(q.k_m / sqrt(d))
    scores = torch.tensor([q[b, h, n] @ k[b, h, m] / math.sqrt(5) for m in range(9)])
    w = scores.exp() / scores.exp().sum()
    assert torch.allclose(manual[b, h, n], (w[:, None] * v[b, h]).sum(0), atol=1e-5)


def test_self_attention_manual_path_matches_fused_path():
    attn = blocks.SelfAttention(16, heads=4, groups=4)
    x = torch.randn(2, 16, 4, 5)
    fused = attn(x)
    attn.manual = True
    assert fused.shape == x.shape
    assert torch.allclose(attn(x), fused, atol=1e-5)


def test_self_attention_mixes_positions_without_caring_about_their_order():
    # no positional encoding: permuting the pixels permutes the output the same way
    attn = blocks.SelfAttention(8, heads=2, groups=2)
    x = torch.randn(1, 8, 3, 4)
    perm = torch.randperm(12)
    out = attn(x).flatten(2)[:, :, perm]
    out_of_permuted = attn(x.flatten(2)[:, :, perm].reshape(1, 8, 3, 4)).flatten(2)
    assert torch.allclose(out, out_of_permuted, atol=1e-5)
    # ... and every output pixel depends on the other pixels (attention is not per-pixel)
    y = x.clone()
    y[..., 0, 0] += 1.0
    assert not torch.allclose(attn(x)[..., 2, 3], attn(y)[..., 2, 3], atol=1e-4)


def test_attention_gate_mask_is_in_unit_interval_and_gates_the_skip():
    gate = blocks.AttentionGate(skip_ch=8, gate_ch=16, inter_ch=4)
    x, g = torch.randn(2, 8, 6, 6), torch.randn(2, 16, 3, 3)
    alpha = gate.mask(x, g)
    assert alpha.shape == (2, 1, 6, 6)
    assert alpha.min() >= 0 and alpha.max() <= 1
    # recompute: g's projection copied to each 2x2 patch, additive attention, sigmoid
    g_up = gate.W_g(g).repeat_interleave(2, 2).repeat_interleave(2, 3)
    expected = torch.sigmoid(gate.psi(torch.relu(gate.W_x(x) + g_up)))
    assert torch.allclose(alpha, expected, atol=1e-6)
    out = gate(x, g)
    assert torch.allclose(out, x * alpha, atol=1e-6)
    assert not torch.allclose(out, x, atol=1e-3)  # the gate changes the skip
    assert not torch.allclose(gate(x, torch.randn(2, 16, 3, 3)), out, atol=1e-4)  # and g steers it
