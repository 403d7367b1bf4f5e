"""Autoencoders (plain, KL, VQ), their training loss, and parity with diffusers' pieces."""

import math

import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution, VectorQuantizer as DiffusersVQ

from minildm import autoencoders, classifier, perceptual
from minildm.autoencoders import Autoencoder, AutoencoderKL, DiagonalGaussian, VectorQuantizer, VQAutoencoder


def test_kl_equals_diffusers_diagonal_gaussian_including_the_clamped_log_variance():
    params = torch.randn(3, 8, 4, 4, generator=torch.Generator().manual_seed(0)) * 3
    params[0, 4, 0, 0], params[1, 5, 1, 1] = 40.0, -50.0  # outside [-30, 20]: clamped by both
    ours, theirs = DiagonalGaussian(params), DiagonalGaussianDistribution(params)
    torch.testing.assert_close(ours.kl(), theirs.kl(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(ours.logvar, theirs.logvar)
    torch.testing.assert_close(ours.mode(), theirs.mode())


def test_kl_is_zero_for_the_standard_normal_and_matches_the_closed_form():
    zero = DiagonalGaussian(torch.zeros(2, 2, 3, 3))
    assert torch.equal(zero.kl(), torch.zeros(2))
    # one entry mu = 1, sigma^2 = e: 1/2 (1 + e - 1 - 1) = (e - 1) / 2
    params = torch.zeros(1, 2, 1, 1)
    params[0, 0], params[0, 1] = 1.0, 1.0
    assert DiagonalGaussian(params).kl().item() == pytest.approx((math.e - 1) / 2, rel=1e-6)


def test_sample_is_the_reparameterised_draw_and_its_moments_match():
    params = torch.cat([torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), math.log(0.25))], dim=1)
    q = DiagonalGaussian(params.expand(20_000, 2, 1, 1))
    z = q.sample(torch.Generator().manual_seed(0))
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z, 2.0 + 0.5 * eps)
    assert z.mean().item() == pytest.approx(2.0, abs=0.02)
    assert z.std().item() == pytest.approx(0.5, abs=0.02)


def test_diagonal_gaussian_refuses_an_odd_channel_count():
    with pytest.raises(ValueError, match="mean and log-variance"):
        DiagonalGaussian(torch.zeros(1, 3, 2, 2))


@pytest.mark.parametrize("legacy", [False, True])
def test_vq_loss_and_gradients_equal_diffusers(legacy):
    torch.manual_seed(0)
    theirs = DiffusersVQ(16, 4, beta=0.25, legacy=legacy)
    ours = VectorQuantizer(16, 4, beta=0.25, legacy=legacy)
    ours.embedding.weight.data.copy_(theirs.embedding.weight.data)
    z = torch.randn(2, 4, 3, 3) * 0.1
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    zq_theirs, loss_theirs, (_, _, idx_theirs) = theirs(z1)
    zq_ours, loss_ours, idx_ours = ours(z2)
    torch.testing.assert_close(zq_ours, zq_theirs)
    torch.testing.assert_close(loss_ours, loss_theirs)
    assert torch.equal(idx_ours.flatten(), idx_theirs.flatten())
    (loss_theirs + zq_theirs.square().sum()).backward()
    (loss_ours + zq_ours.square().sum()).backward()
    torch.testing.assert_close(z2.grad, z1.grad)
    torch.testing.assert_close(ours.embedding.weight.grad, theirs.embedding.weight.grad)


def test_beta_sits_on_the_commitment_term_the_gradients_show_where():
    vq = VectorQuantizer(4, 2, beta=0.25)
    vq.embedding.weight.data = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    z = torch.tensor([[[[0.8]], [[0.1]]]], requires_grad=True)  # (1, 2, 1, 1): nearest code 0
    _, loss, k = vq(z)
    loss.backward()
    e = vq.embedding.weight[0].detach()
    n = 2  # entries averaged over
    # commitment beta ||z - sg[e]||^2 / n reaches z; the codebook term ||sg[z] - e||^2 / n reaches e
    torch.testing.assert_close(z.grad.flatten(), 0.25 * 2 * (z.detach().flatten() - e) / n)
    torch.testing.assert_close(vq.embedding.weight.grad[0], 2 * (e - z.detach().flatten()) / n)
    assert k.item() == 0 and torch.count_nonzero(vq.embedding.weight.grad[1:]) == 0


def test_straight_through_passes_the_gradient_to_z_unchanged():
    vq = VectorQuantizer(8, 3, beta=0.0)
    z = torch.randn(2, 3, 2, 2, requires_grad=True)
    z_q, _, k = vq(z)
    torch.testing.assert_close(z_q, vq.lookup(k))  # forward: the codes
    weights = torch.randn_like(z)
    (z_q * weights).sum().backward()
    torch.testing.assert_close(z.grad, weights)  # backward: the identity


def test_codebook_usage_and_perplexity():
    vq = VectorQuantizer(4, 2)
    p, perplexity = vq.usage(torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]))
    assert torch.allclose(p, torch.full((4,), 0.25)) and perplexity == pytest.approx(4.0)
    p, perplexity = vq.usage(torch.tensor([2, 2, 2]))
    assert p.tolist() == [0, 0, 1, 0] and perplexity == pytest.approx(1.0)


def test_dead_codes_restart_on_encoder_outputs():
    vq = VectorQuantizer(4, 2)
    z = torch.randn(1, 2, 3, 3)
    k = torch.zeros(1, 3, 3, dtype=torch.long)  # only code 0 in use
    before = vq.embedding.weight[0].clone()
    assert vq.restart_dead_codes(z, k, torch.Generator().manual_seed(0)) == 3
    outputs = z.permute(0, 2, 3, 1).reshape(-1, 2)
    for j in (1, 2, 3):
        assert (outputs == vq.embedding.weight[j]).all(dim=1).any()
    assert torch.equal(vq.embedding.weight[0], before)


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
@pytest.mark.parametrize("kind", [Autoencoder, AutoencoderKL, VQAutoencoder])
def test_encode_decode_shapes_for_every_factor(kind, factor):
    ae = kind(latent_channels=3, factor=factor, base=8, mults=[1] + [2] * int(math.log2(factor)))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = ae.latents(x)
    assert z.shape == (2, 3, 16 // factor, 16 // factor)
    assert ae.decode(z).shape == x.shape
    x_hat, reg = ae(x)
    assert x_hat.shape == x.shape and reg.shape == ()


def test_kl_forward_returns_the_batch_mean_kl_and_vq_the_per_image_sum():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    kl = AutoencoderKL(latent_channels=2, factor=2, base=8)
    torch.testing.assert_close(kl(x)[1], kl.encode(x).kl().mean())
    vq = VQAutoencoder(latent_channels=2, factor=2, base=8, num_codes=8)
    z_q, loss, _ = vq.encode(x)
    torch.testing.assert_close(vq(x)[1], loss * 2 * 4 * 4)


def test_bad_input_gives_clear_errors():
    ae = AutoencoderKL(factor=4, base=8)
    with pytest.raises(ValueError, match="multiples of factor=4"):
        ae.encode(torch.zeros(1, 3, 30, 30))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        ae.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"z must be a latent batch \(B, 4"):
        ae.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="factor must be one of"):
        AutoencoderKL(factor=3)
    with pytest.raises(ValueError, match="mults must list 3"):
        AutoencoderKL(factor=4, mults=[1, 2])


def test_latent_scale_factor_gives_unit_variance_latents():
    torch.manual_seed(0)
    ae = Autoencoder(latent_channels=2, factor=2, base=8)
    x = torch.rand(64, 3, 8, 8) * 2 - 1
    scale = autoencoders.latent_scale_factor(ae, x, batch_size=10)
    with torch.no_grad():
        z = ae.latents(x)
    assert (z * scale).std().item() == pytest.approx(1.0, rel=1e-5)
    assert scale == pytest.approx(1 / z.double().std().item(), rel=1e-6)
    assert ae.scale_factor.item() == 1.0 and "scale_factor" in ae.state_dict()


def _classifier():
    torch.manual_seed(0)
    return classifier.Classifier(3, {"shape": 3}, image_size=16, width=8, feature_dim=16)


def test_perceptual_loss_is_the_unit_normalised_feature_distance():
    net = _classifier()
    loss = perceptual.PerceptualLoss(net)
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    expected = torch.zeros(2)
    h, g = x, y
    for stage in net.body:
        h, g = stage(h), stage(g)
        u, v = h / h.norm(dim=1, keepdim=True), g / g.norm(dim=1, keepdim=True)
        expected += (u - v).square().sum(dim=1).mean(dim=(1, 2))
    torch.testing.assert_close(loss(x, y), expected, rtol=1e-4, atol=1e-6)
    assert torch.equal(loss(x, x), torch.zeros(2))
    assert not any(p.requires_grad for p in net.parameters())


def test_patchgan_scores_patches():
    assert perceptual.PatchGAN(3, 16, n_layers=2)(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 6, 6)


def test_hinge_loss_closed_form():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    # 1/2 (mean(relu(1 - [2, .5])) + mean(relu(1 + [-3, 0]))) = 1/2 (0.25 + 0.5)
    assert perceptual.hinge_d_loss(real, fake).item() == pytest.approx(0.375)


def test_adaptive_weight_is_the_gradient_norm_ratio_clamped():
    w = torch.randn(4, 4, requires_grad=True)
    nll, g = (w * 3).sum(), (w * 0.5).square().sum()
    expected = torch.full((4, 4), 3.0).norm() / (0.5 * w.detach()).norm() / (1 + 1e-4 / (0.5 * w.detach()).norm())
    lam = perceptual.adaptive_weight(nll, g, w, disc_weight=0.5)
    assert lam.item() == pytest.approx(0.5 * expected.item(), rel=1e-5)
    assert perceptual.adaptive_weight(nll, (w * 0).sum(), w).item() == pytest.approx(1e4)  # zero g grad: clamped


def test_psnr_of_a_known_error():
    x = torch.zeros(1, 3, 4, 4)
    # MSE 0.01 on [-1, 1] -> 10 log10(4 / 0.01)
    assert perceptual.psnr(x, x + 0.1).item() == pytest.approx(10 * math.log10(400), rel=1e-5)


def test_training_loss_waits_for_disc_start_and_keeps_each_side_to_its_own_weights():
    torch.manual_seed(0)
    ae, disc = AutoencoderKL(latent_channels=2, factor=2, base=8), perceptual.PatchGAN(3, 8, n_layers=1)
    training = perceptual.AutoencoderTraining(ae, reg_weight=1e-6, perceptual=_classifier(), discriminator=disc,
                                              disc_start=1)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    training.loss(x, torch.Generator().manual_seed(0)).backward()
    assert "d_loss" not in training.last_terms and all(p.grad is None for p in disc.parameters())
    training.zero_grad()
    total = training.loss(x, torch.Generator().manual_seed(0))
    assert {"g_loss", "d_loss", "lambda"} <= set(training.last_terms) and training.step.item() == 2
    total.backward()
    # D's gradient is the hinge loss's alone: the generator term never reaches D
    d_grads = [p.grad.clone() for p in disc.parameters()]
    with torch.no_grad():
        x_hat = ae.decode(ae.encode(x).sample(torch.Generator().manual_seed(0)))
    disc.zero_grad()
    perceptual.hinge_d_loss(disc(x), disc(x_hat)).backward()
    for got, want in zip(d_grads, [p.grad for p in disc.parameters()]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_training_loss_is_l1_sum_plus_weighted_regulariser_without_extras():
    torch.manual_seed(0)
    ae = AutoencoderKL(latent_channels=2, factor=2, base=8)
    training = perceptual.AutoencoderTraining(ae, reg_weight=0.5)
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    got = training.loss(x, torch.Generator().manual_seed(1))
    posterior = ae.encode(x)
    x_hat = ae.decode(posterior.sample(torch.Generator().manual_seed(1)))
    want = (x - x_hat).abs().sum(dim=(1, 2, 3)).mean() + 0.5 * posterior.kl().mean()
    torch.testing.assert_close(got, want)


def test_autoencoders_are_exported_from_models():
    from minildm import models
    assert (models.Autoencoder, models.AutoencoderKL, models.VQAutoencoder) == (Autoencoder, AutoencoderKL, VQAutoencoder)
    assert models.PatchGAN is perceptual.PatchGAN
