"""Checks for lesson 12 (latent diffusion): the scale factor, caption dropout, the inpainting blend, the latent mask.

The scale factor (Rombach et al. 2022, section 4.3.2) is s = 1 / std of the training latents,
one number over every entry, so that s z has unit variance as the noise schedule assumes
(Stable Diffusion's 0.18215); the mean is left alone. Caption dropout (Ho & Salimans 2022,
Algorithm 1, with a text encoder) replaces a caption's features by those of the empty prompt
with probability p, so one network also learns eps(z_t, t, ""). Inpainting without retraining
(the blending of Lugmayr et al. 2022's RePaint, as ``ldm.inpaint`` does it) keeps, after each
step to t', the known region at the forward-noised latent of the image:

    z_{t'} <- m z_{t'} + (1 - m) (sqrt(abar_{t'}) z0_known + sqrt(1 - abar_{t'}) eps).

A pixel mask goes to the latent grid by max-pooling over f x f cells, so that a latent cell is
regenerated if any of its pixels is (``ldm.latent_mask``).

Inputs are drawn so that each slip moves the answer past the tolerance: latents with channel
means far from 0 (so RMS and std differ), batches that mix dropped and kept captions with the
first one sometimes kept and sometimes dropped, alpha_bar away from 0, 1/2 and 1, and masks
whose edges cut through latent cells.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .core import Mistake, compare

__all__ = ["latent_scale_factor", "drop_captions", "inpaint_blend", "latent_mask"]


# ---------------------------------------------------------------------------- latent_scale_factor

def _latents_case(generator: torch.Generator) -> dict:
    c = int(torch.randint(2, 5, (), generator=generator))
    mean = 3 * torch.rand(1, c, 1, 1, generator=generator) - 1.5  # (1, c, 1, 1): channel means in [-1.5, 1.5]
    std = 0.3 + 2.7 * torch.rand(1, c, 1, 1, generator=generator)  # (1, c, 1, 1) in [0.3, 3]
    return {"latents": mean + std * torch.randn(64, c, 8, 8, generator=generator)}  # (64, c, 8, 8)


def _scale_factor_from(spread):
    def scale_factor(latents):
        return float(1 / spread(latents.double()))
    return scale_factor


def latent_scale_factor(learner) -> None:
    """Check ``learner(latents)``: latents (N, c, h, w) -> s = 1 / std over every entry, a Python float."""
    __tracebackhide__ = True
    compare(learner, _scale_factor_from(torch.std), _latents_case, name="latent_scale_factor", rtol=1e-3, mistakes=[
        Mistake("the std itself instead of 1 / std", lambda latents: float(latents.double().std()),
                "s multiplies the latents so that s z has std 1: s = 1 / std(z)."),
        Mistake("1 / variance instead of 1 / std", _scale_factor_from(lambda z: z.var()),
                "scaling by s scales the std by s (and the variance by s^2): s = 1 / std, not 1 / std^2."),
        Mistake("1 / root mean square (the channel means counted as spread)",
                _scale_factor_from(lambda z: z.pow(2).mean().sqrt()),
                "the latents' means are far from 0; sqrt(mean(z^2)) mixes the mean into the spread. Use the "
                "standard deviation, latents.std()."),
        Mistake("1 / mean absolute value", _scale_factor_from(lambda z: z.abs().mean()),
                "the spread that the noise schedule compares with N(0, I) is the standard deviation."),
    ], hint="return float(1 / latents.std())  (one number over all entries, not one per channel)")


# ---------------------------------------------------------------------------- drop_captions

def _captions_case(generator: torch.Generator) -> dict:
    B, L, D = int(torch.randint(6, 11, (), generator=generator)), int(torch.randint(3, 7, (), generator=generator)), 4
    u = torch.rand(B, generator=generator)  # (B,)
    first_dropped = bool(torch.randint(0, 2, (), generator=generator))
    u[0], u[1], u[2] = (0.02 if first_dropped else 0.97), 0.01, 0.99  # drops and keeps in every batch
    return {"context": torch.randn(B, L, D, generator=generator),
            "empty_context": torch.randn(1, L, D, generator=generator) + 2.0,  # the empty prompt's features: not 0
            "u": u, "p": float(0.2 + 0.5 * torch.rand((), generator=generator))}


def _drop_captions(context, empty_context, u, p):
    # c_i <- c("") where u_i < p (probability p), else c_i
    return torch.where((u < p)[:, None, None], empty_context, context)  # (B, L, D)


def drop_captions(learner) -> None:
    """Check ``learner(context, empty_context, u, p)``: (B, L, D) text features with each caption's
    features replaced by the empty prompt's (1, L, D) where u < p."""
    __tracebackhide__ = True
    compare(learner, _drop_captions, _captions_case, name="drop_captions", mistakes=[
        Mistake("captions kept with probability p and dropped with 1 - p",
                lambda context, empty_context, u, p: torch.where((u < p)[:, None, None], context, empty_context),
                "u is uniform on [0, 1), so u < p happens with probability p: that is when to *drop* the caption "
                "(p = 0.1: 10% of the batch learns the unconditional model)."),
        Mistake("dropped captions set to zeros instead of the empty prompt's features",
                lambda context, empty_context, u, p: torch.where((u < p)[:, None, None],
                                                                 torch.zeros_like(empty_context), context),
                "at sampling the unconditional call uses text_context(clip, [\"\"]), the features of the empty "
                "prompt ([BOS] [EOS] and padding): train with those, not with zeros."),
        Mistake("one coin for the whole batch (u[0] decides for every caption)",
                lambda context, empty_context, u, p: empty_context.expand_as(context) if u[0] < p else context,
                "each caption is dropped on its own: compare every u_i with p, (u < p)[:, None, None]."),
    ], hint="return torch.where((u < p)[:, None, None], empty_context, context)")


# ---------------------------------------------------------------------------- inpaint_blend

def _blend_case(generator: torch.Generator) -> dict:
    B, c, h = int(torch.randint(1, 3, (), generator=generator)), 4, 8
    mask = torch.zeros(B, 1, h, h)
    top, left = (int(v) for v in torch.randint(0, 4, (2,), generator=generator))
    mask[:, :, top:top + 4, left:left + 3] = 1  # (B, 1, h, w): 1 = regenerate
    return {"z_prev": torch.randn(B, c, h, h, generator=generator),
            "z0_known": torch.randn(B, c, h, h, generator=generator) + 1.0,
            "mask": mask, "alpha_bar_prev": float(0.15 + 0.3 * torch.rand((), generator=generator)
                                                  + 0.4 * torch.randint(0, 2, (), generator=generator)),
            "noise": torch.randn(B, c, h, h, generator=generator)}


def _blend_with(noised):
    def blend(z_prev, z0_known, mask, alpha_bar_prev, noise):
        known = noised(z0_known, alpha_bar_prev, noise)  # (B, c, h, w)
        # z_{t'} <- m z_{t'} + (1 - m) q(z_{t'} | z0_known)
        return mask * z_prev + (1 - mask) * known
    return blend


def _q_sample(z0, alpha_bar, noise):
    # q(z_t | z0): sqrt(abar_t) z0 + sqrt(1 - abar_t) eps
    return math.sqrt(alpha_bar) * z0 + math.sqrt(1 - alpha_bar) * noise


def inpaint_blend(learner) -> None:
    """Check ``learner(z_prev, z0_known, mask, alpha_bar_prev, noise)``: the generated z_prev inside the
    mask, the known latent noised to alpha_bar_prev outside it."""
    __tracebackhide__ = True
    compare(learner, _blend_with(_q_sample), _blend_case, name="inpaint_blend", mistakes=[
        Mistake("the mask inverted (the known latent pasted where the mask says regenerate)",
                lambda z_prev, z0_known, mask, alpha_bar_prev, noise:
                _blend_with(_q_sample)(z_prev, z0_known, 1 - mask, alpha_bar_prev, noise),
                "mask = 1 marks the region to regenerate: keep the sampler's z_prev there, m z_prev + (1 - m) known."),
        Mistake("the known latent pasted clean, not noised to the step's level",
                _blend_with(lambda z0, alpha_bar, noise: z0),
                "z_prev is a latent at noise level t'; a clean patch next to it is a seam the model never saw. "
                "Noise the known latent to the same level: sqrt(abar) z0_known + sqrt(1 - abar) noise."),
        Mistake("the noise scaled by 1 - alpha_bar instead of sqrt(1 - alpha_bar)",
                _blend_with(lambda z0, alpha_bar, noise: math.sqrt(alpha_bar) * z0 + (1 - alpha_bar) * noise),
                "q(z_t | z0) has variance 1 - abar_t, so the noise is multiplied by its square root."),
        Mistake("the known latent not scaled by sqrt(alpha_bar)",
                _blend_with(lambda z0, alpha_bar, noise: z0 + math.sqrt(1 - alpha_bar) * noise),
                "the forward process shrinks the signal as it adds noise: sqrt(abar) z0_known + sqrt(1 - abar) noise."),
    ], hint="known = alpha_bar_prev ** 0.5 * z0_known + (1 - alpha_bar_prev) ** 0.5 * noise; "
            "return mask * z_prev + (1 - mask) * known")


# ---------------------------------------------------------------------------- latent_mask

def _mask_case(generator: torch.Generator) -> dict:
    factor = int(2 ** torch.randint(1, 3, (), generator=generator))  # 2 or 4
    side = 8 * factor
    mask = torch.zeros(2, 1, side, side)
    for b in range(2):
        top, left = (int(v) for v in torch.randint(1, side // 2, (2,), generator=generator))
        height, width = (int(v) for v in torch.randint(factor + 1, side // 2, (2,), generator=generator))
        mask[b, :, top:top + height, left:left + width] = 1  # edges that cut through latent cells
    mask[:, :, 0, 1] = 1  # a lone pixel inside a cell whose top-left pixel is 0
    return {"mask": mask, "factor": factor}


def _latent_mask(mask, factor):
    from minildm import ldm  # here, not at import: ldm imports transformers, which costs seconds
    return ldm.latent_mask(mask, factor)


def latent_mask(learner) -> None:
    """Check ``learner(mask, factor)``: a (B, 1, H, W) pixel mask (1 = regenerate) -> (B, 1, H/f, W/f),
    1 where any pixel of the f x f cell is 1."""
    __tracebackhide__ = True
    compare(learner, _latent_mask, _mask_case, name="latent_mask", mistakes=[
        Mistake("average pooling (the fraction of masked pixels, not 0 or 1)",
                lambda mask, factor: F.avg_pool2d(mask, factor),
                "the latent mask must be 0 or 1: a cell is regenerated as a whole. Take the max over the cell."),
        Mistake("one pixel per cell (mask[..., ::f, ::f])", lambda mask, factor: mask[..., ::factor, ::factor],
                "a cell whose top-left pixel is outside the mask can still hold masked pixels: look at all f x f "
                "of them (F.max_pool2d)."),
        Mistake("a cell regenerated only if all its pixels are masked (min pooling)",
                lambda mask, factor: -F.max_pool2d(-mask, factor),
                "the masked pixels of a partly masked cell would be kept frozen and pasted back: regenerate a cell "
                "if *any* of its pixels is masked."),
        Mistake("the average rounded (a cell regenerated if at least half its pixels are)",
                lambda mask, factor: (F.avg_pool2d(mask, factor) >= 0.5).float(),
                "a cell with a few masked pixels must be regenerated too, or those pixels are never repainted: "
                "any, not most."),
    ], hint="return F.max_pool2d(mask, factor)")
