"""The digits-ddpm recipe builds from its config, and the shipped file is a class-conditional digit model."""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from minildm import checkpoint, data, pretrained, recipes, unet

REPO_DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def classifier():
    """An independent judge: logistic regression on the real 16x16 train-split pixels."""
    x, y = data.digits(16, split="train")
    return LogisticRegression(C=0.1, max_iter=2_000).fit(x.flatten(1).numpy(), y.numpy())


def test_digits_ddpm_is_the_cosine_schedule_of_nichol_and_dhariwal_with_1000_steps():
    s = recipes.noise_schedule("digits-ddpm")
    assert s.T == 1000
    # abar(t) = cos^2(((t/T + s) / (1 + s)) pi / 2) / (same at t = 0), s = 0.008; betas capped at 0.999
    f = [math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(1001)]
    betas = torch.tensor([min(1 - f[t + 1] / f[t], 0.999) for t in range(1000)], dtype=torch.float64)
    assert torch.allclose(s.betas, betas, atol=1e-12)


def test_the_recipe_builds_a_class_conditional_one_channel_unet_of_about_0_7m_parameters():
    torch.manual_seed(0)
    model = recipes.class_denoiser(**recipes.DIGITS_CONFIG)
    assert isinstance(model, unet.UNet) and model.num_classes == 10
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 1.0e6
    y = torch.tensor([0, 9, 10])  # 10 is the null class: the unconditional model
    assert model(torch.randn(3, 1, 16, 16), torch.tensor([0, 500, 999]), y).shape == (3, 1, 16, 16)


def test_the_builder_refuses_another_dataset_or_an_unknown_schedule():
    config = dict(recipes.DIGITS_CONFIG)
    with pytest.raises(ValueError, match="dataset must be .digits. or .shapes."):
        recipes.class_denoiser(**{**config, "dataset": "moons"})
    with pytest.raises(ValueError, match="schedule must be one of"):
        recipes.class_denoiser(**{**config, "schedule": "quadratic"})


def test_the_shipped_digits_ddpm_file_is_small_fp16_and_matches_its_manifest():
    path = REPO_DATA / "checkpoints" / "digits-ddpm.safetensors"
    entry = json.loads((REPO_DATA / "checkpoints" / "manifest.json").read_text())["digits-ddpm"]
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry["bytes"] == path.stat().st_size < 2_000_000
    assert entry["config"] == recipes.DIGITS_CONFIG
    tensors, meta = checkpoint.load(path)
    assert all(t.dtype == torch.float16 for t in tensors.values() if t.is_floating_point())
    assert meta["config"] == recipes.DIGITS_CONFIG


def _agreement(model, classifier, guidance_scale: float) -> tuple[float, torch.Tensor]:
    """Fraction of 20 samples (DDIM, 20 steps) the classifier labels with the class they were asked for."""
    with torch.no_grad():
        x, y = recipes.digits_samples(model.eval(), 20, guidance_scale=guidance_scale, steps=20)
    return float(np.mean(classifier.predict(x.flatten(1).numpy()) == y.numpy())), x


# chance is 0.1 (an untrained network scores 0.05); the shipped model scores 0.95 at guidance 1 and 1.0 at 2 here
GOOD_ENOUGH = 0.6


def test_the_shipped_digits_ddpm_loads_with_its_sha_checked_and_draws_the_digits_asked_for(repo_data, classifier):
    model = pretrained.load("digits-ddpm", device="cpu", train_if_missing=False, progress=False)
    agreement, x = _agreement(model, classifier, guidance_scale=2.0)
    assert x.shape == (20, 1, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.3  # digit images, not a flat grey
    assert agreement >= GOOD_ENOUGH


def test_an_untrained_digits_network_fails_the_same_threshold(classifier):
    torch.manual_seed(0)
    agreement, _ = _agreement(recipes.class_denoiser(**recipes.DIGITS_CONFIG), classifier, guidance_scale=2.0)
    assert agreement < GOOD_ENOUGH
