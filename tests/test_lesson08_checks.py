"""The lesson 08 checks accept answers computed another way, and refuse plausible wrong ones.

The references inside ``minildm.checks.lesson08`` are compared here with independent
computations: numpy's covariance, scipy's matrix square root, torchmetrics' KID kernel and
a loop over pairs, and a brute-force sort of all distances for the memorisation ratio.
(Each listed Mistake being named as itself is pinned generically in test_lesson_checks.py.)
"""

import numpy as np
import pytest
import scipy.linalg
import torch

from minildm.checks import CheckFailed
from minildm.checks import lesson08 as L8


def numpy_statistics(features):
    x = features.numpy()
    return torch.from_numpy(x.mean(0)), torch.from_numpy(np.cov(x, rowvar=False))


def scipy_frechet(mu1, sigma1, mu2, sigma2):
    # FID as in Heusel et al.'s reference code: scipy.linalg.sqrtm of the (non-symmetric) product
    root = scipy.linalg.sqrtm(sigma1.numpy() @ sigma2.numpy())
    return float(((mu1 - mu2) ** 2).sum() + sigma1.trace() + sigma2.trace() - 2 * np.trace(root.real))


def kid_by_pairs(f_real, f_fake):
    # the U-statistic written out pair by pair, with the kernel torchmetrics uses
    from torchmetrics.image.kid import poly_kernel

    def mean_off_diagonal(f):
        k = poly_kernel(f, f)
        n = len(f)
        return sum(float(k[i, j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))

    return mean_off_diagonal(f_real) + mean_off_diagonal(f_fake) - 2 * float(poly_kernel(f_real, f_fake).mean())


def memorisation_by_sorting(samples, train, alpha, n):
    ratios = []
    for x in samples:
        d = sorted(float((x - t).pow(2).sum().sqrt()) for t in train)[:n]
        ratios.append(d[0] / (alpha * sum(d) / n))
    return torch.tensor(ratios, dtype=torch.float64)


@pytest.mark.parametrize("check, independent", [
    (L8.feature_statistics, numpy_statistics),
    (L8.frechet_distance, scipy_frechet),
    (L8.kid_unbiased, kid_by_pairs),
    (L8.memorisation_ratio, memorisation_by_sorting),
], ids=["feature_statistics", "frechet_distance", "kid_unbiased", "memorisation_ratio"])
def test_check_accepts_an_independent_computation(check, independent):
    check(independent)  # raises CheckFailed if the reference disagrees with the independent answer


def test_frechet_distance_refuses_a_tensor_and_says_to_use_item():
    with pytest.raises(CheckFailed, match="item"):
        L8.frechet_distance(lambda mu1, sigma1, mu2, sigma2: torch.tensor(scipy_frechet(mu1, sigma1, mu2, sigma2)))


def test_kid_check_refuses_the_biased_estimate_by_name():
    def biased(f_real, f_fake):
        k = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3  # noqa: E731
        return float(k(f_real, f_real).mean() + k(f_fake, f_fake).mean() - 2 * k(f_real, f_fake).mean())

    with pytest.raises(CheckFailed, match="biased estimate"):
        L8.kid_unbiased(biased)


def test_not_implemented_passes_through():
    def todo(features):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError):
        L8.feature_statistics(todo)
