"""The networks: a small MLP denoiser for 2-D toy data, and, from their own modules, the U-Net
(``minildm.unet``), the autoencoders (``minildm.autoencoders``) and the PatchGAN
(``minildm.perceptual``).

A denoiser is a function eps_theta(x_t, t): it sees the noisy point and the timestep and
predicts the noise (or x0, or v). The timestep enters through a sinusoidal embedding, the
positional encoding of Vaswani et al. (2017) applied to t, as in Ho et al. (2020).
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn

from minildm.nn import timestep_embedding


class ToyMLP(nn.Module):
    """A time-conditioned residual MLP denoiser for points in R^dim.

    x_t (B, dim) and t (LongTensor[B] or an int) -> (B, out_dim). ``out_dim`` defaults to
    ``dim``; use 2 * dim for a learned_range variance. The timestep embedding is projected to
    the hidden width and added before each of the ``depth`` residual layers.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 64,
                 out_dim: int | None = None, T: int = 1000):
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("depth", depth), ("time_dim", time_dim), ("T", T)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.dim, self.T, self.time_dim = dim, T, time_dim
        self.out_dim = dim if out_dim is None else out_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim, hidden)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, self.out_dim))

    def forward(self, x_t: Tensor, t) -> Tensor:
        if x_t.dim() != 2 or x_t.shape[1] != self.dim:
            raise ValueError(f"x_t must have shape (B, {self.dim}), got {tuple(x_t.shape)}")
        if isinstance(t, numbers.Integral) and not isinstance(t, bool):
            t = torch.full((x_t.shape[0],), int(t), dtype=torch.long, device=x_t.device)
        if not isinstance(t, Tensor) or t.dtype.is_floating_point or t.shape != (x_t.shape[0],):
            raise TypeError(f"t must be an int or a LongTensor of shape [{x_t.shape[0]}], got {t!r:.60}")
        if ((t < 0) | (t >= self.T)).any():
            raise ValueError(f"t must lie in [0, {self.T - 1}], got {t.min().item()}..{t.max().item()}")
        temb = self.time_mlp(timestep_embedding(t, self.time_dim).to(x_t.dtype))  # (B, hidden)
        h = self.inp(x_t)  # (B, hidden)
        for layer in self.layers:
            h = h + layer(h + temb)  # (B, hidden)
        return self.out(h)  # (B, out_dim)


from minildm.unet import UNet  # noqa: E402,F401  (the image model, in its own module)
from minildm.autoencoders import Autoencoder, AutoencoderKL, VQAutoencoder  # noqa: E402,F401
from minildm.perceptual import PatchGAN  # noqa: E402,F401
from minildm.controlnet import ControlNet, ControlledUNet, MultiControlNet  # noqa: E402,F401  (lesson 14)
