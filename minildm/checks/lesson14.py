"""Checks for lesson 14 (ControlNet): zero-convolution gradients, adding control residuals, guess-mode weights, IoU.

A zero convolution (Zhang, Rao & Agrawala 2023, section 3.1) is a 1x1 convolution
y = W x + b with W = 0 and b = 0. Per pixel, for an upstream gradient g = dL/dy:

    dL/dW = sum over batch and pixels of g x^T      (C_out, C_in): not 0, since x != 0
    dL/db = sum over batch and pixels of g          (C_out,)
    dL/dx = W^T g = 0                               (B, C_in, H, W): nothing flows back yet

so the first optimiser step moves W and b alone. The control residuals r_k (one per skip, one
for the middle block) are added to the locked U-Net's features times the control scale s:
skip_k + s r_k, mid + s r_mid, the locked features themselves never scaled. Guess mode
(diffusers) multiplies residual k of n (the middle block last) by s 10^(-1 + k / (n - 1)):
torch.logspace(-1, 0, n), 0.1 on the shallowest skip up to 1 on the middle block. The lesson
scores control with the IoU |A & B| / |A | B| of two masks.

Inputs are drawn so that each slip moves the answer past the tolerance: batches of several
images (a mean over the batch is not a sum), C_out != C_in (a transposed weight gradient has
the wrong shape), scales away from 0 and 1, n from 3 to 6, masks that overlap in part with
different areas (IoU, recall and Dice all differ), and empty masks now and then.
"""

from __future__ import annotations

import torch

from .core import Mistake, compare

__all__ = ["zero_conv_gradients", "add_control", "guess_mode_weights", "mask_iou"]


# ---------------------------------------------------------------------------- zero_conv_gradients

def _gradients_case(generator: torch.Generator) -> dict:
    B, c_in, c_out = int(torch.randint(2, 4, (), generator=generator)), 3, 5
    H = W = int(torch.randint(2, 5, (), generator=generator))
    return {"x": torch.randn(B, c_in, H, W, generator=generator) + 0.5,  # (B, C_in, H, W): a mean, so sums != 0
            "grad_y": torch.randn(B, c_out, H, W, generator=generator) + 0.3}  # (B, C_out, H, W)


def _gradients_with(weight_grad):
    def gradients(x, grad_y):
        # dL/db = sum_{b, h, w} g ;  dL/dx = W^T g = 0 because W = 0
        return weight_grad(x, grad_y), grad_y.sum(dim=(0, 2, 3)), torch.zeros_like(x)
    return gradients


def _weight_grad(x, grad_y):
    # dL/dW_oi = sum_{b, h, w} g_{b o h w} x_{b i h w}
    return torch.einsum("bohw,bihw->oi", grad_y, x)  # (C_out, C_in)


def zero_conv_gradients(learner) -> None:
    """Check ``learner(x, grad_y)``: the gradients (dL/dW (C_out, C_in), dL/db (C_out,), dL/dx like x)
    of a zero 1x1 convolution y = W x + b (W = 0, b = 0) for x (B, C_in, H, W) and g = dL/dy (B, C_out, H, W)."""
    __tracebackhide__ = True
    compare(learner, _gradients_with(_weight_grad), _gradients_case, name="zero_conv_gradients", mistakes=[
        Mistake("dL/dx taken as x (the derivative with respect to W put in the input's place)",
                lambda x, grad_y: (_weight_grad(x, grad_y), grad_y.sum(dim=(0, 2, 3)), x.clone()),
                "y = W x + b, so dy/dx = W, and W = 0: no gradient reaches the input (or the trainable copy behind "
                "it) at the first step. It is dy/dW = x that is non-zero."),
        Mistake("dL/dW = 0 as well (the weight 'cannot learn' from zero)",
                lambda x, grad_y: (torch.zeros(grad_y.shape[1], x.shape[1]), grad_y.sum(dim=(0, 2, 3)),
                                   torch.zeros_like(x)),
                "the gradient with respect to W does not depend on W: dL/dW = sum g x^T, non-zero whenever the "
                "input x and the upstream gradient g are. That is why a zero convolution trains."),
        Mistake("averaged over the batch and pixels instead of summed",
                lambda x, grad_y: (_weight_grad(x, grad_y) / (x.shape[0] * x.shape[2] * x.shape[3]),
                                   grad_y.mean(dim=(0, 2, 3)), torch.zeros_like(x)),
                "the same W and b act at every pixel of every image: their gradients add up over all of them "
                "(the mean, if any, is already inside g = dL/dy)."),
        Mistake("dL/db summed over the channels instead of over batch and pixels",
                lambda x, grad_y: (_weight_grad(x, grad_y), grad_y.sum(dim=(0, 2, 3)).sum().expand(grad_y.shape[1]),
                                   torch.zeros_like(x)),
                "b has one entry per output channel; each gets the sum of its own channel's gradient: "
                "grad_y.sum(dim=(0, 2, 3))."),
    ], hint="dW = torch.einsum('bohw,bihw->oi', grad_y, x); db = grad_y.sum(dim=(0, 2, 3)); dx = torch.zeros_like(x)")


# ---------------------------------------------------------------------------- add_control

def _control_case(generator: torch.Generator) -> dict:
    B, c = 2, 4
    sizes = [8, 4, 2][: int(torch.randint(2, 4, (), generator=generator))]
    skips = [torch.randn(B, c * (k + 1), s, s, generator=generator) for k, s in enumerate(sizes)]
    residuals = [torch.randn(x.shape, generator=generator) for x in skips]
    mid = torch.randn(B, c * len(sizes), 2, 2, generator=generator)
    return {"skips": skips, "residuals": residuals, "mid": mid, "mid_residual": torch.randn(mid.shape, generator=generator),
            "scale": float(0.2 + 1.5 * torch.rand((), generator=generator))}


def _add_control(skips, residuals, mid, mid_residual, scale):
    # skip_k <- skip_k + s r_k ;  mid <- mid + s r_mid
    return [x + scale * r for x, r in zip(skips, residuals)], mid + scale * mid_residual


def add_control(learner) -> None:
    """Check ``learner(skips, residuals, mid, mid_residual, scale)``: (list of skip_k + s r_k, mid + s r_mid)."""
    __tracebackhide__ = True
    compare(learner, _add_control, _control_case, name="add_control", mistakes=[
        Mistake("the locked features scaled too, s (skip + r)",
                lambda skips, residuals, mid, mid_residual, scale:
                ([scale * (x + r) for x, r in zip(skips, residuals)], scale * (mid + mid_residual)),
                "the control scale weighs the ControlNet's residuals only: at s = 0 the U-Net must be itself, "
                "skip + 0, not 0."),
        Mistake("the residuals added without the scale",
                lambda skips, residuals, mid, mid_residual, scale:
                ([x + r for x, r in zip(skips, residuals)], mid + mid_residual),
                "multiply each residual by scale before adding: skip + scale * r."),
        Mistake("the middle block's residual left out",
                lambda skips, residuals, mid, mid_residual, scale:
                ([x + scale * r for x, r in zip(skips, residuals)], mid),
                "ControlNet also adds a residual to the middle block's output: mid + scale * mid_residual."),
    ], hint="return [x + scale * r for x, r in zip(skips, residuals)], mid + scale * mid_residual")


# ---------------------------------------------------------------------------- guess_mode_weights

def _weights_case(generator: torch.Generator) -> dict:
    return {"n": int(torch.randint(3, 7, (), generator=generator)),
            "scale": float(0.3 + 1.2 * torch.rand((), generator=generator))}


def _guess_mode_weights(n, scale):
    # w_k = s 10^(-1 + k / (n - 1)), k = 0 (the finest skip) ... n - 1 (the middle block)
    return scale * torch.logspace(-1, 0, n)


def guess_mode_weights(learner) -> None:
    """Check ``learner(n, scale)``: the (n,) weights of the n residuals in guess mode, s logspace(-1, 0, n)."""
    __tracebackhide__ = True
    compare(learner, _guess_mode_weights, _weights_case, name="guess_mode_weights", mistakes=[
        Mistake("the weights in reverse (1 on the finest skip, 0.1 on the middle block)",
                lambda n, scale: scale * torch.logspace(0, -1, n),
                "guess mode trusts the deep, coarse residuals most: 0.1 on skip 0 (full resolution) rising to 1 on "
                "the middle block, torch.logspace(-1, 0, n)."),
        Mistake("evenly spaced from 0.1 to 1 (linspace) instead of geometrically",
                lambda n, scale: scale * torch.linspace(0.1, 1, n),
                "the weights are 10^e for e evenly spaced from -1 to 0: torch.logspace(-1, 0, n)."),
        Mistake("the control scale left out", lambda n, scale: torch.logspace(-1, 0, n),
                "guess mode weighs the residuals on top of the control scale: scale * torch.logspace(-1, 0, n)."),
        Mistake("powers of e instead of 10", lambda n, scale: scale * torch.exp(torch.linspace(-1, 0, n)),
                "torch.logspace's base is 10: the first weight is 10^-1 = 0.1, not e^-1."),
    ], hint="return scale * torch.logspace(-1, 0, n)")


# ---------------------------------------------------------------------------- mask_iou

def _masks_case(generator: torch.Generator) -> dict:
    N, S = 5, 12
    a = torch.zeros(N, S, S, dtype=torch.bool)
    b = torch.zeros(N, S, S, dtype=torch.bool)
    for i in range(N - 1):
        y, x, h, w = (int(v) for v in torch.randint(0, 6, (4,), generator=generator))
        a[i, y:y + h + 3, x:x + w + 3] = True
        dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
        b[i, max(y + dy, 0):y + dy + h + 1, max(x + dx, 0):x + dx + w + 4] = True
    return {"a": a, "b": b}  # the last pair is empty: IoU 1 (two empty masks agree)


def _area(m):
    return m.flatten(1).sum(1).float()  # (N,) pixels in each mask


def _where_any(a, b, score):
    """``score`` where a or b has a pixel, 1 where both are empty (two empty masks agree)."""
    return torch.where((a | b).flatten(1).any(1), score, torch.ones(len(a)))


def _iou(a, b):
    # |A & B| / |A | B| per mask
    return _where_any(a, b, _area(a & b) / _area(a | b).clamp(min=1))


def mask_iou(learner) -> None:
    """Check ``learner(a, b)``: per pair of boolean masks (N, H, W), |a & b| / |a | b| as (N,) float32, 1 where both are empty."""
    __tracebackhide__ = True
    compare(learner, _iou, _masks_case, name="mask_iou", mistakes=[
        Mistake("divided by the target's area (recall), not the union",
                lambda a, b: _where_any(a, b, _area(a & b) / _area(b).clamp(min=1)),
                "IoU divides by the union |A | B|: a sample that covers the whole canvas would score 1 on recall."),
        Mistake("Dice, 2 |A & B| / (|A| + |B|), instead of IoU",
                lambda a, b: _where_any(a, b, 2 * _area(a & b) / (_area(a) + _area(b)).clamp(min=1)),
                "Dice = 2 IoU / (1 + IoU) is always above IoU; the lesson's bar (0.8) is on IoU = |A & B| / |A | B|."),
        Mistake("two empty masks scored 0 (or NaN) instead of 1",
                lambda a, b: _area(a & b) / _area(a | b).clamp(min=1),
                "0 / 0: when both masks are empty they agree perfectly; return 1 there (torch.where on union > 0)."),
    ], hint="inter = (a & b).flatten(1).sum(1).float(); union = (a | b).flatten(1).sum(1).float(); "
            "torch.where(union > 0, inter / union, 1.0)")
