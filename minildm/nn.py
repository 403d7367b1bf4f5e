"""Building blocks of the diffusion U-Net: time embedding, ResBlock, resampling, attention.

The denoiser of Ho et al. (2020) is a PixelCNN++-style U-Net: residual blocks (He et al. 2016)
with GroupNorm (Wu & He 2018) whose features are shifted, channel by channel, by a projection
of the sinusoidal timestep embedding; self-attention (Vaswani et al. 2017) over the spatial
positions of the coarser feature maps; stride-2 convolutions down and nearest-neighbour
upsampling plus a convolution up. Oktay et al. (2018, "Attention U-Net") add attention gates:
the coarser decoder feature decides, pixel by pixel, how much of each skip connection to let
through. Cross-attention takes its keys and values from a context sequence (text tokens in
latent diffusion, Rombach et al. 2022) instead of from the image itself.

The spatial transformer of latent diffusion (Rombach et al. 2022, Stable Diffusion) treats the
H*W pixels as tokens and runs transformer blocks over them: pre-LayerNorm self-attention,
cross-attention to the text, and a GEGLU feed-forward (Shazeer 2020), each with a residual.
Those token-level classes (``Attention``, ``GEGLU``, ``FeedForward``, ``BasicTransformerBlock``)
use diffusers' parameter names, so a diffusers state dict (or a LoRA file) loads as it is.

Every other block maps NCHW to NCHW; ``emb`` is the (B, emb_dim) time (+ class) embedding.
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

__all__ = ["timestep_embedding", "attention", "attention_weights", "ResBlock", "Downsample", "Upsample",
           "SelfAttention", "AttentionGate", "Attention", "GEGLU", "FeedForward",
           "BasicTransformerBlock", "SpatialTransformer"]


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


def attention_weights(q: Tensor, k: Tensor) -> Tensor:
    """The attention map A = softmax(Q K^T / sqrt(d)), q (B, heads, N, d), k (B, heads, M, d) -> (B, heads, N, M).

    Row n says how much query n looks at each key m; every row sums to 1 (Vaswani et al. 2017, eq. 1).
    """
    # A = softmax(Q K^T / sqrt(d))
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)  # (B, heads, N, M)


def attention(q: Tensor, k: Tensor, v: Tensor, manual: bool = False) -> Tensor:
    """Scaled dot-product attention, q (B, heads, N, d), k and v (B, heads, M, d) -> (B, heads, N, d).

    ``manual=True`` spells out the maths; otherwise PyTorch's fused
    ``F.scaled_dot_product_attention`` computes the same thing with less memory.
    """
    if not manual:
        return F.scaled_dot_product_attention(q, k, v)
    # out = softmax(Q K^T / sqrt(d)) V
    return attention_weights(q, k) @ v  # (B, heads, N, d)


def _split_heads(h: Tensor, heads: int) -> Tensor:
    """(B, N, heads d) -> (B, heads, N, d): each head attends with its own d features."""
    B, N, C = h.shape
    return h.reshape(B, N, heads, C // heads).transpose(1, 2)  # (B, heads, N, d)


def _merge_heads(h: Tensor) -> Tensor:
    """(B, heads, N, d) -> (B, N, heads d): the heads' outputs side by side."""
    B, heads, N, d = h.shape
    return h.transpose(1, 2).reshape(B, N, heads * d)  # (B, N, heads d)


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
        return _split_heads(h, self.heads)  # (B, heads, N, C/heads)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q = self._split_heads(self.to_q(tokens))  # (B, heads, HW, d)
        k = self._split_heads(self.to_k(tokens))  # (B, heads, HW, d)
        v = self._split_heads(self.to_v(tokens))  # (B, heads, HW, d)
        out = _merge_heads(attention(q, k, v, self.manual))  # (B, HW, C)
        out = self.to_out(out).transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + out


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


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _head_dim(dim: int, heads: int, dim_head: int | None, name: str) -> int:
    """``dim_head``, or ``dim / heads`` when it is None (which must then divide)."""
    _check_positive(heads=heads, dim_head=dim_head)
    if dim_head is None and dim % heads:
        raise ValueError(f"{name}={dim} must be a multiple of heads={heads} when dim_head is None")
    return dim // heads if dim_head is None else dim_head


class Attention(nn.Module):
    """Multi-head attention on token sequences, with diffusers' parameter names.

    out = W_o [head_1 | ... | head_h], head_i = softmax(Q_i K_i^T / sqrt(d)) V_i with Q = W_q x,
    K = W_k c, V = W_v c (Vaswani et al. 2017, eq. 1-2); c is ``context`` (cross-attention:
    text tokens in Rombach et al. 2022) or x itself when ``context`` is None (self-attention).
    No residual and no norm here: ``BasicTransformerBlock`` adds both. x (B, N, query_dim),
    context (B, M, context_dim) -> (B, N, query_dim).

    ``manual=True`` uses the readable softmax(QK^T / sqrt(d)) V instead of the fused kernel.
    ``store_maps=True`` also keeps the last attention weights, (B, heads, N, M), in ``self.maps``
    (detached; computed the manual way), so a lesson can draw where each query looked.
    Parameter names ``to_q``, ``to_k``, ``to_v`` (no bias), ``to_out.0`` are diffusers'.
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 4,
                 dim_head: int | None = None, dropout: float = 0.0, manual: bool = False):
        super().__init__()
        _check_positive(query_dim=query_dim, context_dim=context_dim)
        dim_head = _head_dim(query_dim, heads, dim_head, "query_dim")
        inner = heads * dim_head
        self.heads, self.manual, self.store_maps = heads, manual, False
        self.is_cross_attention = context_dim is not None
        self.maps: Tensor | None = None
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def _check_inputs(self, x: Tensor, context: Tensor | None) -> None:
        query_dim, source_dim = self.to_q.in_features, self.to_k.in_features
        if x.dim() != 3 or x.shape[-1] != query_dim:
            raise ValueError(f"x must have shape (B, N, {query_dim}), got {tuple(x.shape)}")
        if context is None and source_dim != query_dim:
            raise ValueError(f"context is required: keys and values take context_dim={source_dim} features, "
                             f"but x has {query_dim}")
        if context is not None and (context.dim() != 3 or context.shape[0] != x.shape[0]
                                    or context.shape[-1] != source_dim):
            raise ValueError(f"context must have shape ({x.shape[0]}, M, {source_dim}), got {tuple(context.shape)}")

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        self._check_inputs(x, context)
        source = x if context is None else context  # (B, M, C_src)
        q = _split_heads(self.to_q(x), self.heads)  # (B, heads, N, d)
        k = _split_heads(self.to_k(source), self.heads)  # (B, heads, M, d)
        v = _split_heads(self.to_v(source), self.heads)  # (B, heads, M, d)
        if self.store_maps:
            weights = attention_weights(q, k)  # (B, heads, N, M)
            self.maps = weights.detach()
            # out = A V
            out = weights @ v  # (B, heads, N, d)
        else:
            out = attention(q, k, v, self.manual)  # (B, heads, N, d)
        return self.to_out(_merge_heads(out))  # (B, N, query_dim)


class GEGLU(nn.Module):
    """A GELU-gated linear unit (Shazeer 2020, "GLU variants improve transformer").

    [h | g] = W x + b; out = h * GELU(g): the first half is the value, the second the gate, as in
    diffusers. (..., dim_in) -> (..., dim_out).
    """

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: Tensor) -> Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)  # (..., dim_out) each
        # GEGLU(x) = (x W + b) * GELU(x V + c)
        return h * F.gelu(gate)  # (..., dim_out)


class FeedForward(nn.Module):
    """The transformer's position-wise feed-forward: GEGLU up to ``mult * dim``, dropout, linear back.

    (..., dim) -> (..., dim). Keys ``net.0.proj`` and ``net.2`` are diffusers' ``FeedForward``.
    """

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        _check_positive(dim=dim, mult=mult)
        self.net = nn.Sequential(GEGLU(dim, mult * dim), nn.Dropout(dropout), nn.Linear(mult * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (..., dim)


class BasicTransformerBlock(nn.Module):
    """A pre-norm transformer block on tokens: self-attention, cross-attention, feed-forward.

    h = x + attn1(LN1(x));  h = h + attn2(LN2(h), context);  out = h + ff(LN3(h))
    (Vaswani et al. 2017 with the norm moved before each sublayer; the block of Rombach et al.
    2022 and Stable Diffusion). Without ``context_dim`` there is no attn2 (as in diffusers);
    with it, a missing context makes attn2 attend to the tokens themselves, which needs
    context_dim == dim. x (B, N, dim), context (B, L, context_dim) -> (B, N, dim).
    Submodule names match diffusers' ``BasicTransformerBlock``, so its state dict loads as is.
    """

    def __init__(self, dim: int, heads: int = 4, dim_head: int | None = None, context_dim: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, None, heads, dim_head, dropout)
        self.norm2 = None if context_dim is None else nn.LayerNorm(dim)
        self.attn2 = None if context_dim is None else Attention(dim, context_dim, heads, dim_head, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.attn2 is None and context is not None:
            raise ValueError("context was given but this block has no cross-attention (context_dim=None)")
        # h = x + SelfAttn(LN(x))
        h = x + self.attn1(self.norm1(x))  # (B, N, dim)
        if self.attn2 is not None:
            # h = h + CrossAttn(LN(h), c): queries from the tokens, keys and values from the context
            h = h + self.attn2(self.norm2(h), context)  # (B, N, dim)
        # out = h + FF(LN(h))
        return h + self.ff(self.norm3(h))  # (B, N, dim)


class SpatialTransformer(nn.Module):
    """Transformer blocks over the H*W pixels of a feature map (Rombach et al. 2022, Fig. 3).

    tokens = proj_in(GN(x)) as H*W tokens of heads * dim_head features; ``depth`` transformer
    blocks; out = x + proj_out(tokens). proj_in and proj_out are 1x1 convolutions (diffusers'
    ``Transformer2DModel`` default, ``use_linear_projection=False``); GroupNorm eps is 1e-6 as
    there. proj_out starts at zero, as in the LDM code, so a new block is the identity and a
    pretrained U-Net is unchanged until training moves it; diffusers initialises it randomly,
    which only matters before loading weights. x (B, ch, H, W), context (B, L, context_dim) ->
    (B, ch, H, W). Names match ``Transformer2DModel`` (norm, proj_in, transformer_blocks, proj_out).
    """

    def __init__(self, ch: int, context_dim: int | None = None, heads: int = 4, dim_head: int | None = None,
                 depth: int = 1, groups: int = 8, dropout: float = 0.0):
        super().__init__()
        _check_positive(ch=ch, depth=depth)
        _check_groups(ch, groups)
        dim_head = _head_dim(ch, heads, dim_head, "ch")
        inner = heads * dim_head
        self.norm = nn.GroupNorm(groups, ch, eps=1e-6)
        self.proj_in = nn.Conv2d(ch, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim, dropout) for _ in range(depth))
        self.proj_out = nn.Conv2d(inner, ch, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        ch = self.proj_in.in_channels
        if x.dim() != 4 or x.shape[1] != ch:
            raise ValueError(f"x must have shape (B, {ch}, H, W), got {tuple(x.shape)}")
        B, _, H, W = x.shape
        h = self.proj_in(self.norm(x))  # (B, inner, H, W)
        inner = h.shape[1]
        h = h.flatten(2).transpose(1, 2)  # (B, HW, inner): one token per pixel
        for block in self.transformer_blocks:
            h = block(h, context)  # (B, HW, inner)
        h = h.transpose(1, 2).reshape(B, inner, H, W)  # (B, inner, H, W)
        # out = x + proj_out(blocks(proj_in(GN(x))))
        return x + self.proj_out(h)  # (B, ch, H, W)
