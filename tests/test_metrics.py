"""Distances between point clouds: sliced Wasserstein and MMD, against independent references."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from minildm import metrics


def cloud(n, d=2, seed=0, shift=0.0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * scale + shift  # (n, d)


# ---------------------------------------------------------------------------- sliced Wasserstein

@pytest.mark.parametrize("n, m", [(50, 50), (37, 64), (1, 9)])
def test_sliced_wasserstein_in_1d_is_scipys_exact_wasserstein_distance(n, m):
    # in 1-D every direction is +-1, so SW_1 is the exact W_1, which scipy computes from the CDFs
    a, b = cloud(n, 1, seed=1), cloud(m, 1, seed=2, shift=0.7, scale=1.5)
    expected = stats.wasserstein_distance(a[:, 0].numpy(), b[:, 0].numpy())
    assert metrics.sliced_wasserstein(a, b, n_projections=5) == pytest.approx(expected, rel=1e-9)


def test_sliced_wasserstein_2_in_1d_is_the_mean_squared_gap_of_sorted_samples():
    a, b = cloud(40, 1, seed=3), cloud(40, 1, seed=4, shift=-1.0)
    # W_2^2 = mean (sort(a) - sort(b))^2 for equal sizes
    expected = math.sqrt(((np.sort(a[:, 0].double().numpy()) - np.sort(b[:, 0].double().numpy())) ** 2).mean())
    assert metrics.sliced_wasserstein(a, b, p=2, n_projections=3) == pytest.approx(expected, rel=1e-9)


def test_wasserstein_1d_with_unequal_sizes_matches_scipy_column_by_column():
    u, v = cloud(13, 3, seed=5), cloud(21, 3, seed=6, shift=0.3)
    ours = metrics.wasserstein_1d(u.double(), v.double())
    expected = [stats.wasserstein_distance(u[:, k].numpy(), v[:, k].numpy()) for k in range(3)]
    assert torch.allclose(ours, torch.tensor(expected, dtype=torch.float64), rtol=1e-9)


def test_sliced_wasserstein_of_a_translation_is_the_mean_projected_shift():
    # b = a + s exactly: every 1-D projection is shifted by <theta, s>, so W_1 = |<theta, s>| and
    # SW_1 = E|<theta, s>| = |s| E|cos phi| = |s| 2/pi for theta uniform on the circle
    a = cloud(40, 2, seed=7)
    s = torch.tensor([0.6, -0.8])
    got = metrics.sliced_wasserstein(a, a + s, n_projections=5_000, generator=torch.Generator().manual_seed(0))
    assert got == pytest.approx(2 / math.pi * s.norm().item(), rel=0.03)


def test_sliced_wasserstein_is_zero_for_the_same_cloud_in_another_order_and_symmetric():
    a, b = cloud(100, 3, seed=8), cloud(80, 3, seed=9, shift=0.5)
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(1))
    assert metrics.sliced_wasserstein(a, a[perm]) == pytest.approx(0.0, abs=1e-12)
    ab = metrics.sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(2))
    ba = metrics.sliced_wasserstein(b, a, generator=torch.Generator().manual_seed(2))
    assert ab == pytest.approx(ba, rel=1e-12) and ab > 0.1


def test_sliced_wasserstein_grows_with_the_shift_and_is_near_zero_between_samples_of_one_law():
    same = metrics.sliced_wasserstein(cloud(1000, seed=10), cloud(1000, seed=11))
    shifted = [metrics.sliced_wasserstein(cloud(1000, seed=10), cloud(1000, seed=11, shift=d)) for d in (0.25, 0.5, 1)]
    assert same < 0.06
    assert same < shifted[0] < shifted[1] < shifted[2]


# ---------------------------------------------------------------------------- MMD

def brute_force_mmd2(a, b, bandwidths):
    """The unbiased MMD^2 U-statistic by plain double loops over the points."""
    def k(x, y):
        d2 = sum((xi - yi) ** 2 for xi, yi in zip(x, y))
        return sum(math.exp(-d2 / (2 * s * s)) for s in bandwidths)

    a, b = a.tolist(), b.tolist()
    n, m = len(a), len(b)
    kaa = sum(k(a[i], a[j]) for i, j in itertools.product(range(n), repeat=2) if i != j) / (n * (n - 1))
    kbb = sum(k(b[i], b[j]) for i, j in itertools.product(range(m), repeat=2) if i != j) / (m * (m - 1))
    kab = sum(k(x, y) for x in a for y in b) / (n * m)
    return kaa + kbb - 2 * kab


@pytest.mark.parametrize("bandwidths", [(0.5,), (0.1, 1.0, 3.0)])
def test_mmd_equals_the_brute_force_unbiased_u_statistic(bandwidths):
    a, b = cloud(12, 2, seed=12), cloud(9, 2, seed=13, shift=0.4)
    assert metrics.mmd(a, b, bandwidths=bandwidths) == pytest.approx(brute_force_mmd2(a, b, bandwidths), rel=1e-9)


def test_mmd_is_near_zero_for_one_distribution_and_clearly_positive_for_a_shifted_one():
    a, b = cloud(500, seed=14), cloud(500, seed=15)
    same = metrics.mmd(a, b)
    shifted = metrics.mmd(a, cloud(500, seed=15, shift=0.5))
    # the U-statistic is unbiased: for one distribution it scatters around 0 (either sign)
    assert abs(same) < 0.01 and shifted > 0.1
    assert shifted > 20 * abs(same)


def test_mmd_is_unbiased_so_its_average_over_repeats_is_zero_for_one_distribution():
    # the biased V-statistic would average to (E k(x, x) - E k(x, x')) (1/n + 1/m) > 0
    values = torch.tensor([metrics.mmd(cloud(20, seed=2 * r), cloud(20, seed=2 * r + 1), bandwidths=1.0)
                           for r in range(200)])
    se = values.std() / math.sqrt(len(values))
    assert abs(values.mean()) < 4 * se


def test_mmd_is_symmetric_and_accepts_numpy_and_a_single_bandwidth():
    a, b = cloud(30, seed=16), cloud(40, seed=17, shift=0.2)
    assert metrics.mmd(a, b) == pytest.approx(metrics.mmd(b, a), rel=1e-12)
    assert metrics.mmd(a.numpy(), b.numpy(), bandwidths=0.3) == pytest.approx(metrics.mmd(a, b, bandwidths=[0.3]))


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("fn", [metrics.sliced_wasserstein, metrics.mmd])
def test_bad_point_clouds_are_refused_with_the_argument_named(fn):
    good = cloud(10)
    with pytest.raises(TypeError, match="a must be"):
        fn([[0.0, 1.0]], good)
    with pytest.raises(ValueError, match=r"b must have shape \(N, D\)"):
        fn(good, torch.zeros(10))
    with pytest.raises(ValueError, match="same dimension"):
        fn(good, cloud(10, d=3))
    with pytest.raises(ValueError, match="NaN or Inf"):
        fn(good, torch.full((4, 2), float("nan")))
    with pytest.raises(ValueError, match="at least"):
        fn(torch.zeros(0, 2), good)


def test_bad_options_are_refused():
    a = cloud(10)
    with pytest.raises(ValueError, match="n_projections"):
        metrics.sliced_wasserstein(a, a, n_projections=0)
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        metrics.sliced_wasserstein(a, a, p=3)
    with pytest.raises(ValueError, match="bandwidths"):
        metrics.mmd(a, a, bandwidths=[1.0, -1.0])
    with pytest.raises(TypeError, match="bandwidths"):
        metrics.mmd(a, a, bandwidths="wide")
    with pytest.raises(ValueError, match="at least 2"):
        metrics.mmd(a[:1], a)
