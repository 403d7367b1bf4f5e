"""minildm.models: the toy MLP denoiser."""

import pytest
import torch

from minildm import diffusion, models
from minildm.schedules import NoiseSchedule, make_betas


@pytest.fixture(autouse=True)
def seeded():
    """Every test draws the same random inputs on every run."""
    torch.manual_seed(0)


def test_toy_mlp_shapes_and_learned_range_width():
    x = torch.randn(5, 2)
    assert models.ToyMLP()(x, torch.arange(5)).shape == (5, 2)
    assert models.ToyMLP(out_dim=4)(x, 7).shape == (5, 4)
    assert models.ToyMLP(dim=3, hidden=16, depth=1, time_dim=8)(torch.randn(2, 3), torch.tensor([0, 1])).shape == (2, 3)


def test_toy_mlp_output_depends_on_t():
    model = models.ToyMLP(hidden=32)
    x = torch.randn(4, 2)
    assert not torch.allclose(model(x, 10), model(x, 500), atol=1e-3)
    assert torch.equal(model(x, 10), model(x, torch.full((4,), 10)))


def test_toy_mlp_learns_to_denoise_a_tiny_dataset():
    s = NoiseSchedule(make_betas("linear", 100, 1e-3, 0.1))
    data = torch.tensor([[-0.5, -0.5], [0.5, 0.5], [0.5, -0.5], [-0.5, 0.5]]).repeat(4, 1)  # (16, 2)
    model = models.ToyMLP(hidden=32, depth=2, time_dim=16, T=100)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        loss = diffusion.loss_simple(model, data, s, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:30]) / 30, sum(losses[-30:]) / 30
    assert last < 0.75 * first


def test_toy_mlp_refuses_bad_input():
    model = models.ToyMLP(T=10)
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, 2\)"):
        model(torch.zeros(3, 3), 0)
    with pytest.raises(TypeError, match="LongTensor of shape"):
        model(torch.zeros(3, 2), torch.tensor([0.5, 1.0, 2.0]))
    with pytest.raises(TypeError, match="LongTensor of shape"):
        model(torch.zeros(3, 2), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 9\]"):
        model(torch.zeros(3, 2), 10)
    with pytest.raises(ValueError, match="hidden must be a positive int"):
        models.ToyMLP(hidden=0)
