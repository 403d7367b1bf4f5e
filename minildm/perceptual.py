"""The autoencoder's training loss: reconstruction, perceptual, regulariser and patch adversarial.

Rombach et al. (2022) train the LDM autoencoder as VQGAN does (Esser et al. 2021):

    L = sum_pixels (|x - x_hat| + w_p P(x, x_hat)) + w_reg R + lambda g_loss        (autoencoder)
    L_D = 1/2 (mean ReLU(1 - D(x)) + mean ReLU(1 + D(x_hat)))                        (discriminator)

- the L1 reconstruction, summed over an image's pixels and averaged over the batch;
- P, a perceptual distance. LPIPS (Zhang et al. 2018) compares unit-normalised feature maps of
  an ImageNet VGG with learned channel weights; we cannot download those weights, and on 32x32
  shapes VGG would see little. ``PerceptualLoss`` does the same with our own shapes classifier's
  feature maps (lesson 08), with equal channel weights: two images are close when a network
  that knows shapes and colours sees the same things in them;
- R, the latent's regulariser: the KL to N(0, I) (weight ~1e-6) or the VQ loss (weight 1);
- a hinge PatchGAN (Isola et al. 2017): D scores every overlapping patch real or fake, so it
  punishes blur locally; g_loss = -mean D(x_hat). Its weight lambda adapts (Esser et al. eq. 7):
  lambda = w_d ||grad_L nll|| / (||grad_L g_loss|| + 1e-4), clamped to [0, 1e4], with L the
  decoder's last layer, so the adversarial gradient never swamps the reconstruction's; and
  it only starts after ``disc_start`` steps, once reconstructions are reasonable.

``AutoencoderTraining`` wraps the autoencoder, the discriminator and the perceptual network
in one module whose ``loss`` is the sum of both objectives, each reaching only its own
parameters; ``minildm.train.fit`` then trains both with one optimizer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from minildm.autoencoders import Autoencoder
from minildm.classifier import Classifier

__all__ = ["PerceptualLoss", "PatchGAN", "hinge_d_loss", "adaptive_weight", "AutoencoderTraining", "psnr"]


def _unit(h: Tensor, eps: float = 1e-10) -> Tensor:
    """Each pixel's feature vector divided by its length: (B, C, H, W) -> (B, C, H, W)."""
    return h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class PerceptualLoss(nn.Module):
    """LPIPS without learned weights, on a ``Classifier``'s three stages of feature maps.

    P(x, y) = sum_l mean_{h, w} || u_l(x)_{hw} - u_l(y)_{hw} ||^2, with u_l the unit-normalised
    features of stage l (Zhang et al. 2018, eq. 1, every channel weight 1). (B, C, H, W) x 2 ->
    (B,). The network is frozen: the loss trains the autoencoder, never the classifier.
    """

    def __init__(self, net: Classifier):
        super().__init__()
        if not isinstance(net, Classifier):
            raise TypeError(f"net must be a minildm.classifier.Classifier, got {type(net).__name__}")
        self.net = net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.net.eval()  # the frozen network always runs in eval mode
        return self

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """The classifier's stage outputs: [(B, w, S, S), (B, 2w, S/2, S/2), (B, D, S/4, S/4)]."""
        h, maps = self.net._checked(x), []
        for stage in self.net.body:
            h = stage(h)
            maps.append(h)
        return maps

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape:
            raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        return sum((_unit(a) - _unit(b)).pow(2).sum(dim=1).mean(dim=(1, 2))
                   for a, b in zip(self.feature_maps(x), self.feature_maps(y)))  # (B,)


class PatchGAN(nn.Module):
    """The pix2pix / VQGAN patch discriminator: one real-or-fake logit per overlapping patch.

    conv4x4 stride 2 + LeakyReLU(0.2), then ``n_layers - 1`` more of those with GroupNorm, one
    at stride 1, and a 1-channel conv4x4 (Isola et al. 2017). (B, C, H, W) -> (B, 1, H', W');
    with n_layers = 2 a 32x32 image gives 6x6 logits, each seeing a 22x22 patch.
    """

    def __init__(self, in_channels: int = 3, width: int = 32, n_layers: int = 2):
        super().__init__()
        if n_layers < 1 or width % 8:
            raise ValueError(f"n_layers must be >= 1 and width a multiple of 8, got {n_layers}, {width}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = width
        for k in range(1, n_layers + 1):
            out = width * min(2 ** k, 8)
            layers += [nn.Conv2d(ch, out, 4, 2 if k < n_layers else 1, 1), nn.GroupNorm(8, out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)  # (B, 1, H', W')


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """The discriminator's hinge loss: 1/2 (mean ReLU(1 - D(x)) + mean ReLU(1 + D(x_hat)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(nll: Tensor, g_loss: Tensor, last_layer: Tensor, disc_weight: float = 1.0) -> Tensor:
    """lambda = disc_weight * ||grad nll|| / (||grad g_loss|| + 1e-4), clamped to [0, 1e4], grads
    taken at the decoder's last layer (Esser et al. 2021, eq. 7); a constant (detached)."""
    nll_grad, = torch.autograd.grad(nll, last_layer, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach() * disc_weight


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Peak signal-to-noise ratio per image, in dB, for images in [-1, 1] (peak-to-peak 2):
    PSNR = 10 log10(2^2 / MSE) = 10 log10(1 / MSE) on the [0, 1] scale. (B, C, H, W) x 2 -> (B,)."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"x and y must be image batches of the same shape (B, C, H, W), got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    mse = (x.double() - y.double()).pow(2).mean(dim=(1, 2, 3))  # (B,)
    return (10 * torch.log10(4.0 / mse.clamp_min(1e-20))).float()


class AutoencoderTraining(nn.Module):
    """An autoencoder with its training loss (module docstring); ``loss(x, generator)`` is what
    ``train.fit`` minimises, and ``last_terms`` holds the terms of the last call, for plots.

    perceptual       a ``Classifier`` whose feature maps give P, or None (no perceptual term)
    discriminator    a ``PatchGAN``, or None (no adversarial term)
    """

    def __init__(self, autoencoder: Autoencoder, *, reg_weight: float, perceptual: Classifier | None = None,
                 perceptual_weight: float = 1.0, discriminator: PatchGAN | None = None, disc_weight: float = 0.5,
                 disc_start: int = 0):
        super().__init__()
        if not isinstance(autoencoder, Autoencoder):
            raise TypeError(f"autoencoder must be a minildm Autoencoder, got {type(autoencoder).__name__}")
        for name, value in (("reg_weight", reg_weight), ("perceptual_weight", perceptual_weight),
                            ("disc_weight", disc_weight), ("disc_start", disc_start)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        self.autoencoder = autoencoder
        self.perceptual = None if perceptual is None else PerceptualLoss(perceptual)
        self.discriminator = discriminator
        self.reg_weight, self.perceptual_weight = float(reg_weight), float(perceptual_weight)
        self.disc_weight, self.disc_start = float(disc_weight), int(disc_start)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # loss calls in training mode
        self.last_terms: dict[str, float] = {}

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x_hat, reg = self.autoencoder(x, generator)  # (B, C, H, W), scalar
        per_pixel = (x - x_hat).abs()  # (B, C, H, W)
        if self.perceptual is not None:
            # LDM adds the perceptual distance to every pixel's L1 before summing
            per_pixel = per_pixel + self.perceptual_weight * self.perceptual(x, x_hat)[:, None, None, None]
        nll = per_pixel.sum(dim=(1, 2, 3)).mean()  # per image sum, batch mean
        total = nll + self.reg_weight * reg
        terms = {"nll": float(nll.detach()), "reg": float(reg.detach())}
        adversarial = self.discriminator is not None and self.training and int(self.step) >= self.disc_start
        if adversarial:
            # the autoencoder's side: fool D, whose weights are held fixed for this term
            frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
            g_loss = -functional_call(self.discriminator, frozen, (x_hat,)).mean()
            lam = adaptive_weight(nll, g_loss, self.autoencoder.last_layer, self.disc_weight)
            # the discriminator's side: real vs (detached) fake; reaches only D's weights
            d_loss = hinge_d_loss(self.discriminator(x), self.discriminator(x_hat.detach()))
            total = total + lam * g_loss + d_loss
            terms |= {"g_loss": float(g_loss.detach()), "d_loss": float(d_loss.detach()), "lambda": float(lam)}
        if self.training:
            self.step += 1
        self.last_terms = terms
        return total
