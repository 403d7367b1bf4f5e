"""minildm.unet: the U-Net denoiser (shapes, conditioning, errors, and that it can learn)."""

import pytest
import torch

from minildm import diffusion, models
from minildm import nn as blocks
from minildm.schedules import NoiseSchedule, make_betas
from minildm.unet import UNet


@pytest.fixture(autouse=True)
def seeded():
    """Every test draws the same random inputs on every run."""
    torch.manual_seed(0)


def tiny(**kwargs) -> UNet:
    config = dict(in_channels=3, base=8, mults=(1, 2), attn_levels=(1,), num_res_blocks=1, heads=2, groups=4)
    return UNet(**{**config, **kwargs})


def awake(model: UNet) -> UNet:
    """Random weights in every zero-initialised proj_out, as training gives, so the context reaches the output."""
    for m in model.modules():
        if isinstance(m, blocks.SpatialTransformer):
            torch.nn.init.normal_(m.proj_out.weight, std=0.3)
    return model


def test_unet_is_exported_from_models():
    assert models.UNet is UNet


@pytest.mark.parametrize("kwargs, size", [
    (dict(), (8, 8)),
    (dict(mults=(1, 2, 2), attn_levels=(1, 2), num_res_blocks=2), (16, 16)),
    (dict(mults=(1, 2, 2, 2), attn_levels=()), (16, 8)),
    (dict(in_channels=4, mults=(1,), attn_levels=(0,)), (5, 7)),
    (dict(in_channels=1, out_channels=2, attention_gates=True, mults=(1, 2, 2)), (12, 8)),
])
def test_output_has_the_input_size_and_out_channels(kwargs, size):
    model = tiny(**kwargs)
    x = torch.randn(2, model.in_channels, *size)
    assert model(x, torch.tensor([3, 7])).shape == (2, kwargs.get("out_channels", model.in_channels), *size)


def test_shapes_halve_the_resolution_at_each_level_and_summary_counts_parameters():
    model = tiny(mults=(1, 2, 2), attention_gates=True)
    rows = dict(model.shapes(16))
    assert rows["conv_in"] == (1, 8, 16, 16)
    assert rows["down.0.0"] == (1, 8, 16, 16) and rows["downsample.0"] == (1, 8, 8, 8)
    assert rows["down.1.0"] == (1, 16, 8, 8) and rows["downsample.1"] == (1, 16, 4, 4)
    assert rows["mid.0"] == (1, 16, 4, 4)
    assert rows["upsample.0"] == (1, 16, 16, 16) and rows["gates.0"] == (1, 8, 16, 16)
    assert rows["conv_out"] == (1, 3, 16, 16)
    assert [name for name, _ in model.shapes(16)][-1] == "conv_out"
    total = sum(p.numel() for p in model.parameters())
    assert f"{total:,}" in model.summary(16).splitlines()[-1]


def test_learned_range_doubles_the_output_channels():
    x = torch.randn(2, 3, 8, 8)
    assert tiny(learned_range=True)(x, 5).shape == (2, 6, 8, 8)
    assert tiny(out_channels=1, learned_range=True)(x, 5).shape == (2, 2, 8, 8)


def test_output_is_a_function_of_t_and_an_int_t_means_every_sample():
    model = tiny()
    x = torch.randn(2, 3, 8, 8)
    assert not torch.allclose(model(x, 10), model(x, 500), atol=1e-4)
    assert torch.equal(model(x, 10), model(x, torch.full((2,), 10)))
    both = model(x, torch.tensor([10, 500]))
    assert torch.allclose(both[1], model(x, 500)[1], atol=1e-5)


def test_samples_in_a_batch_do_not_see_each_other():
    # GroupNorm and attention are per sample: one sample's output ignores the rest of the batch
    model = tiny(attention_gates=True)
    x = torch.randn(3, 3, 8, 8)
    assert torch.allclose(model(x, torch.tensor([1, 2, 3]))[:1], model(x[:1], torch.tensor([1])), atol=1e-5)


def test_class_label_changes_the_output_and_the_null_class_is_a_valid_label():
    model = tiny(num_classes=10)
    x = torch.randn(2, 3, 8, 8)
    out_a = model(x, 50, y=torch.tensor([0, 0]))
    assert not torch.allclose(out_a, model(x, 50, y=torch.tensor([7, 7])), atol=1e-4)
    null = model(x, 50, y=torch.full((2,), 10))  # index num_classes: classifier-free guidance's empty label
    assert null.shape == out_a.shape and not torch.allclose(null, out_a, atol=1e-4)


def test_context_enters_through_cross_attention():
    model = awake(tiny(context_dim=6))
    assert any(isinstance(m, blocks.SpatialTransformer) for m in model.modules())
    x = torch.randn(2, 3, 8, 8)
    out = model(x, 5, context=torch.randn(2, 4, 6))
    assert out.shape == x.shape
    assert not torch.allclose(out, model(x, 5, context=torch.randn(2, 4, 6)), atol=1e-4)


def test_attention_gates_change_the_output():
    gated, plain = tiny(attention_gates=True), tiny()
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if not k.startswith("gates.")})
    x = torch.randn(2, 3, 8, 8)
    assert not torch.allclose(gated(x, 3), plain(x, 3), atol=1e-4)


def test_manual_attention_everywhere_gives_the_same_output():
    model = awake(tiny(mults=(1, 2), attn_levels=(0, 1), context_dim=4))
    x, c = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4)
    fused = model(x, 9, context=c)
    for m in model.modules():
        if isinstance(m, (blocks.SelfAttention, blocks.Attention)):
            m.manual = True
    assert torch.allclose(model(x, 9, context=c), fused, atol=1e-5)


def test_every_parameter_gets_a_gradient():
    # a block built but left out of forward (a gate, the class or context path) would get none
    model = awake(tiny(num_classes=3, attention_gates=True, context_dim=4, learned_range=True))
    out = model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), y=torch.tensor([0, 3]), context=torch.randn(2, 2, 4))
    out.square().mean().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert unused == []


def test_a_tiny_unet_overfits_one_batch():
    s = NoiseSchedule(make_betas("linear", 100, 1e-3, 0.1))
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1
    t, noise = torch.randint(0, 100, (8,)), torch.randn(8, 1, 8, 8)
    model = UNet(in_channels=1, base=16, mults=(1, 2), attn_levels=(1,), num_res_blocks=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        loss = diffusion.loss_simple(model, x0, s, t=t, noise=noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]


@pytest.mark.parametrize("kwargs, call, error, match", [
    (dict(mults=(1, 2, 2)), lambda m: m(torch.randn(1, 3, 6, 8), 0), ValueError, "divide by"),
    (dict(), lambda m: m(torch.randn(1, 1, 8, 8), 0), ValueError, "x must have shape"),
    (dict(), lambda m: m(torch.randn(1, 3, 8, 8), 0, y=torch.tensor([1])), ValueError, "unconditional"),
    (dict(num_classes=4), lambda m: m(torch.randn(1, 3, 8, 8), 0), ValueError, "y is required"),
    (dict(num_classes=4), lambda m: m(torch.randn(1, 3, 8, 8), 0, y=torch.tensor([5])), ValueError, "null class"),
    (dict(), lambda m: m(torch.randn(1, 3, 8, 8), 0, context=torch.randn(1, 2, 4)), ValueError, "context_dim=None"),
    (dict(context_dim=4), lambda m: m(torch.randn(1, 3, 8, 8), 0), ValueError, "context must have shape"),
    (dict(context_dim=4), lambda m: m(torch.randn(1, 3, 8, 8), 0, context=torch.randn(1, 2, 5)), ValueError, "context"),
    (dict(), lambda m: m(torch.randn(2, 3, 8, 8), torch.tensor([0.5, 1.0])), TypeError, "t must be"),
    (dict(), lambda m: m(torch.randn(2, 3, 8, 8), torch.tensor([1, 2, 3])), TypeError, "t must be"),
])
def test_bad_inputs_raise_errors_that_name_the_argument(kwargs, call, error, match):
    with pytest.raises(error, match=match):
        call(tiny(**kwargs))


def test_bad_configurations_raise():
    with pytest.raises(ValueError, match="attn_levels"):
        tiny(mults=(1, 2), attn_levels=(2,))
    with pytest.raises(ValueError, match="groups"):
        tiny(base=6)
    with pytest.raises(ValueError, match="mults"):
        tiny(mults=())
