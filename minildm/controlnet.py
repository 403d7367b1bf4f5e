"""ControlNet: spatial control of a locked diffusion U-Net (Zhang, Rao & Agrawala 2023).

A trained U-Net F(x; Theta) knows how to denoise; we want it to also follow a condition image c
(an edge map, an object mask) without forgetting what it knows. ControlNet locks Theta and
clones the U-Net's encoder half into a trainable copy Theta_c that sees the condition. The copy
talks to the locked model only through *zero convolutions* Z(.; Theta_z), 1x1 convolutions
whose weight and bias start at 0 (the paper's eq. 2, with F(x; Theta) the locked network):

    y_c = F(x; Theta) + Z(F(x + Z(c; Theta_z1); Theta_c); Theta_z2)

At initialisation both Z output exactly 0, so y_c = F(x; Theta): training starts from the
locked model's behaviour, with no harmful noise injected. Yet training moves them: for
y = W x + b with W = 0, dy/dW = x != 0, while dy/dx = W = 0, so the first step updates W (and
b) alone; once W != 0 the gradient reaches the copy, one zero convolution deeper each step.

Here, as in diffusers (``ControlNetModel``): the condition, at the image's resolution, is
encoded by a small stride-2 conv stack (the paper's tiny network E(.), our ``hint``) down to
the U-Net's input resolution (a latent is ``factor`` times smaller than its image); the
stack's last convolution is Z(.; Theta_z1) and its output is added to the copy's ``conv_in``
features. One zero 1x1 convolution per skip (our U-Net keeps one skip per level) and one after
the middle block give the residuals that ``UNet.forward(..., down_residuals, mid_residual)``
adds to the locked model's skips and middle output, times a control ``scale``.

    controlnet = ControlNet.from_unet(unet, condition_channels=1, factor=4)   # copies the encoder
    unet.requires_grad_(False)                                                # lock Theta
    down, mid = controlnet(z_t, t, edges, context=text)                       # residuals, (B, C_k, H_k, W_k)
    eps = unet(z_t, t, context=text, down_residuals=down, mid_residual=mid)   # y_c
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from minildm import nn as blocks
from minildm.nn import timestep_embedding
from minildm.unet import UNet, _apply

# the U-Net's encoder half, by attribute name: the trainable copy holds the same modules
ENCODER_PARTS = ("time_mlp", "class_emb", "conv_in", "down", "downsample", "mid")

Residuals = tuple[list[Tensor], Tensor]  # (one residual per skip, the middle block's residual)


def zero_conv(in_ch: int, out_ch: int, kernel_size: int = 1) -> nn.Conv2d:
    """A convolution whose weight and bias start at exactly 0: Z(x) = 0 for every x, until trained."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def hint_encoder(condition_channels: int, out_channels: int, factor: int = 1,
                 hint_width: int = 16) -> nn.Sequential:
    """E(c): a condition image (B, condition_channels, factor H, factor W) -> features (B, out_channels, H, W).

    A 3x3 convolution to ``hint_width`` channels, then log2(factor) stages of [3x3 conv, 3x3 stride-2
    conv doubling the channels], each followed by SiLU (diffusers' ``ControlNetConditioningEmbedding``;
    the paper uses 16, 32, 64, 128 channels to go from 512x512 images to 64x64 latents), then the
    zero convolution Z(.; Theta_z1), so a fresh encoder outputs exactly 0.
    """
    for name, value in (("condition_channels", condition_channels), ("out_channels", out_channels),
                        ("factor", factor), ("hint_width", hint_width)):
        _check_positive_int(name, value)
    if factor & (factor - 1):
        raise ValueError(f"factor (condition size / U-Net input size) must be a power of 2, got {factor}")
    width = hint_width
    layers: list[nn.Module] = [nn.Conv2d(condition_channels, width, 3, padding=1), nn.SiLU()]
    for _ in range(int(factor).bit_length() - 1):  # log2(factor) halvings
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
                   nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU()]  # (B, 2 width, H/2, W/2)
        width *= 2
    layers.append(zero_conv(width, out_channels, 3))
    return nn.Sequential(*layers)


def unet_config_of(unet: UNet) -> dict:
    """The ``UNet`` arguments that shape its encoder half, read back from its modules (a JSON-able dict)."""
    if not isinstance(unet, UNet):
        raise TypeError(f"unet must be a minildm.unet.UNet, got {type(unet).__name__}")
    attention = (blocks.SelfAttention, blocks.SpatialTransformer)
    mid_attention = unet.mid[1]
    heads = (mid_attention.heads if isinstance(mid_attention, blocks.SelfAttention)
             else mid_attention.transformer_blocks[0].attn1.heads)
    return {"in_channels": unet.in_channels, "base": unet.base, "mults": list(unet.mults),
            "attn_levels": [k for k, layers in enumerate(unet.down) if any(isinstance(m, attention) for m in layers)],
            "num_res_blocks": sum(isinstance(m, blocks.ResBlock) for m in unet.down[0]),
            "num_classes": unet.num_classes, "context_dim": unet.context_dim,
            "dropout": unet.mid[0].dropout.p, "heads": heads, "groups": unet.mid[0].norm1.num_groups}


class ControlNet(nn.Module):
    """The trainable copy of a U-Net's encoder, fed with a condition image, with zero-convolution outputs.

    ``unet_config`` holds the ``UNet`` arguments of the model to control (``unet_config_of(unet)``
    reads them back); ``condition_channels`` the condition's channels (1 for an edge map or a
    mask); ``factor`` = condition size / U-Net input size, a power of 2 (4 for the shapes LDM's
    32x32 images and 8x8 latents, 1 in pixel space); ``hint_width`` the hint encoder's first width.
    Every argument is JSON-able and ``self.config`` holds them all, so ``ControlNet(**config)``
    rebuilds the architecture. A fresh ControlNet has random copy weights; ``from_unet`` copies a
    trained U-Net's.

    forward ``(x (B, in_channels, H, W), t, condition (B, condition_channels, factor H, factor W),
    y, context, scale, guess_mode) -> (down residuals, mid residual)``: item k of the list is
    shaped like the U-Net's skip k, (B, base mults[k], H / 2^k, W / 2^k), the last like its
    middle output. Give them to ``UNet.forward(..., down_residuals=, mid_residual=)``.
    """

    def __init__(self, unet_config: dict, condition_channels: int = 1, factor: int = 1, hint_width: int = 16):
        super().__init__()
        if not isinstance(unet_config, dict):
            raise TypeError(f"unet_config must be a dict of UNet arguments, got {type(unet_config).__name__}")
        self.config = {"unet_config": dict(unet_config), "condition_channels": condition_channels,
                       "factor": factor, "hint_width": hint_width}
        template = UNet(**unet_config)
        # Theta_c: the U-Net's encoder half, same modules and names, so from_unet copies them one to one
        for name in ENCODER_PARTS:
            setattr(self, name, getattr(template, name))
        self.in_channels, self.base, self.mults = template.in_channels, template.base, template.mults
        self.num_classes, self.context_dim = template.num_classes, template.context_dim
        self.condition_channels, self.factor = condition_channels, factor
        # E(c) ending in Z(.; Theta_z1), added to conv_in's output
        self.hint = hint_encoder(condition_channels, self.base, factor, hint_width)  # validates all three
        # Z(.; Theta_z2): one per skip, one for the middle block
        widths = [self.base * m for m in self.mults]
        self.zero_convs = nn.ModuleList(zero_conv(w, w) for w in widths)
        self.zero_mid = zero_conv(widths[-1], widths[-1])

    @classmethod
    def from_unet(cls, unet: UNet, condition_channels: int = 1, factor: int = 1, hint_width: int = 16) -> ControlNet:
        """A ControlNet for ``unet`` whose trainable copy starts from ``unet``'s encoder weights (on its device)."""
        controlnet = cls(unet_config_of(unet), condition_channels, factor, hint_width)
        for name in ENCODER_PARTS:
            if getattr(unet, name) is not None:
                getattr(controlnet, name).load_state_dict(getattr(unet, name).state_dict())
        return controlnet.to(unet.conv_in.weight.device)

    def zero_convolutions(self) -> list[nn.Conv2d]:
        """Every Z(.; Theta_z): the hint encoder's last convolution, one per skip, the middle block's."""
        return [self.hint[-1], *self.zero_convs, self.zero_mid]

    def _check_condition(self, condition: Tensor, x: Tensor) -> None:
        B, _, H, W = x.shape
        expected = (B, self.condition_channels, self.factor * H, self.factor * W)
        if not isinstance(condition, Tensor) or tuple(condition.shape) != expected:
            got = tuple(condition.shape) if isinstance(condition, Tensor) else type(condition).__name__
            raise ValueError(f"condition must have shape {expected} (condition_channels={self.condition_channels}, "
                             f"{self.factor} times x's {H}x{W}), got {got}")

    def forward(self, x: Tensor, t, condition: Tensor, y: Tensor | None = None, context: Tensor | None = None,
                scale: float = 1.0, guess_mode: bool = False) -> Residuals:
        t = UNet._check_inputs(self, x, t, y, context)  # the copy takes the locked U-Net's inputs
        self._check_condition(condition, x)
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"scale must be a real number, got {scale!r}")
        # e = MLP(sinusoid(t)) [+ E_y], with the copy's own weights
        emb = self.time_mlp(timestep_embedding(t, self.base).to(x.dtype))  # (B, 4 base)
        if self.class_emb is not None:
            emb = emb + self.class_emb(y)  # (B, 4 base)
        # x + Z(c; Theta_z1): the condition joins the input features
        h = self.conv_in(x) + self.hint(condition)  # (B, base, H, W)
        down = []
        for k, layers in enumerate(self.down):
            h = _apply(layers, h, emb, context)  # (B, base mults[k], H / 2^k, W / 2^k)
            # Z(F_k(x + Z(c; Theta_z1); Theta_c); Theta_z2): the residual for skip k
            down.append(self.zero_convs[k](h))
            if k < len(self.downsample):
                h = self.downsample[k](h)  # (B, base mults[k], H / 2^(k+1), W / 2^(k+1))
        h = _apply(self.mid, h, emb, context)  # (B, base mults[-1], H / 2^(L-1), W / 2^(L-1))
        mid = self.zero_mid(h)
        return scale_residuals((down, mid), scale, guess_mode)


def scale_residuals(residuals: Residuals, scale: float = 1.0, guess_mode: bool = False) -> Residuals:
    """Multiply every residual by the control ``scale``; in guess mode also by 10^(-1) ... 10^0.

    Guess mode (diffusers' ``guess_mode``, for sampling with no prompt) weights the n = skips + 1
    residuals by ``torch.logspace(-1, 0, n)``: 0.1 on the shallowest, full-resolution skip, rising
    geometrically to 1.0 on the middle block: the deep, coarse residuals at full strength, the
    shallow, fine ones damped.
    """
    down, mid = residuals
    if guess_mode:
        # w_k = scale * 10^(-1 + k / (n - 1)), k = 0 (skip 0) ... n - 1 (the middle block)
        weights = (scale * torch.logspace(-1, 0, len(down) + 1)).tolist()
    else:
        weights = [scale] * (len(down) + 1)
    return [r * w for r, w in zip(down, weights)], mid * weights[-1]


def combine(outputs: Sequence[Residuals]) -> Residuals:
    """Several ControlNets' (down, mid) outputs, each already times its own scale, summed.

    Residuals add because each only adds to the locked U-Net's features: sum_i s_i Z_i(...)
    (diffusers' ``MultiControlNetModel``; the paper composes conditions so, with no further weighting).
    """
    if not outputs:
        raise ValueError("combine needs at least one ControlNet output, got none")
    total_down, total_mid = outputs[0]
    for i, (down, mid) in enumerate(outputs[1:], start=1):
        shapes = [tuple(r.shape) for r in down] + [tuple(mid.shape)]
        expected = [tuple(r.shape) for r in total_down] + [tuple(total_mid.shape)]
        if shapes != expected:
            raise ValueError(f"outputs[{i}] has residual shapes {shapes}, but outputs[0] has {expected}: "
                             f"ControlNets combined must control the same U-Net")
        total_down = [a + b for a, b in zip(total_down, down)]
        total_mid = total_mid + mid
    return total_down, total_mid


class MultiControlNet(nn.Module):
    """Several ControlNets on one U-Net, one condition each: their scaled residuals summed (``combine``).

    forward ``(x, t, conditions [one per net], y, context, scales [one per net, or one float for
    all], guess_mode) -> (down residuals, mid residual)``.
    """

    def __init__(self, nets: Sequence[ControlNet]):
        super().__init__()
        if not nets or not all(isinstance(net, ControlNet) for net in nets):
            raise ValueError(f"nets must be a non-empty list of ControlNets, got {nets!r:.80}")
        self.nets = nn.ModuleList(nets)

    def forward(self, x: Tensor, t, conditions: Sequence[Tensor], y: Tensor | None = None,
                context: Tensor | None = None, scales: float | Sequence[float] = 1.0,
                guess_mode: bool = False) -> Residuals:
        n = len(self.nets)
        if isinstance(scales, numbers.Real):
            scales = [scales] * n
        if not isinstance(conditions, Sequence) or len(conditions) != n:
            raise ValueError(f"conditions must be a list of {n} tensors, one per ControlNet, got {conditions!r:.80}")
        if not isinstance(scales, Sequence) or len(scales) != n:
            raise ValueError(f"scales must be a number or a list of {n}, one per ControlNet, got {scales!r}")
        return combine([net(x, t, c, y, context, s, guess_mode) for net, c, s in zip(self.nets, conditions, scales)])


class ControlledUNet(nn.Module):
    """A locked U-Net steered by a ControlNet (or a MultiControlNet): y_c, as one denoiser.

    forward ``(x, t, y=None, context=None, condition=None, scale=1.0, guess_mode=False)`` ->
    ``unet(x, t, y, context, down_residuals, mid_residual)``; ``condition`` (a list for a
    MultiControlNet, with ``scale`` a list or a float) rides in ``model_kwargs`` of
    ``diffusion.loss_simple`` and ``samplers.sample``; ``condition=None`` gives the plain U-Net
    (no control, e.g. for an unconditional branch). Locking is the caller's:
    ``controlled.unet.requires_grad_(False)``, then optimise ``controlled.controlnet.parameters()``.
    """

    def __init__(self, unet: UNet, controlnet: ControlNet | MultiControlNet):
        super().__init__()
        if not isinstance(unet, UNet):
            raise TypeError(f"unet must be a minildm.unet.UNet, got {type(unet).__name__}")
        if not isinstance(controlnet, (ControlNet, MultiControlNet)):
            raise TypeError(f"controlnet must be a ControlNet or a MultiControlNet, got {type(controlnet).__name__}")
        self.unet, self.controlnet = unet, controlnet

    def forward(self, x: Tensor, t, y: Tensor | None = None, context: Tensor | None = None, condition=None,
                scale: float | Sequence[float] = 1.0, guess_mode: bool = False) -> Tensor:
        if condition is None:
            return self.unet(x, t, y, context)
        down, mid = self.controlnet(x, t, condition, y, context, scale, guess_mode)
        # y_c = F(x; Theta) + Z(F(x + Z(c; Theta_z1); Theta_c); Theta_z2), added inside the locked U-Net
        return self.unet(x, t, y, context, down_residuals=down, mid_residual=mid)
