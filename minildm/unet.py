"""The diffusion U-Net: eps_theta(x_t, t[, y][, context]) for images.

Ronneberger et al. (2015) built the U-Net for segmentation: an encoder that halves the
resolution level by level, a decoder that doubles it back, and skip connections that hand each
decoder level the encoder's features at the same resolution. Ho et al. (2020) made it the
denoiser of DDPM by adding the timestep to every residual block and self-attention at the
coarse levels. Here each level keeps one skip (the output of its residual blocks), so the shape
table stays short; attention gates (Oktay et al. 2018) can filter those skips; class labels add
a learned embedding to the time embedding (index ``num_classes`` is the null class for
classifier-free guidance, Ho & Salimans 2022); ``context_dim`` replaces every self-attention
with a spatial transformer (self-attention, cross-attention to a (B, L, context_dim) sequence
such as text tokens, feed-forward), as the latent diffusion U-Net does (Rombach et al. 2022).
A ControlNet (Zhang et al. 2023, ``minildm.controlnet``) steers a locked U-Net through
``down_residuals`` (one per skip) and ``mid_residual``, added where diffusers adds them: to the
skips the decoder receives, and to the middle block's output.

Layout, for ``mults=(1, 2, 2)`` and 32x32 inputs (C = base):

    conv_in                               (B, C, 32, 32)
    down 0: ResBlocks [+ attn] -> skip 0   (B, C, 32, 32)   Downsample -> (B, C, 16, 16)
    down 1: ResBlocks [+ attn] -> skip 1   (B, 2C, 16, 16)  Downsample -> (B, 2C, 8, 8)
    down 2: ResBlocks [+ attn] -> skip 2   (B, 2C, 8, 8)
    mid:    ResBlock, attn, ResBlock      (B, 2C, 8, 8)
    up 2:   cat(h, skip 2) -> ResBlocks    (B, 2C, 8, 8)    Upsample -> (B, 2C, 16, 16)
    up 1:   cat(h, skip 1) -> ResBlocks    (B, 2C, 16, 16)  Upsample -> (B, 2C, 32, 32)
    up 0:   cat(h, skip 0) -> ResBlocks    (B, C, 32, 32)
    out:    GN, SiLU, conv                (B, out_channels, 32, 32)
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minildm import nn as blocks
from minildm.nn import timestep_embedding


def _apply(layers: nn.ModuleList, h: Tensor, emb: Tensor, context: Tensor | None) -> Tensor:
    """Run a level's layers in order, handing each the input it needs."""
    for layer in layers:
        if isinstance(layer, blocks.ResBlock):
            h = layer(h, emb)
        elif isinstance(layer, blocks.SpatialTransformer):
            h = layer(h, context)
        else:
            h = layer(h)
    return h


def _add_residual(feature: Tensor, residual: Tensor, name: str) -> Tensor:
    """feature + residual, refusing a residual of another shape (broadcasting would hide the mistake)."""
    if not isinstance(residual, Tensor):
        raise ValueError(f"{name} must be a tensor of shape {tuple(feature.shape)}, got {type(residual).__name__}")
    if residual.shape != feature.shape:
        raise ValueError(f"{name} must have the shape of the feature it is added to, {tuple(feature.shape)}, "
                         f"got {tuple(residual.shape)}")
    return feature + residual


class UNet(nn.Module):
    """A time- (and optionally class- / context-) conditioned U-Net.

    ``mults[i]`` sets level i's width base * mults[i]; levels listed in ``attn_levels`` get
    self-attention after each residual block (the middle always has one); with ``context_dim``
    that attention is a ``SpatialTransformer`` (zero-initialised output, so the context has
    no effect until training moves it) instead. ``learned_range``
    doubles the output channels (the prediction, then v for the variance). The forward pass is
    ``(x (B, in_channels, H, W), t int | LongTensor[B], y LongTensor[B] | None,
    context (B, L, context_dim) | None) -> (B, out_channels, H, W)``; H and W must divide by
    2 ** (len(mults) - 1).
    """

    def __init__(self, in_channels: int = 3, out_channels: int | None = None, base: int = 64,
                 mults: Sequence[int] = (1, 2, 2), attn_levels: Sequence[int] = (1,),
                 num_res_blocks: int = 2, num_classes: int | None = None, learned_range: bool = False,
                 attention_gates: bool = False, context_dim: int | None = None, dropout: float = 0.0,
                 heads: int = 4, groups: int = 8):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("base", base), ("num_res_blocks", num_res_blocks),
                            ("heads", heads), ("groups", groups)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not mults or any(not isinstance(m, numbers.Integral) or m < 1 for m in mults):
            raise ValueError(f"mults must be a non-empty sequence of positive ints, got {mults!r}")
        if any(not 0 <= i < len(mults) for i in attn_levels):
            raise ValueError(f"attn_levels must index levels 0..{len(mults) - 1}, got {tuple(attn_levels)}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        if context_dim is not None and context_dim < 1:
            raise ValueError(f"context_dim must be a positive int or None, got {context_dim!r}")
        self.in_channels, self.base, self.mults = in_channels, base, tuple(mults)
        self.num_classes, self.context_dim = num_classes, context_dim
        self.out_channels = (out_channels or in_channels) * (2 if learned_range else 1)
        emb_dim = 4 * base
        widths = [base * m for m in self.mults]

        def attention_layer(ch: int) -> nn.Module:
            if context_dim is None:
                return blocks.SelfAttention(ch, heads, groups)
            return blocks.SpatialTransformer(ch, context_dim, heads, groups=groups, dropout=dropout)

        def level(in_ch: int, ch: int, attn: bool) -> nn.ModuleList:
            layers = []
            for j in range(num_res_blocks):
                layers.append(blocks.ResBlock(in_ch if j == 0 else ch, ch, emb_dim, groups, dropout))
                if attn:
                    layers.append(attention_layer(ch))
            return nn.ModuleList(layers)

        # e = MLP(sinusoid(t)) [+ E_y]
        self.time_mlp = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = None if num_classes is None else nn.Embedding(num_classes + 1, emb_dim)
        self.conv_in = nn.Conv2d(in_channels, base, 3, padding=1)
        ins = [base] + widths[:-1]
        self.down = nn.ModuleList(level(i, w, k in attn_levels) for k, (i, w) in enumerate(zip(ins, widths)))
        self.downsample = nn.ModuleList(blocks.Downsample(w) for w in widths[:-1])
        top = widths[-1]
        self.mid = nn.ModuleList([blocks.ResBlock(top, top, emb_dim, groups, dropout), attention_layer(top),
                                  blocks.ResBlock(top, top, emb_dim, groups, dropout)])
        # level k's decoder sees the decoder output of level k+1 (or the middle) next to skip k
        coarser = widths[1:] + [top]
        self.upsample = nn.ModuleList(blocks.Upsample(c) for c in coarser[:-1])
        self.gates = None if not attention_gates else nn.ModuleList(
            blocks.AttentionGate(w, c) for w, c in zip(widths, coarser))
        self.up = nn.ModuleList(level(c + w, w, k in attn_levels) for k, (c, w) in enumerate(zip(coarser, widths)))
        self.norm_out = nn.GroupNorm(groups, base * self.mults[0])
        self.conv_out = nn.Conv2d(base * self.mults[0], self.out_channels, 3, padding=1)

    def _check_inputs(self, x: Tensor, t, y, context) -> Tensor:
        """Validate the inputs; return t as a LongTensor[B]."""
        factor = 2 ** (len(self.mults) - 1)
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"x's height and width must divide by 2**(len(mults)-1) = {factor}, "
                             f"got {tuple(x.shape[2:])}")
        B = x.shape[0]
        if isinstance(t, numbers.Integral) and not isinstance(t, bool):
            t = torch.tensor(int(t))
        if not isinstance(t, Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool or t.shape not in ((), (B,)):
            raise TypeError(f"t must be an int or a LongTensor of shape [{B}], got {t!r:.60}")
        if self.num_classes is None and y is not None:
            raise ValueError("y was given but this UNet is unconditional (num_classes=None)")
        if self.num_classes is not None:
            if y is None:
                raise ValueError(f"y is required: this UNet is class-conditional (num_classes={self.num_classes}); "
                                 f"pass y = {self.num_classes} (the null class) for unconditional samples")
            if not isinstance(y, Tensor) or y.dtype.is_floating_point or y.shape != (B,):
                raise TypeError(f"y must be a LongTensor of shape [{B}], got {y!r:.60}")
            if ((y < 0) | (y > self.num_classes)).any():
                raise ValueError(f"y must lie in [0, {self.num_classes}] ({self.num_classes} = null class), "
                                 f"got {y.min().item()}..{y.max().item()}")
        if self.context_dim is None and context is not None:
            raise ValueError("context was given but this UNet has no cross-attention (context_dim=None)")
        if self.context_dim is not None and (not isinstance(context, Tensor) or context.dim() != 3
                                             or context.shape[0] != B or context.shape[2] != self.context_dim):
            got = tuple(context.shape) if isinstance(context, Tensor) else context
            raise ValueError(f"context must have shape ({B}, L, {self.context_dim}), got {got}")
        return t.to(x.device).expand(B)

    def _check_residuals(self, down_residuals) -> None:
        """A ControlNet gives one residual per skip (each tensor's shape is checked where it is added)."""
        if down_residuals is None:
            return
        if isinstance(down_residuals, Tensor) or not isinstance(down_residuals, Sequence):
            raise ValueError(f"down_residuals must be a list of {len(self.down)} tensors, one per skip, "
                             f"got {type(down_residuals).__name__}")
        if len(down_residuals) != len(self.down):
            raise ValueError(f"down_residuals must hold one tensor per skip: {len(self.down)} "
                             f"(len(mults) = {len(self.mults)}), got {len(down_residuals)}")

    def forward(self, x: Tensor, t, y: Tensor | None = None, context: Tensor | None = None,
                down_residuals: Sequence[Tensor] | None = None, mid_residual: Tensor | None = None) -> Tensor:
        t = self._check_inputs(x, t, y, context)
        self._check_residuals(down_residuals)
        # e = MLP(sinusoid(t)) [+ E_y]
        emb = self.time_mlp(timestep_embedding(t, self.base).to(x.dtype))  # (B, 4 base)
        if self.class_emb is not None:
            emb = emb + self.class_emb(y)  # (B, 4 base)
        h = self.conv_in(x)  # (B, base, H, W)
        skips = []
        for k, layers in enumerate(self.down):
            h = _apply(layers, h, emb, context)  # (B, base mults[k], H / 2^k, W / 2^k)
            skips.append(h)
            if k < len(self.downsample):
                h = self.downsample[k](h)  # (B, base mults[k], H / 2^(k+1), W / 2^(k+1))
        if down_residuals is not None:
            # skip_k <- skip_k + r_k: the control reaches the decoder, not the encoder's own path down
            skips = [_add_residual(s, r, f"down_residuals[{k}]") for k, (s, r) in enumerate(zip(skips, down_residuals))]
        h = _apply(self.mid, h, emb, context)  # (B, base mults[-1], H / 2^(L-1), W / 2^(L-1))
        if mid_residual is not None:
            h = _add_residual(h, mid_residual, "mid_residual")
        for k in reversed(range(len(self.up))):
            g = h  # the coarser decoder feature: the gating signal
            if k < len(self.upsample):
                h = self.upsample[k](h)  # (B, base mults[k+1], H / 2^k, W / 2^k)
            skip = skips.pop()
            if self.gates is not None:
                # skip <- alpha * skip, alpha = sigmoid(psi^T ReLU(W_x skip + W_g g))
                skip = self.gates[k](skip, g)
            h = torch.cat([h, skip], dim=1)  # (B, base (mults[k+1] + mults[k]), H / 2^k, W / 2^k)
            h = _apply(self.up[k], h, emb, context)  # (B, base mults[k], H / 2^k, W / 2^k)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out_channels, H, W)

    def shapes(self, x_size: int | tuple[int, int]) -> list[tuple[str, tuple[int, ...]]]:
        """(name, output shape) of every block, in call order, for one image of size ``x_size``."""
        H, W = (x_size, x_size) if isinstance(x_size, numbers.Integral) else x_size
        device = self.conv_in.weight.device
        kinds = (blocks.ResBlock, blocks.SelfAttention, blocks.SpatialTransformer, blocks.Downsample, blocks.Upsample,
                 blocks.AttentionGate)
        named = [(n, m) for n, m in self.named_modules() if n in ("conv_in", "conv_out") or isinstance(m, kinds)]
        rows: list[tuple[str, tuple[int, ...]]] = []
        hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: rows.append((n, tuple(out.shape))))
                 for n, m in named]
        y = None if self.num_classes is None else torch.full((1,), self.num_classes, device=device)
        context = None if self.context_dim is None else torch.zeros(1, 1, self.context_dim, device=device)
        try:
            with torch.no_grad():
                self(torch.zeros(1, self.in_channels, H, W, device=device), 0, y, context)
        finally:
            for hook in hooks:
                hook.remove()
        return rows

    def summary(self, x_size: int | tuple[int, int] = 32) -> str:
        """A table of every block's output shape and parameter count, and the total."""
        params = {name: sum(p.numel() for p in m.parameters()) for name, m in self.named_modules()}
        lines = [f"{'block':<24}{'output shape':<24}{'params':>10}"]
        lines += [f"{name:<24}{str(shape):<24}{params[name]:>10,}" for name, shape in self.shapes(x_size)]
        lines.append(f"{'total':<48}{sum(p.numel() for p in self.parameters()):>10,}")
        return "\n".join(lines)
