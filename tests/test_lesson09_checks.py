"""The lesson 09 checks accept answers computed another way, and refuse plausible wrong ones.

The references inside ``minildm.checks.lesson09`` are compared here with independent
computations: diffusers' ``DiagonalGaussianDistribution`` and ``VectorQuantizer``,
scikit-image's PSNR, and torch's ``hinge_embedding_loss``.
(Each listed Mistake being named as itself is pinned generically in test_lesson_checks.py.)
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution, VectorQuantizer
from skimage.metrics import peak_signal_noise_ratio

from minildm.checks import CheckFailed
from minildm.checks import lesson09 as L9


def diffusers_kl(parameters):
    return DiagonalGaussianDistribution(parameters).kl()


def diffusers_quantize(z, codebook):
    vq = VectorQuantizer(len(codebook), codebook.shape[1], beta=0.25)
    vq.embedding.weight.data.copy_(codebook)
    z_q, _, (_, _, indices) = vq(z)
    return z_q, indices.reshape(z.shape[0], *z.shape[2:])


def skimage_psnr(x, y):
    return torch.tensor([peak_signal_noise_ratio(a.double().numpy(), b.double().numpy(), data_range=2.0)
                         for a, b in zip(x, y)], dtype=torch.float32)


def torch_hinge(logits_real, logits_fake):
    # hinge_embedding_loss with target -1 is max(0, 1 - input): 1 - D(x) for real, 1 + D(x_hat) = 1 - (-D(x_hat))
    minus_one = lambda t: -torch.ones_like(t)  # noqa: E731
    return 0.5 * (F.hinge_embedding_loss(logits_real, minus_one(logits_real))
                  + F.hinge_embedding_loss(-logits_fake, minus_one(logits_fake)))


@pytest.mark.parametrize("check, independent", [
    (L9.kl_diagonal_gaussian, diffusers_kl),
    (L9.quantize, diffusers_quantize),
    (L9.psnr, skimage_psnr),
    (L9.hinge_d_loss, torch_hinge),
], ids=["kl_diagonal_gaussian", "quantize", "psnr", "hinge_d_loss"])
def test_check_accepts_an_independent_computation(check, independent):
    check(independent)  # raises CheckFailed if the reference disagrees with the independent answer


def test_kl_cases_reach_past_the_clamp_so_an_unclamped_kl_is_caught():
    def unclamped(parameters):
        mean, logvar = parameters.chunk(2, dim=1)
        return 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))

    with pytest.raises(CheckFailed, match="not clamped"):
        L9.kl_diagonal_gaussian(unclamped)


def test_quantize_check_sees_a_missing_straight_through_by_its_gradient():
    def no_straight_through(z, codebook):
        z_q, k = diffusers_quantize(z, codebook)
        return z_q.detach(), k  # the right values, but no gradient reaches z

    with pytest.raises(CheckFailed, match="straight-through"):
        L9.quantize(no_straight_through)


def test_quantize_check_says_what_to_return_when_only_z_q_comes_back():
    with pytest.raises(CheckFailed, match=r"tuple \(z_q, indices\)"):
        L9.quantize(lambda z, codebook: diffusers_quantize(z, codebook)[0])


def test_psnr_check_names_the_peak_of_images_in_zero_one():
    def peak_one(x, y):
        return torch.from_numpy(np.array([peak_signal_noise_ratio(a.numpy(), b.numpy(), data_range=1.0)
                                          for a, b in zip(x, y)], dtype=np.float32))

    with pytest.raises(CheckFailed, match="peak 1"):
        L9.psnr(peak_one)


def test_not_implemented_passes_through_every_check():
    def todo(*args, **kwargs):
        raise NotImplementedError()

    for check in (L9.kl_diagonal_gaussian, L9.quantize, L9.psnr, L9.hinge_d_loss):
        with pytest.raises(NotImplementedError):
            check(todo)
