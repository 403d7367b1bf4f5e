"""Checks for lesson 05 (the U-Net): the time embedding, attention, a convolution's output size, GroupNorm.

The sinusoidal embedding follows Vaswani et al. (2017, section 3.5) as used by Ho et al.
(2020): geometric frequencies omega_k = 10000^(-k / (dim/2)), the cosines then the sines.
Scaled dot-product attention is softmax(Q K^T / sqrt(d)) V (Vaswani et al., eq. 1). A
convolution with kernel k, stride s and padding p maps a side of n pixels to
floor((n + 2p - k) / s) + 1 (Dumoulin & Visin 2016, relationship 6). GroupNorm (Wu & He 2018)
normalises each sample's channels in groups, over the group's channels and all pixels, with
the biased variance.

Inputs are drawn so that each slip moves the answer past the tolerance: attention logits of
order a few units (so a missing 1/sqrt(d) changes the softmax), strides and paddings that
make floor and ceil differ, groups of several channels over few pixels (so instance,
layer and group statistics differ, and n / (n - 1) is a few per cent).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..nn import timestep_embedding as _package_timestep_embedding
from .core import Mistake, compare

__all__ = ["sinusoidal_embedding", "scaled_dot_product_attention", "conv_output_size", "group_norm"]


# ---------------------------------------------------------------------------- sinusoidal_embedding

def _embedding_case(generator: torch.Generator) -> dict:
    B = int(torch.randint(2, 6, (), generator=generator))
    dim = 2 * int(torch.randint(2, 17, (), generator=generator))  # even, 4 ... 32
    t = torch.randint(0, 1000, (B,), generator=generator)  # (B,)
    t[0] = 0
    return {"t": t, "dim": dim}


def _embedding(t, dim):
    return _package_timestep_embedding(t, dim)


def _embedding_with(order="cos_sin", denominator="half", sign=-1.0):
    """A [cos | sin] embedding with one part changed, for the mistakes below."""
    def embed(t, dim):
        half = dim // 2
        k = torch.arange(half, dtype=torch.float32)
        scale = half if denominator == "half" else dim
        # omega_k = 10000^(sign k / scale)
        freqs = torch.exp(sign * math.log(10_000.0) * k / scale)
        angles = t.float()[:, None] * freqs[None, :]  # (B, half)
        parts = [torch.cos(angles), torch.sin(angles)]
        if order == "sin_cos":
            parts.reverse()
        if order == "interleaved":
            return torch.stack(parts, dim=-1).reshape(len(t), dim)  # (B, dim) cos, sin, cos, sin, ...
        return torch.cat(parts, dim=-1)  # (B, dim)
    return embed


def sinusoidal_embedding(learner) -> None:
    """Check ``learner(t, dim)``: (B,) integer timesteps -> (B, dim), [cos | sin], omega_k = 10000^(-k/(dim/2))."""
    __tracebackhide__ = True
    compare(learner, _embedding, _embedding_case, name="sinusoidal_embedding", mistakes=[
        Mistake("sin and cos swapped ([sin | cos] instead of [cos | sin])", _embedding_with(order="sin_cos"),
                "the first half of the columns holds the cosines, the second half the sines (at t = 0 the "
                "embedding is [1, ..., 1, 0, ..., 0])."),
        Mistake("cos and sin interleaved instead of concatenated", _embedding_with(order="interleaved"),
                "use torch.cat([cos, sin], dim=-1): all dim/2 cosines first, then all dim/2 sines."),
        Mistake("the frequency exponent divided by dim instead of dim/2", _embedding_with(denominator="dim"),
                "omega_k = 10000^(-k / half) with half = dim // 2, so the slowest frequency is 10000^(-(half-1)/half)."),
        Mistake("a positive frequency exponent (omega_k = 10000^(+k/half))", _embedding_with(sign=1.0),
                "the frequencies must *fall* from 1 to about 1/10000: exp(-ln(10000) * k / half)."),
    ], hint="half = dim // 2; freqs = torch.exp(-math.log(10000) * torch.arange(half) / half); "
            "angles = t.float()[:, None] * freqs[None]; return torch.cat([angles.cos(), angles.sin()], dim=-1)")


# ---------------------------------------------------------------------------- scaled_dot_product_attention

def _attention_case(generator: torch.Generator) -> dict:
    B, heads = int(torch.randint(1, 3, (), generator=generator)), int(torch.randint(1, 3, (), generator=generator))
    N, M = int(torch.randint(3, 7, (), generator=generator)), int(torch.randint(3, 7, (), generator=generator))
    if N == M:
        M += 1  # keys and queries of different lengths, so a transposed product cannot go unnoticed
    d = int(torch.randint(4, 17, (), generator=generator))
    return {"q": torch.randn(B, heads, N, d, generator=generator),
            "k": torch.randn(B, heads, M, d, generator=generator),
            "v": torch.randn(B, heads, M, d, generator=generator)}


def _attention_with(scale_of=lambda q, k: 1 / math.sqrt(q.shape[-1]), softmax_dim=-1):
    def attend(q, k, v):
        # A = softmax(Q K^T * scale)
        weights = torch.softmax(q @ k.transpose(-2, -1) * scale_of(q, k), dim=softmax_dim)  # (B, h, N, M)
        return weights @ v  # (B, h, N, d)
    return attend


def scaled_dot_product_attention(learner) -> None:
    """Check ``learner(q, k, v)``: q (B, h, N, d), k and v (B, h, M, d) -> softmax(Q K^T / sqrt(d)) V."""
    __tracebackhide__ = True
    compare(learner, _attention_with(), _attention_case, name="scaled_dot_product_attention", mistakes=[
        Mistake("no 1/sqrt(d) scaling", _attention_with(scale_of=lambda q, k: 1.0),
                "divide the scores Q K^T by sqrt(d), d = q.shape[-1], before the softmax: without it the "
                "softmax saturates as d grows."),
        Mistake("scores divided by d instead of sqrt(d)", _attention_with(scale_of=lambda q, k: 1 / q.shape[-1]),
                "the scale is 1 / sqrt(d): a dot product of d unit-variance terms has standard deviation sqrt(d)."),
        Mistake("scores divided by sqrt(number of keys) instead of sqrt(d)",
                _attention_with(scale_of=lambda q, k: 1 / math.sqrt(k.shape[-2])),
                "d is the feature size, q.shape[-1], not the number of positions."),
        Mistake("softmax over the queries (dim=-2) instead of over the keys", _attention_with(softmax_dim=-2),
                "each query's weights over the keys must sum to 1: torch.softmax(scores, dim=-1)."),
    ], hint="weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1); return weights @ v")


# ---------------------------------------------------------------------------- conv_output_size

_SIZE_FIXED = [  # a stride-2 3x3 downsample on 16, 15 and 7 pixels, a 1x1 and a 4x4 / stride 2 / pad 1 on 8
    {"size": 16, "kernel": 3, "stride": 2, "padding": 1}, {"size": 15, "kernel": 3, "stride": 2, "padding": 1},
    {"size": 7, "kernel": 3, "stride": 2, "padding": 0}, {"size": 8, "kernel": 1, "stride": 1, "padding": 0},
    {"size": 8, "kernel": 4, "stride": 2, "padding": 1}, {"size": 9, "kernel": 2, "stride": 3, "padding": 2},
    {"size": 32, "kernel": 5, "stride": 1, "padding": 2}, {"size": 10, "kernel": 3, "stride": 3, "padding": 0},
]


def _conv_output_size(size, kernel, stride, padding):
    # n_out = floor((n + 2p - k) / s) + 1
    return (size + 2 * padding - kernel) // stride + 1


def conv_output_size(learner) -> None:
    """Check ``learner(size, kernel, stride, padding)``: the output side floor((n + 2p - k) / s) + 1, an int."""
    __tracebackhide__ = True
    compare(learner, _conv_output_size, _SIZE_FIXED, name="conv_output_size", mistakes=[
        Mistake("the + 1 left out", lambda size, kernel, stride, padding: (size + 2 * padding - kernel) // stride,
                "the kernel fits at position 0 too: count the positions, floor((n + 2p - k) / s) + 1."),
        Mistake("padding counted on one side only", lambda size, kernel, stride, padding:
                (size + padding - kernel) // stride + 1,
                "PyTorch pads both sides of the image: n + 2p."),
        Mistake("rounded up instead of down", lambda size, kernel, stride, padding:
                math.ceil((size + 2 * padding - kernel) / stride) + 1,
                "a kernel that would stick out past the padding is not applied: use floor division, //."),
        Mistake("size divided by the stride, kernel and padding ignored", lambda size, kernel, stride, padding:
                size // stride,
                "n / s is right only for some kernels and paddings (3x3, padding 1, even n): use "
                "floor((n + 2p - k) / s) + 1."),
    ], hint="return (size + 2 * padding - kernel) // stride + 1")


# ---------------------------------------------------------------------------- group_norm

def _norm_case(generator: torch.Generator) -> dict:
    groups = int(torch.randint(2, 4, (), generator=generator))
    per_group = int(torch.randint(2, 4, (), generator=generator))
    B, H, W = int(torch.randint(2, 4, (), generator=generator)), 3, int(torch.randint(2, 4, (), generator=generator))
    shift = torch.randn(1, groups * per_group, 1, 1, generator=generator) * 2  # channels with different means
    x = torch.randn(B, groups * per_group, H, W, generator=generator) * 1.5 + shift
    return {"x": x, "groups": groups, "eps": 1e-5}


def _normalise(x, dims, eps, unbiased=False):
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=unbiased)
    # x_hat = (x - mu) / sqrt(sigma^2 + eps)
    return (x - mean) / torch.sqrt(var + eps)


def _group_norm_with(unbiased=False):
    def norm(x, groups, eps):
        B, C, H, W = x.shape
        g = x.reshape(B, groups, C // groups, H, W)  # (B, G, C/G, H, W)
        return _normalise(g, (2, 3, 4), eps, unbiased).reshape(B, C, H, W)
    return norm


def group_norm(learner) -> None:
    """Check ``learner(x, groups, eps)``: GroupNorm without the affine part, x (B, C, H, W) -> (B, C, H, W)."""
    __tracebackhide__ = True
    compare(learner, lambda x, groups, eps: F.group_norm(x, groups, eps=eps), _norm_case, name="group_norm",
            atol=1e-4, mistakes=[
        Mistake("statistics per channel (InstanceNorm)", lambda x, groups, eps: _normalise(x, (2, 3), eps),
                "a group holds C / groups channels: reshape to (B, groups, C // groups, H, W) and take the "
                "mean and variance over the last three axes."),
        Mistake("statistics over all channels of a sample (LayerNorm, groups = 1)",
                lambda x, groups, eps: _normalise(x, (1, 2, 3), eps),
                "use `groups` groups of C // groups channels each, not one group of all channels."),
        Mistake("statistics over the batch too (BatchNorm-like)",
                lambda x, groups, eps: _normalise(x.reshape(x.shape[0], groups, -1), (0, 2), eps).reshape(x.shape),
                "each sample is normalised on its own: never average over the batch axis."),
        Mistake("the unbiased variance (divided by n - 1)", _group_norm_with(unbiased=True),
                "GroupNorm uses the biased variance, the mean of squared deviations: var(..., unbiased=False)."),
    ], hint="B, C, H, W = x.shape; g = x.reshape(B, groups, C // groups, H, W); mean and var (unbiased=False) "
            "over dims (2, 3, 4) with keepdim=True; return ((g - mean) / (var + eps).sqrt()).reshape(B, C, H, W)")
