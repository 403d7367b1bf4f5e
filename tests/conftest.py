"""Fixtures shared by the test files."""

from pathlib import Path

import pytest
import torch

from minildm import autoencoders, pretrained, schedules, text, unet

REPO_DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def repo_data(tmp_path, monkeypatch):
    """Read the repository's data/ folder; never fall back to a cached or freshly trained model."""
    monkeypatch.setenv(pretrained.DATA_ENV, str(REPO_DATA))
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))


def tiny_ldm():
    """A tiny untrained text-to-image LDM, (unet, vae, clip, schedule), the same weights on every
    call (seed 0); the spatial transformers' zero-initialised proj_out is woken up, so the text
    reaches the output and prompts give different pictures."""
    torch.manual_seed(0)
    vae = autoencoders.AutoencoderKL(latent_channels=4, factor=4, base=8).eval()
    vae.scale_factor.fill_(0.5)
    clip = text.MiniCLIP(embed_dim=16, text_width=16, text_layers=1, vision_width=16, vision_layers=1).eval()
    net = unet.UNet(in_channels=4, base=8, mults=(1, 2), attn_levels=(1,), num_res_blocks=1, context_dim=16).eval()
    for m in net.modules():
        if hasattr(m, "proj_out"):
            torch.nn.init.normal_(m.proj_out.weight, std=0.3)
    schedule = schedules.NoiseSchedule(schedules.make_betas("cosine", 100))
    return net, vae, clip, schedule


@pytest.fixture(scope="session")
def make_tiny_ldm():
    """``tiny_ldm``, to call in a test file's own fixture (fresh modules each call)."""
    return tiny_ldm
