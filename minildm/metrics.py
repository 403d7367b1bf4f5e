"""Measuring samples: how far a cloud of generated points lies from the data.

A generative model is judged by the distance between two distributions we only know through
samples. For low-dimensional point clouds (the 2-D toys of lessons 03-04) two distances are
cheap, need no feature network, and are exactly zero only when the distributions agree:

* the sliced Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015): project both
  clouds on random directions theta and average the 1-D Wasserstein distances, which sorting
  gives exactly;  SW_p(a, b)^p = E_theta W_p^p(<theta, a>, <theta, b>).
  It is in the units of the data: "how far, on average, must mass move".
* the maximum mean discrepancy with Gaussian (RBF) kernels (Gretton et al. 2012):
  MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y), summed over several bandwidths so that both
  coarse and fine differences count. We return the *unbiased* estimate of MMD^2 (Gretton et
  al. eq. 3, the U-statistic): it averages to the true value, so it can be slightly negative
  when the two distributions are the same.

FID and KID on image features come with lesson 08.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import Tensor

DEFAULT_BANDWIDTHS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)  # for standardised data (unit variance per axis)


def _point_cloud(name: str, x, min_points: int = 1) -> Tensor:
    """x as a float64 CPU tensor of shape (N, D), checked finite."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array of shape (N, D), got {type(x).__name__}")
    if x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (N, D) (N points in D dimensions), got shape {tuple(x.shape)}")
    if x.shape[0] < min_points or x.shape[1] < 1:
        raise ValueError(f"{name} must hold at least {min_points} point(s) of dimension >= 1, got shape {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or Inf values")
    return x


def _same_dimension(a: Tensor, b: Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same dimension D, got a {tuple(a.shape)} and b {tuple(b.shape)}")


def wasserstein_1d(u: Tensor, v: Tensor, p: int = 1) -> Tensor:
    """Exact W_p between the empirical distributions of u (n, P) and v (m, P), column by column: (P,).

    W_p^p = int_0^1 |F_u^{-1}(q) - F_v^{-1}(q)|^p dq, the quantile functions being step functions
    that change at q = i/n and q = j/m; on each piece between those breakpoints both are constant.
    With n = m it is mean |sort(u) - sort(v)|^p.
    """
    n, m = u.shape[0], v.shape[0]
    u, v = u.sort(dim=0).values, v.sort(dim=0).values  # (n, P), (m, P)
    # breakpoints of both quantile functions on (0, 1], merged
    q = torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n,
                   torch.arange(1, m + 1, dtype=torch.float64) / m]).sort().values  # (n + m,)
    widths = torch.diff(q, prepend=torch.zeros(1, dtype=torch.float64))  # (n + m,)
    middle = q - widths / 2
    # F^{-1}(q) = the ceil(q n)-th smallest value: index floor(q n) at an interior point
    i = (middle * n).floor().long().clamp(max=n - 1)
    j = (middle * m).floor().long().clamp(max=m - 1)
    # W_p^p = sum over pieces of width * |u_i - v_j|^p
    cost = (widths[:, None] * (u[i] - v[j]).abs() ** p).sum(0)  # (P,)
    return cost ** (1 / p)


def sliced_wasserstein(a, b, *, n_projections: int = 256, p: int = 1,
                       generator: torch.Generator | None = None) -> float:
    """The sliced Wasserstein-p distance between point clouds a (N, D) and b (M, D).

    Directions theta are drawn uniformly on the unit sphere (normalised Gaussians) from
    ``generator``; SW_p = (mean_theta W_p(<theta, a>, <theta, b>)^p)^(1/p), each 1-D W_p exact
    (``wasserstein_1d``). For D = 1 every direction is +-1 and SW_p is the exact W_p.
    N and M may differ. Returns a Python float in the units of the data.
    """
    a, b = _point_cloud("a", a), _point_cloud("b", b)
    _same_dimension(a, b)
    if isinstance(n_projections, bool) or not isinstance(n_projections, numbers.Integral) or n_projections < 1:
        raise ValueError(f"n_projections must be a positive int, got {n_projections!r}")
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    theta = torch.randn(a.shape[1], int(n_projections), generator=generator, dtype=torch.float64)  # (D, P)
    theta = theta / theta.norm(dim=0, keepdim=True)
    # SW_p^p = mean_theta W_p^p(a theta, b theta)
    per_direction = wasserstein_1d(a @ theta, b @ theta, p)  # (P,)
    return float((per_direction**p).mean() ** (1 / p))


def mmd(a, b, *, bandwidths=DEFAULT_BANDWIDTHS) -> float:
    """Unbiased estimate of MMD^2 between point clouds a (N, D) and b (M, D), N, M >= 2.

    Kernel: k(x, y) = sum_s exp(-||x - y||^2 / (2 s^2)) over the ``bandwidths`` s (in data
    units; the defaults suit standardised data). The U-statistic leaves out the diagonal
    k(x_i, x_i) of the within-cloud terms, so it is unbiased and may be slightly below 0 when
    a and b come from the same distribution. Returns a Python float.
    """
    a, b = _point_cloud("a", a, min_points=2), _point_cloud("b", b, min_points=2)
    _same_dimension(a, b)
    if isinstance(bandwidths, numbers.Real):
        bandwidths = (bandwidths,)
    try:
        s = torch.tensor([float(x) for x in bandwidths], dtype=torch.float64)  # (S,)
    except (TypeError, ValueError) as err:
        raise TypeError(f"bandwidths must be a positive number or a sequence of them, got {bandwidths!r}") from err
    if s.numel() == 0 or not (s > 0).all() or not torch.isfinite(s).all():
        raise ValueError(f"bandwidths must be positive finite numbers, got {bandwidths!r}")

    def kernel(x: Tensor, y: Tensor) -> Tensor:
        # ||x - y||^2 = ||x||^2 + ||y||^2 - 2 <x, y>   (float64: the cancellation costs ~1e-15)
        sq = (x.pow(2).sum(1)[:, None] + y.pow(2).sum(1)[None, :] - 2 * x @ y.T).clamp(min=0)  # (n, m)
        # k(x, y) = sum_s exp(-||x - y||^2 / (2 s^2))
        return sum(torch.exp(-sq / (2 * width**2)) for width in s.tolist())  # (n, m)

    n, m = a.shape[0], b.shape[0]
    k_aa, k_bb, k_ab = kernel(a, a), kernel(b, b), kernel(a, b)
    # MMD_u^2 = sum_{i != j} k(a_i, a_j) / (n (n-1)) + sum_{i != j} k(b_i, b_j) / (m (m-1)) - 2 mean k(a_i, b_j)
    within_a = (k_aa.sum() - k_aa.diagonal().sum()) / (n * (n - 1))
    within_b = (k_bb.sum() - k_bb.diagonal().sum()) / (m * (m - 1))
    return float(within_a + within_b - 2 * k_ab.mean())
