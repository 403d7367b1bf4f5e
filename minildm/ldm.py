"""Latent diffusion: diffuse in an autoencoder's latent space, conditioned on frozen text features.

Rombach et al. (2022) put the pieces of lessons 01-11 together:

    z0 = s E(x)                 the autoencoder's latent (lesson 09), times its scale factor s
                                (1 / std of the training latents), so the noise schedule sees
                                unit-variance data
    c  = tau(prompt)            a frozen text encoder's per-token features (lesson 10)
    L  = E || eps - eps_theta(sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, t, c) ||^2
                                L_simple in latent space; the U-Net attends to c (lesson 11)
    x  = D(z0_hat / s)          sample latents with DDIM, decode them once at the end

Classifier-free guidance needs an unconditional prediction from the same network: during
training the caption is replaced by the empty prompt "" with probability ``caption_dropout``
(Ho & Salimans 2022); at sampling eps = eps("") + w (eps(c) - eps("")).

Two more uses of the same model family (both in the LDM paper):
- inpainting without retraining: at every step the known region of z_t is replaced by the
  forward-noised latent of the image, z_t <- m z_t + (1 - m) q_sample(z0_known, t), so only
  the masked region is generated and it is made to fit around what is kept (the blending of
  Lugmayr et al. 2022's RePaint, without its resampling);
- conditioning by concatenation: a U-Net with extra input channels sees an image-shaped
  condition next to z_t (``concat``), e.g. a low-resolution image for super-resolution; the
  shapes' 8x8 low-res copy has exactly the latent's 8x8 size.

And spatial control of the finished model (Zhang et al. 2023, lesson 14): ``sample(...,
control=controlnet, condition=edges)`` wraps the locked U-Net in a ``ControlledUNet``, so the
condition image rides in the model kwargs. With classifier-free guidance the control steers
both the conditional and the unconditional call, as diffusers' StableDiffusionControlNetPipeline
does; in guess mode only the conditional one (the unconditional call is the plain U-Net).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minildm import diffusion, samplers, text
from minildm.autoencoders import Autoencoder
from minildm.controlnet import ControlledUNet, ControlNet, MultiControlNet
from minildm.schedules import NoiseSchedule

__all__ = ["EMPTY_PROMPT", "text_context", "encode", "decode", "denoiser", "loss", "sample", "latent_mask",
           "inpaint"]

EMPTY_PROMPT = ""


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def text_context(clip: text.MiniCLIP, prompts: Sequence[str]) -> Tensor:
    """The frozen text encoder's last hidden states for ``prompts``: (B, L, width), what the
    U-Net cross-attends to (SD uses CLIP's last hidden state the same way)."""
    ids, mask = text.encode(list(prompts), clip.max_length)  # (B, L) each
    device = _device(clip)
    return clip.text_features(ids.to(device), mask.to(device))


@torch.no_grad()
def encode(vae: Autoencoder, images: Tensor) -> Tensor:
    """z0 = s E(x): the scaled latents of images in [-1, 1], (B, 3, H, W) -> (B, c, H/f, W/f)."""
    return vae.latents(images.to(_device(vae))) * vae.scale_factor


@torch.no_grad()
def decode(vae: Autoencoder, z: Tensor) -> Tensor:
    """x = D(z / s), clamped to [-1, 1]: (B, c, h, w) -> (B, 3, h f, w f)."""
    return vae.decode(z.to(_device(vae)) / vae.scale_factor).clamp(-1, 1)


def denoiser(unet: nn.Module):
    """eps_theta(z_t, t, context, concat=None, **control): the U-Net, with an image-shaped condition
    concatenated to z_t on the channel axis when ``concat`` is given; ``control`` (condition,
    scale, guess_mode) goes on to a ``ControlledUNet``."""
    def eps(z_t: Tensor, t: Tensor, context: Tensor, concat: Tensor | None = None, **control) -> Tensor:
        x = z_t if concat is None else torch.cat([z_t, concat.to(z_t)], dim=1)  # (B, c [+ c'], h, w)
        return unet(x, t, context=context, **control)
    return eps


def loss(unet: nn.Module, z0: Tensor, context: Tensor, empty_context: Tensor, schedule: NoiseSchedule, *,
         caption_dropout: float, generator: torch.Generator, concat: Tensor | None = None,
         condition: Tensor | None = None) -> Tensor:
    """L_simple on scaled latents ``z0`` (B, c, h, w) with text ``context`` (B, L, D); each
    caption is replaced by the empty prompt's features ``empty_context`` (1, L, D) with
    probability ``caption_dropout``, so the same network also learns eps(z_t, t, "").
    ``condition`` (B, channels, H, W) is a ControlNet's image: ``unet`` is then a ``ControlledUNet``
    (ControlNet training: the paper drops the caption half the time, caption_dropout 0.5)."""
    if not 0 <= caption_dropout < 1:
        raise ValueError(f"caption_dropout must be in [0, 1), got {caption_dropout!r}")
    if context.shape[0] != z0.shape[0] or empty_context.shape[1:] != context.shape[1:]:
        raise ValueError(f"context must be (B={z0.shape[0]}, L, D) and empty_context (1, L, D) alike, got "
                         f"{tuple(context.shape)} and {tuple(empty_context.shape)}")
    dropped = (torch.rand(len(z0), generator=generator) < caption_dropout).to(z0.device)  # (B,)
    context = torch.where(dropped[:, None, None], empty_context.to(context), context)  # (B, L, D)
    control = {} if condition is None else {"condition": condition}
    return diffusion.loss_simple(denoiser(unet), z0, schedule, generator=generator,
                                 model_kwargs={"context": context, "concat": concat, **control})


def _conditions(clip: text.MiniCLIP, prompts: Sequence[str], concat: Tensor | None) -> tuple[dict, dict]:
    """model_kwargs of the conditional and the unconditional (empty prompt) calls."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise TypeError(f"prompts must be a non-empty list of strings, got {prompts!r:.60}")
    cond = {"context": text_context(clip, prompts), "concat": concat}
    uncond = {"context": text_context(clip, [EMPTY_PROMPT] * len(prompts)), "concat": concat}
    return cond, uncond


def _with_control(unet: nn.Module, control, condition, control_scale, guess_mode: bool,
                  cond: dict, uncond: dict, batch: int) -> nn.Module:
    """The U-Net to sample, and the control kwargs added to ``cond`` / ``uncond`` in place.

    diffusers' StableDiffusionControlNetPipeline: the control residuals join both CFG branches,
    except in guess mode, where only the conditional branch is controlled.
    """
    if control is None:
        if condition is not None:
            raise ValueError("condition was given without control: pass control=a ControlNet or MultiControlNet")
        return unet
    if not isinstance(control, (ControlNet, MultiControlNet)):
        raise TypeError(f"control must be a ControlNet or a MultiControlNet, got {type(control).__name__}")
    conditions = condition if isinstance(control, MultiControlNet) else [condition]
    if (not isinstance(conditions, Sequence) or not conditions
            or not all(isinstance(c, Tensor) and c.dim() == 4 and len(c) == batch for c in conditions)):
        what = "a list of condition tensors, one per ControlNet," if isinstance(control, MultiControlNet) else \
            "a condition tensor"
        raise ValueError(f"condition must be {what} each (B={batch}, channels, H, W), one image per prompt; "
                         f"got {condition!r:.80}")
    device = _device(unet)
    moved = [c.to(device) for c in conditions]
    kwargs = {"condition": moved if isinstance(control, MultiControlNet) else moved[0],
              "scale": list(control_scale) if isinstance(control_scale, Sequence) else control_scale,
              "guess_mode": guess_mode}
    cond.update(kwargs)
    if not guess_mode:
        uncond.update(kwargs)
    return ControlledUNet(unet, control)


@torch.no_grad()
def sample(unet: nn.Module, vae: Autoencoder, clip: text.MiniCLIP, schedule: NoiseSchedule, prompts: Sequence[str],
           *, steps: int = 50, guidance_scale: float = 1.0, eta: float = 0.0, seed: int = 0,
           concat: Tensor | None = None, size: int = 32, callback=None, x_T: Tensor | None = None,
           control: ControlNet | MultiControlNet | None = None, condition: Tensor | Sequence[Tensor] | None = None,
           control_scale: float | Sequence[float] = 1.0, guess_mode: bool = False) -> Tensor:
    """Text-to-image: DDIM in latent space from z_T ~ N(0, I), then one decode. Returns images
    (len(prompts), 3, size, size) in [-1, 1] on the CPU. guidance_scale 1 is the conditional
    model alone; ``callback(i, t, z_t, z0_hat)`` sees the latent trajectory (lesson 12 decodes
    it). The initial noise comes from a CPU generator seeded ``seed``: the same on any device.

    With ``control`` (a ControlNet, or a MultiControlNet with a list of conditions and scales)
    each prompt's ``condition`` image (B, channels, size, size) steers the locked U-Net, its
    residuals times ``control_scale``; at control_scale 0 the images equal those without control
    exactly. ``guess_mode`` weights the residuals by logspace(-1, 0, n) and controls only the
    conditional branch of guidance (meant for the empty prompt, with guidance_scale 3-5).
    """
    cond, uncond = _conditions(clip, prompts, concat)
    unet = _with_control(unet, control, condition, control_scale, guess_mode, cond, uncond, len(prompts))
    f = vae.factor
    shape = (len(prompts), vae.latent_channels, size // f, size // f)
    guided = {} if guidance_scale == 1 else {"guidance_scale": guidance_scale, "uncond_kwargs": uncond}
    z = samplers.sample(denoiser(unet), schedule, shape, sampler="ddim", steps=steps, eta=eta,
                        generator=torch.Generator().manual_seed(seed), device=_device(unet), model_kwargs=cond,
                        callback=callback, x_T=x_T, **guided)
    return decode(vae, z).cpu()


def latent_mask(mask: Tensor, factor: int) -> Tensor:
    """A pixel mask (B, 1, H, W), 1 = regenerate, to the latent grid (B, 1, H/f, W/f): a latent
    cell is regenerated if any of its f x f pixels is (so no masked pixel is kept frozen)."""
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, H, W) with 1 where to regenerate, got {tuple(mask.shape)}")
    return F.max_pool2d(mask.float(), factor)


@torch.no_grad()
def inpaint(unet: nn.Module, vae: Autoencoder, clip: text.MiniCLIP, schedule: NoiseSchedule, images: Tensor,
            mask: Tensor, prompts: Sequence[str], *, steps: int = 50, guidance_scale: float = 1.0, seed: int = 0,
            callback=None) -> Tensor:
    """Regenerate where ``mask`` (B, 1, H, W) is 1 and keep ``images`` (B, 3, H, W) elsewhere.

    DDIM (eta 0) in latent space; after every step the kept region of z_{t'} is replaced by
    q_sample(z0_known, t') with fresh noise (by z0_known after the last step); the decoded
    result is pasted into the original pixels outside the mask. Returns (B, 3, H, W) on the CPU.
    """
    if images.shape[0] != mask.shape[0] or images.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"images {tuple(images.shape)} and mask {tuple(mask.shape)} must match in batch and size")
    cond, uncond = _conditions(clip, prompts, None)
    if len(prompts) != len(images):
        raise ValueError(f"give one prompt per image: {len(images)} images, {len(prompts)} prompts")
    device, generator = _device(unet), torch.Generator().manual_seed(seed)
    eps_model = denoiser(unet)
    z_known = encode(vae, images).to(device)  # (B, c, h, w)
    m = latent_mask(mask, vae.factor).to(device)  # (B, 1, h, w)
    z = torch.randn(z_known.shape, generator=generator).to(device)
    ts = samplers.timesteps(schedule.T, steps)
    for i, t in enumerate(ts.tolist()):
        prev_t = ts[i + 1].item() if i + 1 < len(ts) else -1
        t_batch = torch.full((len(z),), t, dtype=torch.long, device=device)
        eps = eps_model(z, t_batch, **cond)
        if guidance_scale != 1:
            eps = samplers.cfg(eps_model(z, t_batch, **uncond), eps, guidance_scale)
        z, z0_hat = samplers.ddim_step(schedule, eps, t, prev_t, z)
        # z_{t'} <- m z_{t'} + (1 - m) q(z_{t'} | z0_known): the kept region follows the real image
        known = z_known if prev_t < 0 else schedule.q_sample(
            z_known, prev_t, torch.randn(z.shape, generator=generator).to(device))
        z = m * z + (1 - m) * known
        if callback is not None:
            callback(i, t, z, z0_hat)
    x = decode(vae, z).cpu()  # (B, 3, H, W)
    return mask * x + (1 - mask) * images
