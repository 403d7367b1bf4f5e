"""shapes-vae: the smoke run of its recipe, and the shipped autoencoder's quality on new images."""

import pytest
import torch

from minildm import autoencoders, judge, perceptual, pretrained, recipes

def test_the_smoke_run_stores_the_latent_scale_factor_it_measured():
    model, scores, steps = recipes.train_shapes_vae("smoke", False)
    assert steps == recipes.SHAPES_VAE_SIZES["smoke"]["steps"]
    recipes.SHAPES_VAE.build(**recipes.SHAPES_VAE_CONFIG).load_state_dict(model.state_dict())
    images = recipes.shapes_vae_data(recipes.SHAPES_VAE_SIZES["smoke"]["n_data"], seed=0).images
    with torch.no_grad():
        z = model.encode(images).mean
    assert model.scale_factor.item() == pytest.approx(1 / z.double().std().item(), rel=1e-4)
    assert {"psnr_db", "judge_all_reconstructions", "judge_all_originals", "scale_factor", "loss_last_500"} == set(scores)


@pytest.fixture
def shipped_vae(repo_data):
    return pretrained.load("shapes-vae", device="cpu", train_if_missing=False, progress=False)


def test_the_shipped_vae_reconstructs_new_shapes_at_30_db_and_the_judge_reads_them(shipped_vae):
    assert isinstance(shipped_vae, autoencoders.AutoencoderKL) and shipped_vae.factor == 4
    held_out = recipes.shapes_vae_data(300, seed=2)  # neither the training nor the manifest's images
    x_hat = recipes.reconstruct(shipped_vae, held_out.images)
    assert perceptual.psnr(held_out.images, x_hat).mean().item() >= 30.0
    assert judge.score(x_hat, held_out.captions).rates["all"] >= 0.99
    with torch.no_grad():
        z = shipped_vae.latents(held_out.images[:2])
    assert z.shape == (2, 4, 8, 8)


def test_the_shipped_scale_factor_whitens_the_latents(shipped_vae):
    images = recipes.shapes_vae_data(500, seed=3).images
    with torch.no_grad():
        z = shipped_vae.latents(images) * shipped_vae.scale_factor
    assert z.std().item() == pytest.approx(1.0, abs=0.05)
