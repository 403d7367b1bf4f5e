"""Checks for lesson 08 (measuring samples): feature statistics, the Frechet distance, KID, memorisation.

FID (Heusel et al. 2017, eq. 6) fits a Gaussian to each feature cloud, mean mu and covariance
Sigma with the unbiased 1 / (N - 1), and returns the Frechet distance between the two:
||mu_1 - mu_2||^2 + Tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^(1/2)), where the square
root is a *matrix* square root. KID (Binkowski et al. 2018, sec. 3) is the unbiased estimate
of MMD^2 with the cubic kernel k(x, y) = (x . y / d + 1)^3: the within-set means leave out
the diagonal k(x_i, x_i). The memorisation ratio follows Carlini et al. (2023, sec. 4.1):
l2(x, x_1) / (alpha * mean_{j <= n} l2(x, x_j)) over a sample's n nearest training images.

Inputs are drawn so that each slip moves the answer past the tolerance: few points (so
N versus N - 1 is a 10 % change), correlated features and covariances that do not commute
(so an elementwise or a per-factor square root differs from the matrix square root), and a
handful of dimensions (so a kernel without its 1 / d changes by far more than rounding).
"""

from __future__ import annotations

import torch

from ..metrics import memorisation as _package_memorisation
from .core import Mistake, compare

__all__ = ["feature_statistics", "frechet_distance", "kid_unbiased", "memorisation_ratio"]


def _features(generator: torch.Generator, n: int, d: int) -> torch.Tensor:
    """n correlated feature vectors (n, d) in float64, centred away from 0."""
    mixing = torch.randn(d, d, generator=generator, dtype=torch.float64)  # correlates the features
    offset = 2 * torch.rand(d, generator=generator, dtype=torch.float64)
    return torch.randn(n, d, generator=generator, dtype=torch.float64) @ mixing + offset  # (n, d)


# ---------------------------------------------------------------------------- feature_statistics

def _statistics_case(generator: torch.Generator) -> dict:
    n, d = int(torch.randint(5, 11, (), generator=generator)), int(torch.randint(2, 6, (), generator=generator))
    return {"features": _features(generator, n, d)}


def _statistics(features, unbiased=True, centred=True):
    n = features.shape[0]
    mu = features.mean(0)  # (D,)
    centred_features = features - mu if centred else features  # (N, D)
    # Sigma = sum_i (f_i - mu)(f_i - mu)^T / (N - 1)
    sigma = centred_features.T @ centred_features / (n - 1 if unbiased else n)  # (D, D)
    return mu, sigma


def feature_statistics(learner) -> None:
    """Check ``learner(features)``: (N, D) -> (mean (D,), covariance (D, D) with 1 / (N - 1))."""
    __tracebackhide__ = True
    compare(learner, _statistics, _statistics_case, name="feature_statistics", mistakes=[
        Mistake("the covariance divided by N instead of N - 1", lambda features: _statistics(features, unbiased=False),
                "FID uses the unbiased sample covariance, as torch.cov and numpy.cov do: divide by N - 1."),
        Mistake("the second moment not centred (mean not subtracted)",
                lambda features: _statistics(features, centred=False),
                "subtract the mean from every feature vector before the outer products: (f - mu)^T (f - mu)."),
        Mistake("only the variances (a diagonal covariance)",
                lambda features: (features.mean(0), torch.diag(features.var(0))),
                "FID needs the full covariance: the features are correlated, and the off-diagonal terms count."),
    ], hint="mu = features.mean(0); c = features - mu; sigma = c.T @ c / (len(features) - 1); return mu, sigma")


# ---------------------------------------------------------------------------- frechet_distance

def _spd(generator: torch.Generator, d: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)  # (d, d) symmetric positive definite


def _frechet_case(generator: torch.Generator) -> dict:
    d = int(torch.randint(2, 6, (), generator=generator))
    return {"mu1": torch.randn(d, generator=generator, dtype=torch.float64), "sigma1": _spd(generator, d),
            "mu2": torch.randn(d, generator=generator, dtype=torch.float64), "sigma2": _spd(generator, d)}


def _sqrtm(sigma: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix: V diag(sqrt(lambda)) V^T."""
    eigenvalues, vectors = torch.linalg.eigh(sigma)
    return (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T


def _trace_sqrt_product(sigma1, sigma2):
    # Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2): the same eigenvalues, and the right side is symmetric
    root = _sqrtm(sigma1)
    return torch.linalg.eigvalsh(root @ sigma2 @ root).clamp(min=0).sqrt().sum()


def _frechet_with(mean_term=lambda m: m.pow(2).sum(), cross=_trace_sqrt_product, factor=2.0):
    def distance(mu1, sigma1, mu2, sigma2):
        # d^2 = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr (S1 S2)^(1/2)
        return float(mean_term(mu1 - mu2) + sigma1.trace() + sigma2.trace() - factor * cross(sigma1, sigma2))
    return distance


def frechet_distance(learner) -> None:
    """Check ``learner(mu1, sigma1, mu2, sigma2)``: the Frechet distance between two Gaussians, a float."""
    __tracebackhide__ = True
    compare(learner, _frechet_with(), _frechet_case, name="frechet_distance", mistakes=[
        Mistake("the elementwise square root of sigma1 * sigma2 instead of the matrix square root",
                _frechet_with(cross=lambda s1, s2: (s1.diagonal() * s2.diagonal()).sqrt().sum()),
                "(sigma1 @ sigma2)^(1/2) is a matrix square root, R with R @ R = sigma1 @ sigma2; its trace is the "
                "sum of the square roots of the eigenvalues of sigma1 @ sigma2 (torch.linalg.eigvals)."),
        Mistake("the product of the two square roots, sqrt(sigma1) @ sqrt(sigma2)",
                _frechet_with(cross=lambda s1, s2: (_sqrtm(s1) @ _sqrtm(s2)).trace()),
                "(S1 S2)^(1/2) equals S1^(1/2) S2^(1/2) only when S1 and S2 commute; take the square root of the "
                "product, e.g. the square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2)."),
        Mistake("the distance between the means not squared", _frechet_with(mean_term=lambda m: m.norm()),
                "the first term is the squared distance ||mu1 - mu2||^2 = ((mu1 - mu2) ** 2).sum()."),
        Mistake("the cross term without its factor 2", _frechet_with(factor=1.0),
                "Tr(S1 + S2 - 2 (S1 S2)^(1/2)): for two equal Gaussians the distance must be 0."),
    ], hint="m = ((mu1 - mu2) ** 2).sum(); cross = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum(); "
            "return float(m + sigma1.trace() + sigma2.trace() - 2 * cross)")


# ---------------------------------------------------------------------------- kid_unbiased

def _kid_case(generator: torch.Generator) -> dict:
    n, m = int(torch.randint(5, 9, (), generator=generator)), int(torch.randint(9, 13, (), generator=generator))
    d = int(torch.randint(3, 8, (), generator=generator))
    return {"f_real": _features(generator, n, d) / 2, "f_fake": _features(generator, m, d) / 2}


def _cubic_kernel(x, y, gamma=None):
    # k(x, y) = (gamma x . y + 1)^3, gamma = 1 / d
    gamma = 1 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + 1) ** 3


def _kid_with(unbiased=True, gamma=None, cross_factor=2.0):
    def kid(f_real, f_fake):
        n, m = f_real.shape[0], f_fake.shape[0]
        k_rr, k_ff = _cubic_kernel(f_real, f_real, gamma), _cubic_kernel(f_fake, f_fake, gamma)  # (n, n), (m, m)
        k_rf = _cubic_kernel(f_real, f_fake, gamma)  # (n, m)
        if unbiased:
            # sum_{i != j} k(x_i, x_j) / (n (n - 1)): the diagonal k(x_i, x_i) left out
            within = ((k_rr.sum() - k_rr.trace()) / (n * (n - 1)) + (k_ff.sum() - k_ff.trace()) / (m * (m - 1)))
        else:
            within = k_rr.mean() + k_ff.mean()
        # MMD_u^2 = within - 2 mean_{i, j} k(x_i, y_j)
        return float(within - cross_factor * k_rf.mean())
    return kid


def kid_unbiased(learner) -> None:
    """Check ``learner(f_real, f_fake)``: the unbiased MMD^2 with k(x, y) = (x . y / d + 1)^3, a float."""
    __tracebackhide__ = True
    compare(learner, _kid_with(), _kid_case, name="kid_unbiased", mistakes=[
        Mistake("the biased estimate: the diagonal k(x_i, x_i) kept in the within-set means",
                _kid_with(unbiased=False),
                "a point compared with itself always looks similar; leave out i = j: "
                "(K.sum() - K.trace()) / (n * (n - 1)). Then the estimate averages to the true MMD^2."),
        Mistake("the kernel without the 1 / d scaling", _kid_with(gamma=1.0),
                "k(x, y) = (x . y / d + 1) ** 3 with d = the feature dimension, f_real.shape[1]."),
        Mistake("the cross term counted once (- mean k(x, y) instead of - 2 mean k(x, y))",
                _kid_with(cross_factor=1.0),
                "MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y): with both sets equal it must be about 0."),
    ], hint="k = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3; with K = k(f_real, f_real) (n x n), "
            "(K.sum() - K.trace()) / (n * (n - 1)) is the within-set mean; the same for f_fake; "
            "minus 2 * k(f_real, f_fake).mean()")


# ---------------------------------------------------------------------------- memorisation_ratio

def _memorisation_case(generator: torch.Generator) -> dict:
    m = int(torch.randint(15, 25, (), generator=generator))
    train = torch.rand(m, 1, 4, 4, generator=generator, dtype=torch.float64) * 2 - 1  # (M, 1, 4, 4)
    fresh = torch.rand(3, 1, 4, 4, generator=generator, dtype=torch.float64) * 2 - 1
    copies = train[:2] + 0.02 * torch.randn(2, 1, 4, 4, generator=generator, dtype=torch.float64)
    n = int(torch.randint(4, 9, (), generator=generator))
    return {"samples": torch.cat([fresh, copies]), "train": train, "alpha": 0.5, "n": n}


def _memorisation_ratio(samples, train, alpha, n):
    return _package_memorisation(samples, train, alpha=alpha, n=n)[1]


def _ratio_with(power=1, skip_nearest=False, alpha_on_nearest=False, whole_set=False):
    """The memorisation ratio with one part changed, for the mistakes below."""
    def ratio(samples, train, alpha, n):
        d = torch.cdist(samples.flatten(1), train.flatten(1)).sort(dim=1).values ** power  # (N, M), nearest first
        neighbourhood = d if whole_set else d[:, (1 if skip_nearest else 0):n]
        if alpha_on_nearest:
            return alpha * d[:, 0] / neighbourhood.mean(1)
        # r = d_1 / (alpha * mean_{j <= n} d_j)
        return d[:, 0] / (alpha * neighbourhood.mean(1))
    return ratio


def memorisation_ratio(learner) -> None:
    """Check ``learner(samples, train, alpha, n)``: l2(x, x_1) / (alpha * mean of the n nearest l2), (N,)."""
    __tracebackhide__ = True
    compare(learner, _memorisation_ratio, _memorisation_case, name="memorisation_ratio", mistakes=[
        Mistake("squared distances", _ratio_with(power=2),
                "use the Euclidean distance itself, ||x - x_j|| (torch.cdist), not its square."),
        Mistake("the nearest neighbour left out of the mean", _ratio_with(skip_nearest=True),
                "the mean runs over the n nearest training images, the nearest one included: "
                "distances[:, :n].mean(1)."),
        Mistake("alpha multiplying the nearest distance instead of the mean", _ratio_with(alpha_on_nearest=True),
                "alpha scales the neighbourhood: ratio = d_1 / (alpha * mean_j d_j)."),
        Mistake("the mean over all training images instead of the n nearest", _ratio_with(whole_set=True),
                "only the n nearest training images form the neighbourhood: sort the distances and average "
                "the first n."),
    ], hint="d = torch.cdist(samples.flatten(1), train.flatten(1)).sort(dim=1).values[:, :n]; "
            "return d[:, 0] / (alpha * d.mean(1))")
