"""Checks for lesson 09 (perceptual compression): the KL of a diagonal Gaussian, a nearest-code
quantiser with the straight-through estimator, PSNR, and the discriminator's hinge loss.

The KL of q(z | x) = N(mu, diag(sigma^2)) to N(0, I) is 1/2 sum_i (mu_i^2 + sigma_i^2 - 1 -
log sigma_i^2) (Kingma & Welling 2014, appendix B), summed over the latent, with the log-variance
clamped to [-30, 20] as in LDM and diffusers. The quantiser snaps each latent vector to its
nearest code and passes the gradient straight through, z_q = z + sg[e_k - z] (van den Oord et
al. 2017, section 3.2). PSNR = 10 log10(peak^2 / MSE) per image, with peak 2 for images in
[-1, 1]. The hinge loss of the patch discriminator is 1/2 (mean ReLU(1 - D(x)) + mean
ReLU(1 + D(x_hat))) (Lim & Ye 2017; Esser et al. 2021).

Inputs are drawn so that each slip moves the answer past the tolerance: log-variances far from 0
(so sigma and sigma^2 differ) and, in some cases, outside the clamp; codes of different lengths
(so the largest dot product is not the nearest code); logits beyond the hinge margins on both
sides (so a missing ReLU or a swapped sign shows).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..perceptual import hinge_d_loss as _package_hinge_d_loss
from ..perceptual import psnr as _package_psnr
from .core import Mistake, compare

__all__ = ["kl_diagonal_gaussian", "quantize", "psnr", "hinge_d_loss"]


# ---------------------------------------------------------------------------- kl_diagonal_gaussian

def _kl_case(generator: torch.Generator) -> dict:
    B, c = int(torch.randint(2, 4, (), generator=generator)), int(torch.randint(1, 4, (), generator=generator))
    h, w = int(torch.randint(2, 4, (), generator=generator)), int(torch.randint(2, 4, (), generator=generator))
    mean = torch.randn(B, c, h, w, generator=generator)
    logvar = 1.5 * torch.randn(B, c, h, w, generator=generator)  # sigma = exp(logvar / 2) from about 0.2 to 5
    if int(torch.randint(0, 2, (), generator=generator)):  # half the cases reach past the clamp
        logvar[0, 0, 0, 0], logvar[-1, -1, -1, -1] = -40.0, 21.0
    return {"parameters": torch.cat([mean, logvar], dim=1)}  # (B, 2c, h, w)


def _kl_with(clamp=True, half=0.5, var_of=torch.exp, log_sign=-1.0, reduce="sum"):
    """The KL with one part changed, for the mistakes below."""
    def kl(parameters):
        mean, logvar = parameters.chunk(2, dim=1)  # (B, c, h, w) each
        if clamp:
            logvar = logvar.clamp(-30.0, 20.0)
        # KL = 1/2 sum (mu^2 + sigma^2 - 1 - log sigma^2)
        terms = half * (mean.pow(2) + var_of(logvar) - 1.0 + log_sign * logvar)  # (B, c, h, w)
        return terms.sum(dim=(1, 2, 3)) if reduce == "sum" else terms.mean(dim=(1, 2, 3))  # (B,)
    return kl


def kl_diagonal_gaussian(learner) -> None:
    """Check ``learner(parameters)``: (B, 2c, h, w) = [mean | logvar] -> KL(q || N(0, I)) per image, (B,)."""
    __tracebackhide__ = True
    compare(learner, _kl_with(), _kl_case, name="kl_diagonal_gaussian", mistakes=[
        Mistake("the log-variance not clamped to [-30, 20]", _kl_with(clamp=False),
                "clamp first, logvar = logvar.clamp(-30, 20), as LDM and diffusers do: exp(logvar) must "
                "neither overflow nor reach 0."),
        Mistake("the factor 1/2 left out", _kl_with(half=1.0),
                "KL = 1/2 sum (mu^2 + sigma^2 - 1 - log sigma^2): the 1/2 comes from the Gaussian's exponent."),
        Mistake("sigma where sigma^2 belongs", _kl_with(var_of=lambda logvar: torch.exp(0.5 * logvar)),
                "the second term is the variance, sigma^2 = exp(logvar), not the standard deviation "
                "exp(logvar / 2)."),
        Mistake("the second half read as log sigma instead of log sigma^2",
                _kl_with(var_of=lambda log_std: torch.exp(2 * log_std), log_sign=-2.0),
                "the encoder emits the log-*variance*: sigma^2 = exp(logvar) and log sigma^2 = logvar."),
        Mistake("+ log sigma^2 instead of - log sigma^2", _kl_with(log_sign=1.0),
                "the log term enters with a minus: small variances cost more, and the KL is 0 only at "
                "mu = 0, sigma = 1."),
        Mistake("averaged over the latent instead of summed", _kl_with(reduce="mean"),
                "the KL of independent dimensions is the sum of their KLs: .sum(dim=(1, 2, 3))."),
    ], hint="mean, logvar = parameters.chunk(2, dim=1); logvar = logvar.clamp(-30, 20); "
            "return 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))")


# ---------------------------------------------------------------------------- quantize

def _quantize_case(generator: torch.Generator) -> dict:
    B, c = int(torch.randint(1, 3, (), generator=generator)), int(torch.randint(2, 5, (), generator=generator))
    h, w = int(torch.randint(2, 4, (), generator=generator)), int(torch.randint(2, 5, (), generator=generator))
    K = int(torch.randint(5, 10, (), generator=generator))
    lengths = torch.linspace(0.3, 3.0, K)[torch.randperm(K, generator=generator)]  # codes of different lengths
    directions = F.normalize(torch.randn(K, c, generator=generator), dim=1)
    return {"z": torch.randn(B, c, h, w, generator=generator) * 1.5, "codebook": directions * lengths[:, None]}


def _upstream(z_q):
    """A fixed upstream gradient dL/dz_q of z_q's shape, different at every entry."""
    return torch.cos(torch.arange(z_q.numel(), dtype=z_q.dtype)).reshape(z_q.shape)


def _with_gradient(fn, name):
    """Run ``fn(z, codebook)`` and also return the gradient that reaches z when dL/dz_q = _upstream."""
    @functools.wraps(fn)
    def run(z, codebook):
        z = z.clone().requires_grad_(True)
        out = fn(z, codebook)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(f"{name} must return a tuple (z_q, indices), got "
                            f"{type(out).__name__}{'' if not isinstance(out, tuple) else f' of {len(out)}'}")
        z_q, indices = out
        if not isinstance(z_q, torch.Tensor) or z_q.shape != z.shape:
            raise TypeError(f"{name}: z_q must be a tensor of z's shape {tuple(z.shape)}, got "
                            f"{tuple(z_q.shape) if isinstance(z_q, torch.Tensor) else type(z_q).__name__}")
        grad = torch.zeros_like(z)
        if z_q.requires_grad:
            found, = torch.autograd.grad(z_q, z, _upstream(z_q), allow_unused=True)
            grad = grad if found is None else found
        return {"z_q": z_q.detach(), "indices": indices, "gradient reaching z": grad}
    return run


def _quantize_with(nearest=True, straight_through="right", channels_last=True):
    """A quantiser with one part changed, for the mistakes below."""
    def quantize(z, codebook):
        B, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c) if channels_last else z.reshape(-1, c)  # (B h w, c)
        if nearest:
            # k = argmin_j ||z - e_j||^2
            k = (flat[:, None, :] - codebook[None, :, :]).pow(2).sum(-1).argmin(dim=1)  # (B h w,)
        else:
            k = (flat @ codebook.T).argmax(dim=1)  # the largest dot product
        e = codebook[k]  # (B h w, c)
        e = e.reshape(B, h, w, c).permute(0, 3, 1, 2) if channels_last else e.reshape(B, c, h, w)  # (B, c, h, w)
        k = k.reshape(B, h, w)
        if straight_through == "right":
            return z + (e - z).detach(), k  # forward e, backward the identity
        if straight_through == "backwards":
            return e + (z - e).detach(), k
        return e, k
    return quantize


def quantize(learner) -> None:
    """Check ``learner(z, codebook)``: z (B, c, h, w), codebook (K, c) -> (z_q (B, c, h, w), indices (B, h, w)),
    with the gradient of z_q passed straight through to z."""
    __tracebackhide__ = True
    compare(_with_gradient(learner, "quantize"), _with_gradient(_quantize_with(), "quantize"), _quantize_case,
            name="quantize", mistakes=[
        Mistake("no straight-through estimator: the codes returned as they are, so no gradient reaches z",
                _with_gradient(_quantize_with(straight_through="none"), "quantize"),
                "argmin has no gradient; return z + (e - z).detach(): its value is e, its gradient to z the identity."),
        Mistake("the straight-through written backwards (value z, gradient to the codes)",
                _with_gradient(_quantize_with(straight_through="backwards"), "quantize"),
                "the detached part is (e - z): z_q = z + (e - z).detach() equals e going forward."),
        Mistake("the largest dot product z . e instead of the nearest code",
                _with_gradient(_quantize_with(nearest=False), "quantize"),
                "||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2: the code length matters too. Use the distance, "
                "e.g. torch.cdist(flat, codebook).argmin(1)."),
        Mistake("the channels flattened without moving them last (z.reshape(-1, c))",
                _with_gradient(_quantize_with(channels_last=False), "quantize"),
                "each latent *position* holds one c-vector: z.permute(0, 2, 3, 1).reshape(-1, c), then undo "
                "the permute on the way back."),
    ], hint="flat = z.permute(0, 2, 3, 1).reshape(-1, c); k = torch.cdist(flat, codebook).argmin(1); "
            "e = codebook[k].reshape(B, h, w, c).permute(0, 3, 1, 2); return z + (e - z).detach(), k.reshape(B, h, w)")


# ---------------------------------------------------------------------------- psnr

def _psnr_case(generator: torch.Generator) -> dict:
    B, C = int(torch.randint(2, 5, (), generator=generator)), int(torch.randint(1, 4, (), generator=generator))
    x = torch.rand(B, C, 6, 6, generator=generator) * 2 - 1
    noise = torch.randn(B, 1, 1, 1, generator=generator).abs() * 0.1 + 0.01  # a different error per image
    return {"x": x, "y": (x + noise * torch.randn(B, C, 6, 6, generator=generator)).clamp(-1, 1)}


def _psnr_with(peak=2.0, factor=10.0, log=torch.log10, root=False):
    def psnr(x, y):
        mse = (x - y).pow(2).mean(dim=(1, 2, 3))  # (B,)
        error = mse.sqrt() if root else mse
        # PSNR = 10 log10(peak^2 / MSE)
        return factor * log(peak ** 2 / error)
    return psnr


def psnr(learner) -> None:
    """Check ``learner(x, y)``: images (B, C, H, W) in [-1, 1] -> PSNR per image in dB, (B,)."""
    __tracebackhide__ = True
    compare(learner, _package_psnr, _psnr_case, name="psnr", atol=1e-3, mistakes=[
        Mistake("peak 1 (as for images in [0, 1]) instead of 2", _psnr_with(peak=1.0),
                "our images span [-1, 1]: the peak-to-peak range is 2, so peak^2 = 4. (A peak of 1 is "
                "10 log10 4 = 6.02 dB too low.)"),
        Mistake("20 log10 of the MSE (20 goes with the RMSE)", _psnr_with(factor=20.0),
                "10 log10(peak^2 / MSE) = 20 log10(peak / RMSE): use 10 with the squared error."),
        Mistake("the RMSE where the MSE belongs", _psnr_with(root=True),
                "divide peak^2 by the mean *squared* error, not by its square root."),
        Mistake("the natural log instead of log10", _psnr_with(log=torch.log),
                "decibels use base 10: torch.log10."),
    ], hint="mse = ((x - y) ** 2).mean(dim=(1, 2, 3)); return 10 * torch.log10(4 / mse)")


# ---------------------------------------------------------------------------- hinge_d_loss

def _hinge_case(generator: torch.Generator) -> dict:
    B, n = int(torch.randint(2, 5, (), generator=generator)), int(torch.randint(2, 5, (), generator=generator))
    # logits of a few units: some beyond the margins +-1 on both sides
    return {"logits_real": 2 * torch.randn(B, 1, n, n, generator=generator) + 0.5,
            "logits_fake": 2 * torch.randn(B, 1, n, n, generator=generator) - 0.5}


def _hinge_with(relu=F.relu, real_sign=-1.0, half=0.5):
    def loss(logits_real, logits_fake):
        # L_D = 1/2 (mean ReLU(1 - D(x)) + mean ReLU(1 + D(x_hat)))
        return half * (relu(1.0 + real_sign * logits_real).mean() + relu(1.0 - real_sign * logits_fake).mean())
    return loss


def hinge_d_loss(learner) -> None:
    """Check ``learner(logits_real, logits_fake)``: the discriminator's hinge loss, a scalar tensor."""
    __tracebackhide__ = True
    compare(learner, _package_hinge_d_loss, _hinge_case, name="hinge_d_loss", mistakes=[
        Mistake("real and fake swapped (ReLU(1 + D(x)) + ReLU(1 - D(x_hat)))", _hinge_with(real_sign=1.0),
                "the discriminator wants D(x) >= 1 on real images: a real logit below 1 costs 1 - D(x)."),
        Mistake("no ReLU: the linear (Wasserstein-like) loss", _hinge_with(relu=lambda t: t),
                "the hinge stops pushing once a logit is past its margin: F.relu(1 - logits_real)."),
        # softplus(t - 1) turns the two hinge terms into softplus(-D(x)) and softplus(D(x_hat))
        Mistake("the non-saturating GAN loss (softplus) instead of the hinge",
                _hinge_with(relu=lambda t: F.softplus(t - 1.0)),
                "this is the hinge version: ReLU(1 - D(x)) and ReLU(1 + D(x_hat)), no log or softplus."),
        Mistake("the factor 1/2 left out", _hinge_with(half=1.0),
                "taming-transformers and LDM average the two terms: 0.5 * (real term + fake term)."),
    ], hint="return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())")

