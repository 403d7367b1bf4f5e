"""Building blocks of the diffusion U-Net: time embedding, ResBlock, resampling, attention.

The denoiser of Ho et al. (2020) is a PixelCNN++-style U-Net: residual blocks (He et al. 2016)
with GroupNorm (Wu & He 2018) whose features are shifted, channel by channel, by a projection
of the sinusoidal timestep embedding; self-attention (Vaswani et al. 2017) over the spatial
positions of the coarser feature maps; stride-2 convolutions down and nearest-neighbour
upsampling plus a convolution up. Oktay et al. (2018, "Attention U-Net") add attention gates:
the coarser decoder feature decides, pixel by pixel, how much of each skip connection to let
through. Cross-attention takes its keys and values from a context sequence (text tokens in
latent diffusion, Rombach et al. 2022) instead of from the image itself.

Every block maps NCHW to NCHW; ``emb`` is the (B, emb_dim) time (+ class) embedding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn



def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of integer timesteps: (B,) -> (B, dim), [cos | sin] halves.

    Frequencies are geometric, omega_k = max_period^(-k / (dim/2)), k = 0 ... dim/2 - 1; an odd
    ``dim`` gets a zero last column. Equals diffusers' ``get_timestep_embedding(t, dim,
    flip_sin_to_cos=True, downscale_freq_shift=0)``.
    """
    half = dim // 2
    # omega_k = exp(-ln(max_period) k / half)
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (B, 2 half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))  # (B, dim)
    return emb

__all__ = ["timestep_embedding", "attention", "ResBlock", "Downsample", "Upsample",
           "SelfAttention", "CrossAttention", "AttentionGate"]


def _check_groups(ch: int, groups: int, name: str = "ch") -> None:
    if groups < 1 or ch % groups:
        raise ValueError(f"{name}={ch} must be a multiple of groups={groups} (GroupNorm splits channels into groups)")


class ResBlock(nn.Module):
    """A residual block whose features are shifted by the time (+ class) embedding.

    h = conv(SiLU(GN(x))); h = h + W e (a per-channel shift, as in DDPM; not scale-shift);
    h = conv(dropout(SiLU(GN(h)))); out = skip(x) + h, skip a 1x1 conv when channels change.
    (B, in_ch, H, W), (B, emb_dim) -> (B, out_ch, H, W).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int = 8, dropout: float = 0.0):
        super().__init__()
        _check_groups(in_ch, groups, "in_ch")
        _check_groups(out_ch, groups, "out_ch")
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out_ch, H, W)
        # h <- h + W SiLU(e): one shift per channel, broadcast over the pixels
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]  # (B, out_ch, H, W)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h  # (B, out_ch, H, W)


class Downsample(nn.Module):
    """A stride-2 3x3 convolution: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        return self.conv(x)


def attention(q: Tensor, k: Tensor, v: Tensor, manual: bool = False) -> Tensor:
    """Scaled dot-product attention, q (B, heads, N, d), k and v (B, heads, M, d) -> (B, heads, N, d).

    ``manual=True`` spells out the maths; otherwise PyTorch's fused
    ``F.scaled_dot_product_attention`` computes the same thing with less memory.
    """
    if not manual:
        return F.scaled_dot_product_attention(q, k, v)
    # A = softmax(Q K^T / sqrt(d)): row n says how much position n looks at each position m
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)  # (B, heads, N, M)
    # out = A V
    return weights @ v  # (B, heads, N, d)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual.

    x + W_o Attn(Q, K, V), with Q, K, V = linear maps of the GroupNorm'd pixels seen as H*W
    tokens of C features. (B, C, H, W) -> (B, C, H, W). Set ``manual`` to use the readable
    softmax(QK^T / sqrt(d)) V path instead of ``F.scaled_dot_product_attention``.
    """

    def __init__(self, ch: int, heads: int = 4, groups: int = 8, manual: bool = False):
        super().__init__()
        if heads < 1 or ch % heads:
            raise ValueError(f"ch={ch} must be a multiple of heads={heads}")
        _check_groups(ch, groups)
        self.heads, self.manual = heads, manual
        self.norm = nn.GroupNorm(groups, ch)
        self.to_q = nn.Linear(ch, ch, bias=False)
        self.to_k = nn.Linear(ch, ch, bias=False)
        self.to_v = nn.Linear(ch, ch, bias=False)
        self.to_out = nn.Linear(ch, ch)

    def _split_heads(self, h: Tensor) -> Tensor:
        B, N, C = h.shape
        return h.reshape(B, N, self.heads, C // self.heads).transpose(1, 2)  # (B, heads, N, C/heads)

    def _attend(self, x: Tensor, context: Tensor | None) -> Tensor:
        """Queries from x; keys and values from ``context`` (B, M, C_ctx), or from x when None."""
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        source = tokens if context is None else context  # (B, M, C or C_ctx)
        q = self._split_heads(self.to_q(tokens))  # (B, heads, HW, d)
        k = self._split_heads(self.to_k(source))  # (B, heads, M, d)
        v = self._split_heads(self.to_v(source))  # (B, heads, M, d)
        out = attention(q, k, v, self.manual).transpose(1, 2).reshape(B, H * W, C)  # (B, HW, C)
        out = self.to_out(out).transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + out

    def forward(self, x: Tensor) -> Tensor:
        return self._attend(x, None)


class CrossAttention(SelfAttention):
    """Attention whose queries come from the image and keys / values from a context sequence.

    x + W_o Attn(Q = W_q GN(x), K = W_k c, V = W_v c) with c (B, L, context_dim), e.g. text
    tokens. (B, C, H, W), (B, L, context_dim) -> (B, C, H, W). A plain layer: lesson 11 builds
    the full spatial transformer (self-attention, cross-attention, feed-forward).
    """

    def __init__(self, ch: int, context_dim: int, heads: int = 4, groups: int = 8, manual: bool = False):
        super().__init__(ch, heads, groups, manual)
        self.to_k = nn.Linear(context_dim, ch, bias=False)
        self.to_v = nn.Linear(context_dim, ch, bias=False)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        return self._attend(x, context)


class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection (Oktay et al. 2018, eq. 1-2).

    The gating signal g is the coarser decoder feature; it is resampled (nearest) to the skip's
    size. alpha = sigmoid(psi^T ReLU(W_x x + W_g g + b_g) + b_psi) is a (B, 1, H, W) mask in
    [0, 1] and the gate returns alpha * x. (B, skip_ch, H, W), (B, gate_ch, H', W') ->
    (B, skip_ch, H, W).
    """

    def __init__(self, skip_ch: int, gate_ch: int, inter_ch: int | None = None):
        super().__init__()
        inter_ch = inter_ch or max(skip_ch // 2, 1)
        self.W_x = nn.Conv2d(skip_ch, inter_ch, 1, bias=False)
        self.W_g = nn.Conv2d(gate_ch, inter_ch, 1)
        self.psi = nn.Conv2d(inter_ch, 1, 1)

    def mask(self, x: Tensor, g: Tensor) -> Tensor:
        """The attention coefficients alpha in [0, 1], one per skip pixel: (B, 1, H, W)."""
        g = F.interpolate(self.W_g(g), size=x.shape[-2:], mode="nearest")  # (B, inter, H, W)
        # alpha = sigmoid(psi^T ReLU(W_x x + W_g g))
        return torch.sigmoid(self.psi(F.relu(self.W_x(x) + g)))  # (B, 1, H, W)

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        return x * self.mask(x, g)  # (B, skip_ch, H, W)
