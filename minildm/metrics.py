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

For images (lesson 08) raw pixels are a poor space to compare in, so FID (Heusel et al. 2017)
and KID (Binkowski et al. 2018) compare *features* of a classifier trained on the data set
(``minildm.classifier``; Inception-v3 in the papers), computed by ``torchmetrics``:

* FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)), the Frechet distance between
  Gaussians fitted to the two feature clouds; biased (it shrinks as the sample count grows),
  so compare FIDs only at equal sample counts;
* KID = the unbiased MMD^2 with the cubic kernel k(x, y) = (x.y / d + 1)^3, averaged over
  random subsets; unbiased, so it can be compared across sample counts.

Neither sees whether a model copies its training set or draws the class it was asked for;
``agreement`` (the classifier's labels) and ``memorisation`` (nearest training images)
measure those.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from minildm.classifier import Classifier

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


# ---------------------------------------------------------------------------- images

class _Features(nn.Module):
    """The classifier's pooled features as the network torchmetrics calls: images -> (B, D)."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features  # read by torchmetrics instead of a dummy forward

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        # float64 so that torchmetrics sums the statistics (and KID's kernels) without float32 cancellation
        return self.classifier.features(images).double()  # (B, D)


def _images(name: str, x, classifier: Classifier, min_images: int = 2) -> Tensor:
    """x checked as (N, C, H, W) float images in [-1, 1] that ``classifier`` can read."""
    if not isinstance(classifier, Classifier):
        raise TypeError(f"classifier must be a minildm.classifier.Classifier, got {type(classifier).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be float images (N, C, H, W) in [-1, 1], got {got}")
    if x.shape[1] != classifier.in_channels:
        raise ValueError(f"{name} has {x.shape[1]} channels; the classifier reads {classifier.in_channels}")
    if x.shape[0] < min_images:
        raise ValueError(f"{name} must hold at least {min_images} images, got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or Inf values")
    return x


def _feed(metric, real: Tensor, fake: Tensor, batch_size: int) -> None:
    device = next(metric.inception.parameters()).device
    for images, is_real in ((real, True), (fake, False)):
        for chunk in images.split(batch_size):
            metric.update(chunk.to(device), real=is_real)


def fid(real: Tensor, fake: Tensor, classifier: Classifier, *, batch_size: int = 500) -> float:
    """FID between images ``real`` (N, C, H, W) and ``fake`` (M, C, H, W) in the classifier's features.

    torchmetrics' ``FrechetInceptionDistance`` with our network as ``feature``; images in
    [-1, 1] as everywhere in minildm. Needs N, M >= 2; FID is biased upwards at small N, M.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _images("real", real, classifier), _images("fake", fake, classifier)
    metric = FrechetInceptionDistance(feature=_Features(classifier).eval(), normalize=True)
    _feed(metric, real, fake, batch_size)
    return float(metric.compute())


def kid(real: Tensor, fake: Tensor, classifier: Classifier, *, subsets: int = 10, subset_size: int | None = None,
        seed: int = 0, batch_size: int = 500) -> tuple[float, float]:
    """KID (mean, std over ``subsets`` random subsets) between ``real`` and ``fake`` images.

    torchmetrics' ``KernelInceptionDistance`` (cubic kernel, gamma = 1 / feature_dim) with our
    features. ``subset_size`` defaults to the smaller of N and M (then the only randomness is
    which images form each subset); subsets are drawn with ``seed``, leaving the global RNG alone.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _images("real", real, classifier), _images("fake", fake, classifier)
    largest = min(real.shape[0], fake.shape[0])
    subset_size = largest if subset_size is None else subset_size
    if isinstance(subset_size, bool) or not isinstance(subset_size, numbers.Integral) or not 2 <= subset_size <= largest:
        raise ValueError(f"subset_size must be an int in [2, {largest}] (the smaller image count), got {subset_size!r}")
    with warnings.catch_warnings():  # "will save all extracted features in buffer": intended, and small here
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=_Features(classifier).eval(), subsets=subsets,
                                         subset_size=int(subset_size), normalize=True)
    _feed(metric, real, fake, batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def agreement(classifier: Classifier, images: Tensor, labels) -> float | dict[str, float]:
    """The fraction of ``images`` the classifier labels as ``labels`` says they should be.

    labels: a (N,) tensor of class indices for a one-head classifier (returns a float), or a
    mapping {head: (N,) tensor} for some of its heads (returns {head: fraction}).
    """
    images = _images("images", images, classifier, min_images=1)
    single = isinstance(labels, Tensor)
    if single:
        if len(classifier.heads) != 1:
            raise ValueError(f"the classifier has heads {list(classifier.heads)}: give labels as {{head: (N,) tensor}}")
        labels = {next(iter(classifier.heads)): labels}
    if not isinstance(labels, Mapping) or not labels:
        raise TypeError(f"labels must be a (N,) tensor or a mapping {{head: (N,) tensor}}, got {type(labels).__name__}")
    for head, y in labels.items():
        if head not in classifier.heads:
            raise ValueError(f"labels: unknown head {head!r}; the classifier has {list(classifier.heads)}")
        if not isinstance(y, Tensor) or y.shape != (images.shape[0],):
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"labels[{head!r}] must be a ({images.shape[0]},) tensor of class indices, got {got}")
    predicted = classifier.predict(images)
    result = {head: float((predicted[head] == y.cpu()).double().mean()) for head, y in labels.items()}
    return next(iter(result.values())) if single else result


def nearest_neighbours(queries: Tensor, references: Tensor, k: int = 1, *, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """The k nearest ``references`` of every query by Euclidean distance between whole images.

    queries (N, ...), references (M, ...) of the same per-item shape. Returns (distances (N, k),
    indices (N, k)), nearest first.
    """
    for name, x in (("queries", queries), ("references", references)):
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
            raise ValueError(f"{name} must be a float tensor (N, ...), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if queries.shape[1:] != references.shape[1:]:
        raise ValueError(f"queries {tuple(queries.shape)} and references {tuple(references.shape)} must have the "
                         "same shape after the first dimension")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= references.shape[0]:
        raise ValueError(f"k must be an int in [1, {references.shape[0]}] (the number of references), got {k!r}")
    refs = references.flatten(1).double()  # (M, P)
    distances, indices = [], []
    for chunk in queries.flatten(1).double().split(batch_size):
        d = torch.cdist(chunk, refs)  # (n, M)
        top = d.topk(int(k), dim=1, largest=False)
        distances.append(top.values)
        indices.append(top.indices)
    return torch.cat(distances), torch.cat(indices)


def memorisation(samples: Tensor, train: Tensor, *, alpha: float = 0.5, n: int = 50) -> tuple[float, Tensor]:
    """The fraction of ``samples`` that copy a training image, and each sample's ratio.

    Carlini et al. (2023), "Extracting training data from diffusion models", sec. 4.1: a
    sample x is a copy when its nearest training image is much closer than the rest of its
    neighbourhood, l2(x, x_1) / (alpha * mean_{j <= n} l2(x, x_j)) < 1 over its n nearest training
    images x_1..x_n. A ratio near 1 means "as close to one training image as to many": new.
    Returns (fraction of samples with ratio < 1, ratios (N,)).
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    distances, _ = nearest_neighbours(samples, train, k=n)  # (N, n)
    ratio = distances[:, 0] / (alpha * distances.mean(1)).clamp(min=1e-12)  # (N,)
    return float((ratio < 1).double().mean()), ratio
