"""Autoencoders for perceptual compression: plain, KL-regularised and vector-quantised.

Latent diffusion (Rombach et al. 2022) splits image generation in two. Stage 1, here, is an
autoencoder that drops the imperceptible detail: an encoder maps an image (B, 3, H, W) to a
latent (B, c, H/f, W/f), a decoder maps it back. Stage 2 diffuses in that small latent space.

Three ways to regularise the latent, so that it stays a space worth diffusing in:
- ``Autoencoder``      none: z = E(x). Nothing stops the latent scale from drifting.
- ``AutoencoderKL``    E(x) gives a diagonal Gaussian q(z | x) = N(mu, sigma^2); a small KL
                       to N(0, I) (weight ~1e-6 in LDM) keeps it centred and bounded (Kingma &
                       Welling 2014; "KL-reg." in Rombach et al.).
- ``VQAutoencoder``    z snaps to the nearest of K learned codes (van den Oord et al. 2017,
                       VQ-VAE; VQGAN, Esser et al. 2021), with the straight-through estimator.

The network follows the LDM / diffusers ``Encoder`` and ``Decoder`` in miniature: a 3x3 conv,
then per level ``num_res_blocks`` residual blocks (GroupNorm, SiLU, conv; no time embedding)
and a stride-2 conv down (nearest x2 + conv up in the decoder), log2(f) times; a middle
residual block; GroupNorm, SiLU, a 3x3 conv out; and 1x1 convs ``quant_conv`` /
``post_quant_conv`` on each side of the latent, as in diffusers. Images are in [-1, 1].
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minildm.nn import Downsample, Upsample

__all__ = ["DiagonalGaussian", "Autoencoder", "AutoencoderKL", "VectorQuantizer", "VQAutoencoder",
           "latent_scale_factor"]

FACTORS = (1, 2, 4, 8)


class _Block(nn.Module):
    """A residual block without a time embedding: x + conv(SiLU(GN(conv(SiLU(GN(x)))))).

    (B, in_ch, H, W) -> (B, out_ch, H, W); the skip is a 1x1 conv when channels change.
    """

    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(groups, in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1),
                                  nn.GroupNorm(groups, out_ch), nn.SiLU(), nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)  # (B, out_ch, H, W)


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _widths(base: int, mults: Sequence[int] | None, factor: int, groups: int) -> list[int]:
    """Channels per level: one level per resolution, log2(factor) + 1 of them."""
    levels = int(math.log2(factor)) + 1
    mults = [1] + [2] * (levels - 1) if mults is None else list(mults)
    if len(mults) != levels or any(isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 1 for m in mults):
        raise ValueError(f"mults must list {levels} positive ints for factor={factor} (one per resolution), "
                         f"got {mults!r}")
    widths = [base * m for m in mults]
    if any(w % groups for w in widths):
        raise ValueError(f"every width base * mult ({widths}) must be a multiple of groups={groups}")
    return widths


class _Encoder(nn.Module):
    """(B, in_channels, H, W) -> (B, out_channels, H/f, W/f)."""

    def __init__(self, in_channels: int, out_channels: int, widths: list[int], num_res_blocks: int, groups: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        ch = widths[0]
        for k, w in enumerate(widths):
            for _ in range(num_res_blocks):
                layers.append(_Block(ch, w, groups))
                ch = w
            if k < len(widths) - 1:
                layers.append(Downsample(ch))  # (B, ch, H/2^(k+1), W/2^(k+1))
        layers += [_Block(ch, ch, groups), nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class _Decoder(nn.Module):
    """(B, in_channels, h, w) -> (B, out_channels, h f, w f); ``conv_out`` is its last layer."""

    def __init__(self, in_channels: int, out_channels: int, widths: list[int], num_res_blocks: int, groups: int):
        super().__init__()
        ch = widths[-1]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 3, padding=1), _Block(ch, ch, groups)]
        for k, w in reversed(list(enumerate(widths))):
            for _ in range(num_res_blocks):
                layers.append(_Block(ch, w, groups))
                ch = w
            if k > 0:
                layers.append(Upsample(ch))  # (B, ch, 2h, 2w)
        layers += [nn.GroupNorm(groups, ch), nn.SiLU()]
        self.layers = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        return self.conv_out(self.layers(z))


class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))) from ``parameters`` (B, 2c, h, w) = [mean | logvar].

    logvar is clamped to [-30, 20] (exp(20) ~ 5e8: no overflow; exp(-30): no log of 0), as in
    LDM and diffusers' ``DiagonalGaussianDistribution``.
    """

    def __init__(self, parameters: Tensor):
        if not isinstance(parameters, Tensor) or parameters.dim() != 4 or parameters.shape[1] % 2:
            got = tuple(parameters.shape) if isinstance(parameters, Tensor) else type(parameters).__name__
            raise ValueError(f"parameters must be (B, 2c, h, w): mean and log-variance stacked on dim 1, got {got}")
        self.mean, logvar = parameters.chunk(2, dim=1)  # (B, c, h, w) each
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """z = mean + std * eps, eps ~ N(0, I) (the reparameterisation trick): (B, c, h, w)."""
        eps = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> Tensor:
        """The most likely latent, the mean: (B, c, h, w)."""
        return self.mean

    def kl(self) -> Tensor:
        """KL(q(z | x) || N(0, I)) per image, in nats: (B,).

        KL = 1/2 sum_i (mu_i^2 + sigma_i^2 - 1 - log sigma_i^2), summed over every latent entry.
        """
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class Autoencoder(nn.Module):
    """A plain convolutional autoencoder: z = E(x), x_hat = D(z); no regulariser.

    in_channels      image channels (3 for shapes)
    latent_channels  c, the channels of the latent (B, c, H/f, W/f)
    factor           f, the downsampling factor: 1, 2, 4 or 8
    base, mults      channels per resolution, base * mults[k] (mults defaults to 1, 2, 2, ...)
    num_res_blocks   residual blocks per resolution
    The latent has H W c / f^2 numbers against the image's H W 3: for f = 4, c = 4 on 32x32
    shapes, 8x8x4 = 256 against 3072, a 12x compression.
    """

    posterior_channels = 1  # latent channels the encoder emits per latent channel (KL: mean and log-variance)

    def __init__(self, in_channels: int = 3, latent_channels: int = 4, factor: int = 4, base: int = 32,
                 mults: Sequence[int] | None = None, num_res_blocks: int = 1, groups: int = 8):
        super().__init__()
        self.in_channels = _check_int("in_channels", in_channels)
        self.latent_channels = _check_int("latent_channels", latent_channels)
        if factor not in FACTORS or isinstance(factor, bool):
            raise ValueError(f"factor must be one of {FACTORS}, got {factor!r}")
        self.factor = int(factor)
        widths = _widths(_check_int("base", base), mults, self.factor, _check_int("groups", groups))
        _check_int("num_res_blocks", num_res_blocks)
        emitted = self.posterior_channels * latent_channels
        self.encoder = _Encoder(in_channels, emitted, widths, num_res_blocks, groups)
        self.quant_conv = nn.Conv2d(emitted, emitted, 1)
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        self.decoder = _Decoder(latent_channels, in_channels, widths, num_res_blocks, groups)
        # 1 / std of the training latents (``latent_scale_factor``), saved with the weights
        self.register_buffer("scale_factor", torch.ones(()))

    def _checked(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 4 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be a float image batch (B, {self.in_channels}, H, W) in [-1, 1], got {got}")
        if x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise ValueError(f"x's height and width must be multiples of factor={self.factor}, "
                             f"got {tuple(x.shape[2:])}")
        return x

    def _encoded(self, x: Tensor) -> Tensor:
        return self.quant_conv(self.encoder(self._checked(x)))  # (B, posterior_channels * c, H/f, W/f)

    def encode(self, x: Tensor) -> Tensor:
        """(B, in_channels, H, W) -> z (B, c, H/f, W/f)."""
        return self._encoded(x)

    def decode(self, z: Tensor) -> Tensor:
        """(B, c, h, w) -> x_hat (B, in_channels, h f, w f)."""
        if not isinstance(z, Tensor) or z.dim() != 4 or z.shape[1] != self.latent_channels:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"z must be a latent batch (B, {self.latent_channels}, h, w), got {got}")
        return self.decoder(self.post_quant_conv(z))

    def latents(self, x: Tensor) -> Tensor:
        """The deterministic latent of x that stage 2 diffuses: (B, c, H/f, W/f)."""
        return self.encode(x)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(x_hat, regulariser): the reconstruction (B, in_channels, H, W) and the latent's penalty
        (a scalar, 0 here)."""
        return self.decode(self.encode(x)), x.new_zeros(())

    @property
    def last_layer(self) -> Tensor:
        """The decoder's last weight: where the adaptive GAN weight compares gradients."""
        return self.decoder.conv_out.weight


class AutoencoderKL(Autoencoder):
    """A KL-regularised autoencoder: the encoder gives q(z | x), a diagonal Gaussian.

    ``encode(x)`` returns a ``DiagonalGaussian`` (``.sample()``, ``.mode()``, ``.kl()``), as
    diffusers' ``AutoencoderKL.encode(x).latent_dist``. ``forward`` decodes a sample and returns
    the KL per image, summed over the latent and averaged over the batch (LDM's ``kl_loss``).
    """

    posterior_channels = 2

    def encode(self, x: Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self._encoded(x))

    def latents(self, x: Tensor) -> Tensor:
        return self.encode(x).mode()

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior.kl().mean()


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation with the straight-through estimator (van den Oord et al. 2017).

    z_q = e_k with k = argmin_j ||z - e_j||; the loss is
        L = ||sg[z] - e||^2  (codebook: moves the codes to the encoder outputs)
          + beta ||z - sg[e]||^2  (commitment: keeps the encoder near its codes), beta = 0.25.
    ``legacy=True`` puts beta on the codebook term instead (taming-transformers' original
    placement, kept as diffusers' default): the loss has the same value, the gradients differ.
    Forward: (B, c, h, w) -> (z_q (B, c, h, w), loss (scalar), indices (B, h, w)); the
    gradient of z_q flows to z unchanged: z_q = z + sg[e_k - z].
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, legacy: bool = False):
        super().__init__()
        self.num_codes, self.dim = _check_int("num_codes", num_codes, 2), _check_int("dim", dim)
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        self.beta, self.legacy = float(beta), bool(legacy)
        self.embedding = nn.Embedding(num_codes, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_codes, 1.0 / num_codes)

    def indices(self, z: Tensor) -> Tensor:
        """k = argmin_j ||z - e_j|| at every latent position: (B, c, h, w) -> (B, h, w)."""
        if not isinstance(z, Tensor) or z.dim() != 4 or z.shape[1] != self.dim:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"z must be (B, {self.dim}, h, w), got {got}")
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim)  # (B h w, c)
        return torch.cdist(flat, self.embedding.weight).argmin(dim=1).reshape(z.shape[0], *z.shape[2:])

    def lookup(self, indices: Tensor) -> Tensor:
        """The codes at ``indices`` (B, h, w) -> (B, c, h, w)."""
        return self.embedding(indices).permute(0, 3, 1, 2)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k = self.indices(z)  # (B, h, w)
        e = self.lookup(k)  # (B, c, h, w)
        codebook = F.mse_loss(e, z.detach())  # ||sg[z] - e||^2
        commitment = F.mse_loss(z, e.detach())  # ||z - sg[e]||^2
        loss = self.beta * codebook + commitment if self.legacy else codebook + self.beta * commitment
        # straight through: forward e, backward the identity to z
        z_q = z + (e - z).detach()  # (B, c, h, w)
        return z_q, loss, k

    def usage(self, indices: Tensor) -> tuple[Tensor, float]:
        """How often each code is used, (num_codes,) fractions, and the perplexity exp(H(p)):
        the effective number of codes in use (num_codes if all are equally used, 1 if one is)."""
        p = torch.bincount(indices.flatten(), minlength=self.num_codes).double() / indices.numel()
        # H(p) = -sum_k p_k log p_k (0 log 0 = 0)
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
        return p.float(), float(torch.exp(entropy))

    @torch.no_grad()
    def restart_dead_codes(self, z: Tensor, indices: Tensor, generator: torch.Generator | None = None) -> int:
        """Move every code unused in ``indices`` onto a random encoder output of the batch ``z``
        (dead-code restart, as in Jukebox, Dhariwal et al. 2020); return how many moved."""
        used = torch.bincount(indices.flatten(), minlength=self.num_codes) > 0  # (num_codes,)
        dead = (~used).nonzero().flatten()
        if len(dead):
            flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim)  # (B h w, c)
            pick = torch.randint(0, len(flat), (len(dead),), generator=generator).to(flat.device)
            self.embedding.weight[dead] = flat[pick]
        return len(dead)


class VQAutoencoder(Autoencoder):
    """A vector-quantised autoencoder (VQGAN's stage 1): the latent snaps to ``num_codes`` codes.

    ``encode(x)`` returns (z_q, vq loss, indices); ``decode(z_q)``; ``forward`` returns
    (x_hat, vq loss summed over an image's latent entries): a per-image sum, like the KL and
    like the reconstruction term of ``minildm.perceptual.AutoencoderLoss``. ``latents(x)`` gives the quantised latent; diffusion on VQ latents (LDM's
    VQ-reg.) diffuses the encoder output before quantising, and quantises in the decoder.
    """

    def __init__(self, in_channels: int = 3, latent_channels: int = 4, factor: int = 4, base: int = 32,
                 mults: Sequence[int] | None = None, num_res_blocks: int = 1, groups: int = 8,
                 num_codes: int = 256, beta: float = 0.25, legacy: bool = False):
        super().__init__(in_channels, latent_channels, factor, base, mults, num_res_blocks, groups)
        self.quantizer = VectorQuantizer(num_codes, latent_channels, beta, legacy)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.quantizer(self._encoded(x))

    def latents(self, x: Tensor) -> Tensor:
        return self.encode(x)[0]

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        z_q, loss, _ = self.encode(x)
        # the quantizer's loss is a mean over B h w c entries; per image: times c h w
        return self.decode(z_q), loss * z_q[0].numel()


@torch.no_grad()
def latent_scale_factor(autoencoder: Autoencoder, images: Tensor, batch_size: int = 256) -> float:
    """1 / std of the latents of ``images``: multiply latents by it so diffusion sees unit variance.

    The diffusion schedules assume data of about unit variance (x_T ~ N(0, I) must be far from
    any data point); a latent with std 5 or 0.2 would change the effective SNR at every t.
    Stable Diffusion's 0.18215 is this number for its VAE (Rombach et al. 2022, section 4.3.2).
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or len(images) < 2:
        raise ValueError("images must be a batch (N >= 2, C, H, W) of training images")
    device = next(autoencoder.parameters()).device
    z = torch.cat([autoencoder.latents(chunk.to(device)).cpu() for chunk in images.split(batch_size)])
    return float(1.0 / z.double().std())
